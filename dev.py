#!/usr/bin/env python3
"""Project tasks that work on a fresh machine with only Python 3.11+.

    python3 dev.py demo [args]   run the reference application (`trio-grains demo orders`)
    python3 dev.py test    lint, type-check and run the whole test suite
    python3 dev.py bench NAME [args]   run a benchmark (see benchmarks/README.md)

The first run creates ``.venv`` and installs the project with its dev dependencies; later
runs reinstall only when ``pyproject.toml`` changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".dev-stamp"


def _fingerprint() -> str:
    h = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *_distributions()]:
        h.update(path.read_bytes())
    return h.hexdigest()


def _distributions() -> list[Path]:
    """The pyproject.toml of every plugin and example distribution."""
    return sorted([*ROOT.glob("plugins/*/pyproject.toml"), *ROOT.glob("examples/*/pyproject.toml")])


def _run(*args: object) -> None:
    result = subprocess.run([str(a) for a in args], cwd=ROOT)
    if result.returncode:
        sys.exit(result.returncode)


def ensure_env() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on any python3
        sys.exit(f"trio-grains needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print("installing trio-grains and its dev dependencies into .venv ...", file=sys.stderr)
    _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    editable = ["-e", f"{ROOT}[dev]"]
    for distribution in _distributions():
        editable += ["-e", str(distribution.parent)]
    _run(PYTHON, "-m", "pip", "install", "--quiet", *editable)
    STAMP.write_text(fingerprint)


def demo(args: list[str]) -> None:
    _run(PYTHON, "-m", "trio_grains.cli", "demo", "orders", *args)


def test(args: list[str]) -> None:
    dirs = ("trio_grains", "plugins", "tests", "benchmarks", "examples")
    lint = [d for d in dirs if (ROOT / d).exists()]
    _run(PYTHON, "-m", "ruff", "check", *lint)
    _run(PYTHON, "-m", "mypy")  # trio_grains, as configured in pyproject.toml
    packages = [*ROOT.glob("plugins/*/*/__init__.py"), *ROOT.glob("examples/*/*/__init__.py")]
    for package in sorted(packages):
        _run(PYTHON, "-m", "mypy", "--strict", package.parent)
    _run(PYTHON, "-m", "pytest", *args)


def bench(args: list[str]) -> None:
    _run(PYTHON, ROOT / "benchmarks" / "run.py", *args)


TASKS = {"demo": demo, "test": test, "bench": bench}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(f"usage: python3 dev.py {{{','.join(TASKS)}}} [args...]")
    ensure_env()
    TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
