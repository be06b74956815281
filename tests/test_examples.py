"""The README's main job runs and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_hello_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "hello.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "cart/bob65: {'apple': 100, 'pear': 2}"
    assert lines[-1] == "3 activations: {'cart': 3}"
