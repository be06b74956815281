"""The benchmark runner's parts: options, the registry, result lines, alternating rounds."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Options:
    quick: bool = False
    rounds: int = 3
    modes: frozenset[str] = field(default_factory=frozenset)  # empty: every mode

    def wants(self, mode: str) -> bool:
        return not self.modes or mode in self.modes


Emit = Callable[[dict[str, Any]], None]
BenchFunc = Callable[[Options, Emit], None]


@dataclass(frozen=True)
class Benchmark:
    name: str
    func: BenchFunc
    modes: tuple[str, ...]
    doc: str


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str, *, modes: tuple[str, ...]) -> Callable[[BenchFunc], BenchFunc]:
    """Register a benchmark under *name*; it emits one result dict per mode it runs."""

    def register(func: BenchFunc) -> BenchFunc:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        doc = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        BENCHMARKS[name] = Benchmark(name, func, modes, doc)
        return func

    return register


def result(benchmark: str, mode: str, ours: float, floor: float, **extra: Any) -> dict[str, Any]:
    """A result line: the five required keys first, then the extras."""
    line: dict[str, Any] = {
        "benchmark": benchmark,
        "mode": mode,
        "ours": _round(ours),
        "floor": _round(floor),
        "ratio": round(ours / floor, 4),
    }
    line.update(extra)
    return line


def _round(x: float) -> float:
    return round(x, 1) if abs(x) >= 100 else round(x, 4)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def best_of(
    rounds: int,
    ours: Callable[[], Awaitable[float]],
    floor: Callable[[], Awaitable[float]],
    label: str,
) -> tuple[float, float]:
    """Run *ours* and *floor* alternately (order flipped each round); the best time of each."""
    best_ours = best_floor = float("inf")
    for r in range(rounds):
        order = [("ours", ours), ("floor", floor)]
        if r % 2:
            order.reverse()
        for which, fn in order:
            t = await fn()
            log(f"  {label} round {r + 1}/{rounds} {which}: {t:.4f} s")
            if which == "ours":
                best_ours = min(best_ours, t)
            else:
                best_floor = min(best_floor, t)
    return best_ours, best_floor
