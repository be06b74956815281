"""Child processes for the multi-process cluster tests: started with a JSON settings
argument, logging to ``<dir>/<name>.log``, SIGKILLed at the end of the block and their
logs printed if it fails."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).parent


class Processes:
    """The test's child processes, each logging to ``<dir>/<name>.log``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: dict[str, trio.Process] = {}
        self.expected_dead: set[str] = set()

    async def start(self, name: str, script: Path, settings: dict[str, Any]) -> trio.Process:
        with (self.dir / f"{name}.log").open("ab") as out:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(script), json.dumps(settings)],
                stdout=out,
                stderr=out,
                cwd=str(HERE),
            )
        self.procs[name] = proc
        return proc

    async def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        with trio.move_on_after(10):
            await proc.wait()

    async def kill_all(self) -> None:
        for name in self.procs:
            await self.kill(name)

    def check_running(self) -> None:
        for name, proc in self.procs.items():
            if proc.returncode is not None and name not in self.expected_dead:
                raise AssertionError(f"process {name} exited with {proc.returncode}")

    def assert_clean_logs(self, *names: str) -> None:
        """No tracebacks or errors were logged by these processes."""
        for name in names:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
            bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
            assert not bad, f"{name}.log: {bad[:5]}"

    def dump_logs(self) -> None:
        for log in sorted(self.dir.glob("*.log")):
            text = log.read_text(errors="replace")
            print(f"===== {log.name} (last 6000 chars) =====\n{text[-6000:]}", file=sys.stderr)


@contextlib.asynccontextmanager
async def processes(directory: Path) -> AsyncIterator[Processes]:
    """Child processes SIGKILLed at the end, their logs printed if the block fails."""
    procs = Processes(directory)
    try:
        yield procs
    except BaseException:
        procs.dump_logs()
        raise
    finally:
        with trio.CancelScope(shield=True):
            await procs.kill_all()


def read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_atomically(path: Path, text: str) -> None:
    """Write *text* so that a reader in another process never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run_process_main(main: Callable[[], Awaitable[None]], label: str) -> None:
    """A child process's entry point: log to stderr (the test's log file), run *main*."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {label} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    trio.run(main)
