"""Run the programs in ``docs/*.md`` and compare their output with the page.

Every ```` ```python ```` block that contains ``trio.run(`` is a complete program: it is run
in a subprocess (``sys.executable``, in a temporary directory) and must exit with status 0.
When the next block after it (only blank lines between) is an ```` ```output ```` block,
the program's stdout must equal that block's text (trailing whitespace ignored, per line and
at the end). Other ``python`` blocks are snippets: they must compile (top-level ``await``
allowed) on the pages in ``COMPILED_PAGES``, but are not run. The programs of the pages in
``RUN_ELSEWHERE`` need a cluster and are run by their own tests.

Blocks whose first line is a file name (``# test_cart.py``, ``# pyproject.toml``) are the
files of a pytest project: on each page with a test module among them, they are written
into a fresh directory and pytest runs them (``pytester``), with the installed pytest
plugins; every test must pass (or skip, as the PostgreSQL ones do without PostgreSQL).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
TIMEOUT = 60  # seconds per program; examples that sleep long use trio's MockClock

_OPEN = re.compile(r"^(`{3,})\s*([^`\s]*)[^`]*$")


@attrs.frozen
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str
    output: Block | None = None  # the ```output block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def is_program(self) -> bool:
        return self.info == "python" and "trio.run(" in self.text


def parse_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, each linked to the ``output`` block after it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    raw: list[tuple[int, int, str, str]] = []  # (open line index, close line index, info, text)
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info = m.group(1), m.group(2)
        j = i + 1
        close = re.compile(rf"`{{{len(fence)},}}\s*")
        while j < len(lines) and not close.fullmatch(lines[j]):
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: code block is never closed")
        raw.append((i, j, info, "\n".join(lines[i + 1 : j]) + "\n"))
        i = j + 1
    blocks: list[Block] = []
    skip: set[int] = set()
    for n, (start, end, info, text) in enumerate(raw):
        if n in skip:
            continue
        output = None
        if n + 1 < len(raw):
            nstart, _nend, ninfo, ntext = raw[n + 1]
            between = lines[end + 1 : nstart]
            if ninfo == "output" and all(not line.strip() for line in between):
                output = Block(path, nstart + 1, ninfo, ntext)
                skip.add(n + 1)
        blocks.append(Block(path, start + 1, info, text, output))
    return blocks


def all_blocks() -> list[Block]:
    return [b for path in sorted(DOCS.glob("*.md")) for b in parse_blocks(path)]


BLOCKS = all_blocks()
# Pages whose programs need a running cluster (a nats-server, silo processes) and are run
# by tests of their own: tutorial-orders.md by examples/orders/tests/test_tutorial.py.
RUN_ELSEWHERE = {"tutorial-orders.md"}
PROGRAMS = [b for b in BLOCKS if b.is_program and b.path.name not in RUN_ELSEWHERE]
# Pages whose snippets must compile on the oldest supported Python (identity.md shows 3.12
# generic syntax on purpose; plugins.md and hooks.md show fragments).
COMPILED_PAGES = {
    "index.md",
    "getting-started.md",
    "concurrency.md",
    "lifecycle.md",
    "design.md",
    "testing.md",
}
SNIPPETS = [
    b for b in BLOCKS if b.info == "python" and not b.is_program and b.path.name in COMPILED_PAGES
]


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


@pytest.mark.parametrize("block", PROGRAMS, ids=[b.id for b in PROGRAMS])
def test_program(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.text, encoding="utf-8")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{block.id} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    if block.output is not None:
        assert _normalize(proc.stdout) == _normalize(block.output.text), (
            f"{block.id}: the output differs from the ```output block at {block.output.id}\n"
            f"--- stderr\n{proc.stderr}"
        )


_PROJECT_FILE = re.compile(r"#\s*((?:test_\w+|conftest)\.py|pyproject\.toml)\s*")


def project_files(path: Path) -> dict[str, str]:
    """The blocks of a page that start with a project file's name, by that name."""
    files: dict[str, str] = {}
    for block in parse_blocks(path):
        m = _PROJECT_FILE.fullmatch(block.text.split("\n", 1)[0])
        if m is not None and block.info in ("python", "toml"):
            assert m.group(1) not in files, f"{block.id}: a second {m.group(1)} on the page"
            files[m.group(1)] = block.text
    return files


PYTEST_PAGES = [
    p.name
    for p in sorted(DOCS.glob("*.md"))
    if any(name.startswith("test_") for name in project_files(p))
]


@pytest.mark.parametrize("page", PYTEST_PAGES)
def test_pytest_examples(page: str, pytester: pytest.Pytester) -> None:
    files = project_files(DOCS / page)
    assert "pyproject.toml" in files, f"{page}: its test modules need a # pyproject.toml block"
    for name, text in files.items():
        (pytester.path / name).write_text(text, encoding="utf-8")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    outcomes = result.parseoutcomes()
    broken = outcomes.get("failed", 0) + outcomes.get("errors", 0)
    assert broken == 0, result.stdout.str()
    assert outcomes.get("passed", 0) >= sum(name.startswith("test_") for name in files)


def test_the_testing_page_runs_its_modules() -> None:
    assert {"getting-started.md", "testing.md"} <= set(PYTEST_PAGES)


@pytest.mark.parametrize("block", SNIPPETS, ids=[b.id for b in SNIPPETS])
def test_snippet_compiles(block: Block) -> None:
    compile(block.text, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_output_block_belongs_to_a_program() -> None:
    orphans = [b.id for b in BLOCKS if b.info == "output"] + [
        b.id for b in BLOCKS if b.output is not None and not b.is_program
    ]
    assert not orphans, f"```output blocks that do not follow a runnable program: {orphans}"


@pytest.mark.parametrize(
    ("page", "minimum"),
    [("getting-started.md", 4), ("concurrency.md", 2), ("lifecycle.md", 2)],
)
def test_pages_have_runnable_examples(page: str, minimum: int) -> None:
    found = [b for b in PROGRAMS if b.path.name == page and b.output is not None]
    assert len(found) >= minimum, f"{page} has {len(found)} runnable examples with output"


def test_parser_links_output_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nimport trio\ntrio.run(main)\n```\n\n```output\nhi\n```\n\n"
        "````markdown\n```python\nx\n```\n````\n\n```python\nsnippet = 1\n```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.line, b.info) for b in blocks] == [(3, "python"), (12, "markdown"), (18, "python")]
    assert blocks[0].is_program
    assert blocks[0].output is not None
    assert blocks[0].output.text == "hi\n"
    assert blocks[1].output is None
    assert "```python" in blocks[1].text
    assert not blocks[2].is_program


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^(`{3,}).*?^\1\s*$", "", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*#*$", text)}


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_links_between_pages(page: str) -> None:
    """Links to other pages in docs/ name existing pages and headings."""
    source = DOCS / page
    text = re.sub(r"(?ms)^(`{3,}).*?^\1\s*$", "", source.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if "://" in target or target.startswith(("mailto:", "../")):
            continue
        name, _, anchor = target.partition("#")
        dest = DOCS / name if name else source
        if not dest.exists() or (anchor and anchor not in _anchors(dest)):
            broken.append(target)
    assert not broken, f"{page}: broken links {broken}"
