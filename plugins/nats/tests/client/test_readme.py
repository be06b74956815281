"""Run the README's client programs against the test nats-server.

A ```` ```python ```` block of ``plugins/nats/README.md`` followed by an ```` ```output ````
block (only blank lines between) is a complete program: it runs in a subprocess with
``nats://127.0.0.1:4222`` replaced by the session server's URL, must exit with status 0
and print that output. Other blocks are fragments, not run (as in ``tests/test_docs.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
# a block's text never holds a fence, so a python block without output is never joined
# to the output block of a later one
_BLOCK = re.compile(
    r"^```python\n((?:(?!```).)*)^```\n\s*^```output\n((?:(?!```).)*)^```$", re.M | re.S
)
PROGRAMS = _BLOCK.findall(README.read_text(encoding="utf-8"))


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def test_the_readme_has_a_client_program() -> None:
    assert any("from trio_grains_nats.client import" in code for code, _ in PROGRAMS)


@pytest.mark.parametrize(("code", "output"), PROGRAMS)
def test_readme_program(code: str, output: str, nats_url: str, tmp_path: Path) -> None:
    assert "nats://127.0.0.1:4222" in code
    script = tmp_path / "example.py"
    script.write_text(code.replace("nats://127.0.0.1:4222", nats_url), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _normalize(proc.stdout) == _normalize(output)
