"""docs/tutorial-orders.md, followed as a reader would: every file the page marks with
``<!-- file: NAME -->`` is written to a fresh folder, a real nats-server is started, two
``trio-grains silo --config silo.toml`` processes serve the folder's ``app.py``, and
``publish.py`` and ``trio-grains client ... call`` run as processes of their own; their
output must be what the page shows under ``<!-- output: ... -->``.

(tests/test_docs.py does not run the page's programs: they need this cluster.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from trio_grains_nats.testing import run_nats_server

PAGE = Path(__file__).resolve().parents[3] / "docs" / "tutorial-orders.md"
PAGE_URL = "nats://127.0.0.1:4222"
FILES = {"app.py", "silo.toml", "client.toml", "publish.py"}
STOP_GRACE = 15.0
KILL_RUN_ORDERS = 300

_MARK = re.compile(r"<!--\s*(file|output):\s*(.+?)\s*-->")
_FENCE = re.compile(r"(`{3,})[^`]*")


def marked_blocks(text: str, kind: str) -> dict[str, str]:
    """The fenced blocks right after ``<!-- kind: NAME -->`` lines, by NAME."""
    lines = text.splitlines()
    blocks: dict[str, str] = {}
    for i, line in enumerate(lines):
        mark = _MARK.fullmatch(line.strip())
        if mark is None or mark.group(1) != kind:
            continue
        name = mark.group(2)
        fence = _FENCE.fullmatch(lines[i + 1]) if i + 1 < len(lines) else None
        assert fence is not None, f"{PAGE.name}:{i + 1}: {line!r} is not followed by a fence"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].rstrip() == fence.group(1))
        assert name not in blocks, f"{PAGE.name}: {kind} {name!r} is marked twice"
        blocks[name] = "\n".join(lines[i + 2 : end]) + "\n"
    return blocks


def normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


@contextmanager
def silo_processes(
    folder: Path, env: dict[str, str], count: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """*count* silo processes serving *folder*, started and serving; when the block ends,
    those still running get SIGTERM and must stop gracefully (else they are killed)."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"silo-{n}.log" for n in range(1, count + 1)]
    try:
        for log in logs:
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trio_grains.cli", "silo", "--config", "silo.toml"],
                        cwd=folder,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 30
        while not all("is serving" in log.read_text(errors="replace") for log in logs):
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, f"{log.name} exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, "the silos did not start within 30 s"
            time.sleep(0.05)
        yield procs
        running = [(p, log) for p, log in zip(procs, logs, strict=True) if p.poll() is None]
        for proc, _ in running:
            proc.send_signal(signal.SIGTERM)
        for proc, log in running:
            code = proc.wait(STOP_GRACE)
            assert code == 0, f"{log.name} exited with {code}:\n{log.read_text()[-3000:]}"
            assert "silo stopped" in log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(folder: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{args} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    return proc.stdout


def test_the_page_marks_every_file_and_output() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert set(marked_blocks(text, "file")) == FILES
    outputs = marked_blocks(text, "output")
    assert set(outputs) == {
        "python publish.py",
        "call order/o1 status",
        "call customer/ann totals",
        "publish orders x1",
    }
    assert text.count(PAGE_URL) >= 4  # what the test replaces in the TOML files


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    text = PAGE.read_text(encoding="utf-8")
    files, outputs = marked_blocks(text, "file"), marked_blocks(text, "output")
    folder = tmp_path / "orders"
    folder.mkdir()
    with run_nats_server(tmp_path / "nats") as url:  # a server of its own: fresh buckets
        for name, content in files.items():
            if name.endswith(".toml"):
                assert PAGE_URL in content
                content = content.replace(PAGE_URL, url)
            (folder / name).write_text(content, encoding="utf-8")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONUNBUFFERED="1",
        )
        with silo_processes(folder, env, 2) as silos:
            published = run(folder, env, "publish.py")
            assert normalized(published) == normalized(outputs["python publish.py"])
            again = run(folder, env, "publish.py")  # deduplicated: the same results
            assert normalized(again) == normalized(published)
            client = ["-m", "trio_grains.cli", "client", "--config", "client.toml"]
            got = run(folder, env, *client, "call", "order/o1", "status")
            assert normalized(got) == normalized(outputs["call order/o1 status"])
            # a customer's orders are listed in the order they were processed: any order
            got = json.loads(run(folder, env, *client, "call", "customer/ann", "totals"))
            shown = json.loads(outputs["call customer/ann totals"])
            assert sorted(got.pop("orders")) == sorted(shown.pop("orders"))
            assert got == shown
            silos_table = run(folder, env, *client, "silos")
            assert len(re.findall(r"\bactive\b", silos_table)) == 2, silos_table
            order = {
                "id": "x1",
                "customer": "dan",
                "lines": [{"sku": "tea", "quantity": 4, "price": 250}],
            }
            got = run(folder, env, *client, "publish", "orders", "x1", json.dumps(order))
            assert normalized(got) == normalized(outputs["publish orders x1"])
            deadline = time.monotonic() + 20
            while '"x1"' not in run(folder, env, *client, "call", "customer/dan", "totals"):
                assert time.monotonic() < deadline, "x1 was not counted for dan"

            # section 8: a silo killed (SIGKILL) while orders are processed loses nothing
            with subprocess.Popen(
                [sys.executable, "publish.py", str(KILL_RUN_ORDERS)],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as publisher:
                try:
                    time.sleep(0.5)
                    silos[1].kill()
                    out, err = publisher.communicate(timeout=90)
                finally:
                    if publisher.poll() is None:
                        publisher.kill()
            assert publisher.returncode == 0, f"--- stdout\n{out}\n--- stderr\n{err}"
            customers = re.findall(
                r"customer \w+: (\d+) orders, ([\d.]+) \(published: (\d+), ([\d.]+)\)", out
            )
            assert len(customers) == 3, out
            for counted, total, expected_count, expected_total in customers:
                assert (counted, total) == (expected_count, expected_total), out
            assert f"all {KILL_RUN_ORDERS} orders processed" in out


@pytest.mark.parametrize("kind", ["file", "output"])
def test_marked_blocks_parser(kind: str) -> None:
    page = (
        "<!-- file: a.py -->\n```python\nx = 1\n```\n\n<!-- output: run a -->\n```text\nhi\n```\n"
    )
    expected = {"file": {"a.py": "x = 1\n"}, "output": {"run a": "hi\n"}}
    assert marked_blocks(page, kind) == expected[kind]
