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
from typing import Any

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


def test_scale_quick_prints_cpu_and_messages_per_order() -> None:
    # Asked for 2-silos only: the 1-silo baseline of scaling_efficiency is measured, not printed.
    proc = _run("scale", "--quick", "--rounds", "1", "--mode", "2-silos")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(text) for text in proc.stdout.splitlines() if text.strip()]
    assert [line["mode"] for line in lines] == ["2-silos"], proc.stdout
    (line,) = lines
    assert list(line)[:5] == REQUIRED, line
    assert line["benchmark"] == "scale"
    assert line["silos"] == 2
    for key in ("ours", "floor", "ratio", "orders_per_s", "scaling_efficiency"):
        assert isinstance(line[key], (int, float)), line
        assert line[key] > 0, line
    # scale's ratio is floor / ours (CPU per order: higher is better)
    assert math.isclose(line["ratio"], line["floor"] / line["ours"], rel_tol=1e-2), line
    cpu = line["cpu_us_per_order"]
    assert len(cpu["silos"]) == 2, cpu
    assert {"client", "nats_server", "total"} <= set(cpu), cpu
    assert {"floor", "nats_server", "total"} <= set(line["floor_cpu_us_per_order"]), line
    for key in (
        "msgs_in_per_order",
        "msgs_out_per_order",
        "floor_msgs_in_per_order",
        "floor_msgs_out_per_order",
    ):
        assert line[key] > 0, line  # every order is at least a publish and a delivery


def _cluster_line(mode: str) -> dict[str, Any]:
    """The one line of ``cluster --quick --rounds 1 --mode <mode>``, its common keys checked."""
    proc = _run("cluster", "--quick", "--rounds", "1", "--mode", mode)
    assert proc.returncode == 0, proc.stderr
    lines: list[dict[str, Any]] = [
        json.loads(text) for text in proc.stdout.splitlines() if text.strip()
    ]
    assert [line["mode"] for line in lines] == [mode], proc.stdout
    (line,) = lines
    assert list(line)[:5] == REQUIRED, line
    assert line["benchmark"] == "cluster"
    _check_numbers(line)
    assert line["unit"] == "activations/s"
    assert line["silos"] == 2
    return line


def test_cluster_activations_quick_prints_one_line() -> None:
    # Both silos activate their own half at once (prefer-local placement).
    line = _cluster_line("activations")
    assert line["placement"] == "prefer-local"
    assert set(line["silo_seconds"]) == {"silo_a", "silo_b"}, line
    assert set(line["cpu_us_per_activation"]) == {"silo_a", "silo_b", "nats_server", "total"}, line
    assert line["floor_cpu_us_per_activation"], line
    if line["grain_directory"] == "in-cluster":  # the directory holds every activation
        assert line["directory_entries"] >= line["n"], line
        remote = line["registered_remotely"]
        assert set(remote) == {"silo_a", "silo_b"}, line
        assert all(0 < share < 1 for share in remote.values()), line  # both owners used


def test_cluster_activations_spread_quick_prints_one_line() -> None:
    # One silo makes every first call; random placement uses both silos.
    line = _cluster_line("activations-spread")
    assert line["placement"] == "random"
    assert line["target"] == "(none: reported)"
    assert 0 < line["on_caller_silo"] < 1, line
