#!/usr/bin/env python
"""trio-grains benchmarks: each one measured against a floor in the same process and run.

Usage::

    python benchmarks/run.py --list
    python benchmarks/run.py local-calls [--quick] [--mode sequential --mode contended]
    python benchmarks/run.py orders [--quick] [--mode 1-silo --mode 2-silos]
    python benchmarks/run.py all [--quick]

Each mode prints ONE JSON line on stdout::

    {"benchmark": ..., "mode": ..., "ours": <number>, "floor": <number>, "ratio": ours/floor,
     "unit": ..., "target": ..., "n": ...}

Progress and diagnostics go to stderr. Throughput ratios alternate ours/floor over a few
rounds (the order flips every round) and keep the best of each, which is what survives
the noise of a shared machine. See benchmarks/README.md for what each mode measures.

Adding a benchmark: in a module of its own here, write ``def my_bench(opts: Options, emit:
Emit) -> None`` that calls ``emit(result(...))`` once per mode it runs (``opts.wants(mode)``),
decorate it with ``@benchmark("my-bench", modes=(...))`` (from ``_runner``), and import the
module below.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import cluster_bench  # noqa: F401 - registers cluster
import local_calls  # noqa: F401 - registers local-calls
import nats_bench  # noqa: F401 - registers nats
import observability_bench  # noqa: F401 - registers observability
import orders_bench  # noqa: F401 - registers orders
import scale_bench  # noqa: F401 - registers scale
import storage  # noqa: F401 - registers storage
import streams_bench  # noqa: F401 - registers streams
from _runner import BENCHMARKS, Options

# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="a benchmark name, or 'all'")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run in seconds")
    parser.add_argument("--rounds", type=int, default=3, help="ours/floor rounds (best of each)")
    parser.add_argument(
        "--mode", action="append", default=[], help="run only this mode (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.list:
        for bench in BENCHMARKS.values():
            print(f"{bench.name}: {', '.join(bench.modes)}  -- {bench.doc}")
        return 0
    if not args.name:
        parser.error("give a benchmark name (see --list) or 'all'")
    if args.name == "all":
        selected = list(BENCHMARKS.values())
    elif args.name in BENCHMARKS:
        selected = [BENCHMARKS[args.name]]
    else:
        parser.error(f"unknown benchmark {args.name!r}; known: {', '.join(BENCHMARKS)}, all")
    modes = frozenset(args.mode)
    known_modes = {m for b in selected for m in b.modes}
    if modes - known_modes:
        parser.error(f"unknown mode(s) {sorted(modes - known_modes)}; known: {sorted(known_modes)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    opts = Options(quick=args.quick, rounds=args.rounds, modes=modes)

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    for bench in selected:
        bench.func(opts, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
