"""Smoke test of benchmarks/run.py: it runs and prints well-formed lines. No timing asserts.

Timings on shared CI machines are noise; the numbers are checked by people, with the
full run (see benchmarks/README.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
REQUIRED = ["benchmark", "mode", "ours", "floor", "ratio"]
LOCAL_MODES = {"sequential", "concurrent", "contended", "idle-memory", "activation-rate"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _check_numbers(line: dict[str, object]) -> None:
    """ours, floor and ratio are positive finite numbers, and ratio is ours / floor."""
    for key in ("ours", "floor", "ratio"):
        value = line[key]
        assert isinstance(value, (int, float)), line
        assert not isinstance(value, bool), line
        assert math.isfinite(value), line
        assert value > 0, line
    ours, floor, ratio = line["ours"], line["floor"], line["ratio"]
    assert isinstance(ours, float | int)
    assert isinstance(floor, float | int)
    assert isinstance(ratio, float | int)
    assert math.isclose(ratio, ours / floor, rel_tol=1e-2), line


def test_local_calls_quick_prints_one_json_line_per_mode() -> None:
    proc = _run("local-calls", "--quick")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    modes = []
    for text in lines:
        line = json.loads(text)
        assert list(line)[:5] == REQUIRED, line
        assert line["benchmark"] == "local-calls"
        _check_numbers(line)
        modes.append(line["mode"])
    assert sorted(modes) == sorted(LOCAL_MODES)
    memory = next(json.loads(t) for t in lines if json.loads(t)["mode"] == "idle-memory")
    assert memory["unit"] == "bytes"
    assert "beyond_grain_object" in memory


def test_list_names_local_calls() -> None:
    proc = _run("--list")
    assert proc.returncode == 0, proc.stderr
    assert "local-calls" in proc.stdout


def test_unknown_benchmark_is_an_error() -> None:
    proc = _run("no-such-benchmark")
    assert proc.returncode != 0
    assert "local-calls" in proc.stderr


def test_storage_quick_prints_one_json_line_per_mode() -> None:
    modes = ["memory", "sqlite", "sqlite-sequential"]
    args = [arg for mode in modes for arg in ("--mode", mode)]
    proc = _run("storage", "--quick", "--rounds", "1", *args)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(text) for text in proc.stdout.splitlines() if text.strip()]
    assert [line["mode"] for line in lines] == modes
    for line in lines:
        assert list(line)[:5] == REQUIRED, line
        assert line["benchmark"] == "storage"
        assert line["ours"] > 0
        assert line["floor"] > 0
        assert line["unit"] == "writes/s"


def test_orders_quick_prints_one_json_line_per_mode() -> None:
    # Silo processes, a nats-server and the hand-written floor: one round of each, N small.
    proc = _run("orders", "--quick", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(text) for text in proc.stdout.splitlines() if text.strip()]
    assert [line["mode"] for line in lines] == ["1-silo", "2-silos"], proc.stdout
    for line in lines:
        assert list(line)[:5] == REQUIRED, line
        assert line["benchmark"] == "orders"
        _check_numbers(line)
        assert line["unit"] == "orders/s"
        assert line["silos"] == {"1-silo": 1, "2-silos": 2}[line["mode"]]


def test_observability_quick_prints_metrics_and_tracing_on_against_off() -> None:
    proc = _run("observability", "--quick", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(text) for text in proc.stdout.splitlines() if text.strip()]
    assert [line["mode"] for line in lines] == [
        "metrics-local-calls",
        "metrics-streams",
        "tracing-local-calls",
        "tracing-local-calls-inline",
        "tracing-streams",
    ]
    for line in lines:
        assert list(line)[:5] == REQUIRED, line
        _check_numbers(line)
