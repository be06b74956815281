"""orders: the reference application (``examples/orders``) end to end, in orders/s.

One nats-server is started here (JetStream, data in a temporary directory). Per round,
**ours** starts fresh silo processes (``trio_grains_orders._processes.run_silos``: the
app's grains, the ``jetstream`` stream provider with 8 partitions, ``nats-kv`` grain
storage, NATS clustering) on a stream, a KV bucket and a cluster id of the round's own; this
process is the client. After the silos are active (and a short settle plus a warm-up of
200 orders on other customers, so the fresh processes are not measured cold), the clock
starts at the first publish of the demo's ``Run.publish_all`` (N orders by 32 concurrent
publishers, ``msg_id`` = the order id, then the demo's two invalid orders) and stops when
the customers' aggregates (``CustomerGrain.totals()``, polled on the customers not yet
complete) count every order. Each order is one stream item and three state writes
(order ``received``, the customer's aggregate, order ``processed``).

**floor** (``_orders_floor.py``): the same pipeline written by hand on our NATS connection,
in this one process whatever the mode: the same publishing, the same stream and consumer
layout, fetch + concurrent processing with the same KV writes (customer aggregate by
compare-and-set), ack after the writes; the clock stops when its customer aggregates count
every order. Same server, same run, alternating rounds (best of each).

Modes: ``1-silo`` and ``2-silos`` (silo processes). Target ratio >= 0.5.

``ORDERS_BENCH_PROFILE=<dir>``: each silo process writes ``<dir>/silo-<pid>.prof``
(cProfile of its whole life) when it stops.
"""

from __future__ import annotations

import collections
import os
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import attrs
import trio
import trio_grains_nats as tgn
from _orders_floor import FloorLayout, run_floor
from _runner import Emit, Options, benchmark, best_of, log, result
from _usage import Usage, sample, server_pid, usage
from trio_grains_nats.testing import run_nats_server
from trio_grains_orders import app
from trio_grains_orders._processes import ClusterLayout, DemoError, run_silos
from trio_grains_orders.demo import Options as DemoOptions
from trio_grains_orders.demo import Run, make_order

from trio_grains import Client, ClientConfig, ProviderConfig, open_client

MODES = {"1-silo": 1, "2-silos": 2}
ORDERS = (5_000, 300)  # (full, quick)
CUSTOMERS = 100
PARTITIONS = 8
WARM_UP = (200, 50)
SETTLE = 1.5  # seconds after the silos are active: partition leases settle
PROFILE_ENV = "ORDERS_BENCH_PROFILE"

_SITECUSTOMIZE = """\
import atexit, cProfile, os
_profile = cProfile.Profile()
_profile.enable()
def _dump():
    _profile.disable()
    _profile.dump_stats(os.path.join({dir!r}, f"silo-{{os.getpid()}}.prof"))
atexit.register(_dump)
"""


@dataclass(frozen=True)
class OrdersRun:
    """One measured run of N orders: its wall time and what it cost (``_usage``)."""

    seconds: float
    n: int
    usage: Usage  # CPU per process name ("silo-1"..., "client", "floor", "nats-server")
    poll_calls: int = 0  # totals() calls of the completion poll (ours), inside the interval

    def cpu_us(self, name: str) -> float:
        return self.usage.cpu[name] / self.n * 1e6

    def silo_names(self) -> list[str]:
        return [name for name in self.usage.cpu if name.startswith("silo-")]


def _expected(n: int, customers: int) -> dict[str, int]:
    """Orders per customer, as ``make_order`` assigns them."""
    return dict(collections.Counter(f"customer-{i % customers:04d}" for i in range(n)))


async def _wait_counted(
    client: Client, expected: dict[str, int], interval: float, first: Sequence[str] = ()
) -> int:
    """Until every customer's aggregate counts its orders; the number of ``totals()`` calls.

    Polls ``totals()`` of the customers not yet complete, every *interval* seconds at most,
    sooner as the orders still missing shrink (about half the time they should take at the
    rate seen so far, at least 10 ms apart): the poll overshoots the end by little, and costs
    little while many orders are missing. With *first* (customers likely to complete last,
    such as the last order's), only those are polled until they are complete, the orders
    missing overall estimated from theirs; then every customer not yet complete: a few
    calls per poll instead of one per customer.
    """
    remaining = dict(expected)
    counts: dict[str, int] = {}
    wait = interval
    rate = 0.0
    last: tuple[float, float] | None = None
    calls = 0
    total = sum(expected.values())

    async def one(customer: str) -> None:
        counts[customer] = (await client.get_grain(app.ICustomer, customer).totals()).orders

    while remaining:
        await trio.sleep(wait)
        targets = [c for c in first if c in remaining] or list(remaining)
        async with trio.open_nursery() as nursery:
            for customer in targets:
                nursery.start_soon(one, customer)
        calls += len(targets)
        weight = sum(remaining.values()) / sum(remaining[c] for c in targets)
        missing_here = 0
        for customer, count in counts.items():
            if count >= remaining[customer]:
                del remaining[customer]
            else:
                missing_here += remaining[customer] - count
        counts.clear()
        missing = missing_here * weight
        now, done = trio.current_time(), total - missing
        if last is not None and now > last[0] and done > last[1]:
            rate = (done - last[1]) / (now - last[0])
        last = (now, done)
        wait = min(interval, max(0.01, missing / rate / 2)) if rate else interval
    return calls


async def _warm_up(client: Client, n: int) -> None:
    """*n* orders of 10 other customers, until counted: every partition's path runs once."""
    provider = client.get_stream_provider()
    rng = random.Random(7)
    orders = [
        attrs.evolve(make_order(i, 10, rng), id=f"w{i:06d}", customer=f"warm-{i % 10}")
        for i in range(n)
    ]

    async def publish(order: app.Order) -> None:
        await provider.get_stream("orders", order.id).publish(order, msg_id=order.id)

    async with trio.open_nursery() as nursery:
        for order in orders:
            nursery.start_soon(publish, order)
    expected = dict(collections.Counter(o.customer for o in orders))
    await _wait_counted(client, expected, 0.05)


async def _delete_streams(url: str, *names: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        async with tgn.connect(url, name="orders-bench-cleanup") as nc:
            js = nc.jetstream()
            for name in names:
                try:
                    await js.delete_stream(name)
                except tgn.NatsError:
                    pass


async def run_ours(
    url: str,
    workdir: Path,
    silos: int,
    n: int,
    warm: int,
    monitor_port: int | None = None,
    poll_first: Sequence[str] = (),
) -> OrdersRun:
    """*n* orders through *silos* fresh silo processes (this process the client), measured
    from the first publish until the aggregates count them all; with *monitor_port*, the
    nats-server's message counts over that interval too. *poll_first*: the completion
    poll's *first* customers (:func:`_wait_counted`)."""
    tag = uuid.uuid4().hex[:8]
    layout = ClusterLayout(
        servers=url,
        cluster_id=f"ob-{tag}",
        stream=f"OB_{tag.upper()}",
        prefix=f"ob{tag}",
        bucket=f"ob-{tag}",
        partitions=PARTITIONS,
    )
    rundir = workdir / f"ours-{tag}"
    rundir.mkdir()
    streams = {"default": ProviderConfig(provider="jetstream", options=layout.streams_options())}
    config = ClientConfig(
        cluster_id=layout.cluster_id,
        clustering=ProviderConfig(provider="nats", options={"servers": url}),
        streams=streams,
    )
    try:
        async with run_silos(layout, rundir, silos) as procs, open_client(config) as client:
            with trio.move_on_after(60) as waiting:
                await client.wait_for_silos(silos)
            if waiting.cancelled_caught:
                raise DemoError(f"the silos did not become active in 60 s:\n{procs[0].log_tail()}")
            await trio.sleep(SETTLE)
            await _warm_up(client, warm)
            options = DemoOptions(orders=n, silos=silos, customers=CUSTOMERS, partitions=PARTITIONS)
            run = Run(options, client, procs)
            expected = _expected(n, CUSTOMERS)
            pids: dict[str, int | None] = {p.name: p.pid for p in procs}
            pids.update({"client": os.getpid(), "nats-server": server_pid()})
            before = sample(pids, monitor_port)
            async with trio.open_nursery() as nursery:
                t0 = time.perf_counter()
                nursery.start_soon(run.publish_all)
                polls = await _wait_counted(client, expected, 0.25, poll_first)
                elapsed = time.perf_counter() - t0
                after = sample(pids, monitor_port)
            assert run.published == n, (run.published, n)
    finally:
        await _delete_streams(url, layout.stream, f"KV_{layout.bucket}")
    return OrdersRun(elapsed, n, usage(before, after), polls)


async def run_floor_measured(url: str, n: int, monitor_port: int | None = None) -> OrdersRun:
    """The hand-written pipeline (``_orders_floor``) on *n* orders in this process, measured
    over the same interval as :func:`run_ours`."""
    tag = uuid.uuid4().hex[:8]
    layout = FloorLayout(
        stream=f"OF_{tag.upper()}", prefix=f"of{tag}", bucket=f"of-{tag}", partitions=PARTITIONS
    )
    pids = {"floor": os.getpid(), "nats-server": server_pid()}
    samples = []
    elapsed = await run_floor(
        url,
        layout,
        n,
        CUSTOMERS,
        on_start=lambda: samples.append(sample(pids, monitor_port)),
        on_stop=lambda: samples.append(sample(pids, monitor_port)),
    )
    return OrdersRun(elapsed, n, usage(*samples))


async def _ours(url: str, workdir: Path, silos: int, n: int, warm: int) -> float:
    run = await run_ours(url, workdir, silos, n, warm)
    per_silo = ", ".join(f"{run.cpu_us(name):.0f}" for name in run.silo_names())
    log(
        f"    cpu per order: silos {per_silo} us, client {run.cpu_us('client'):.0f} us, "
        f"nats-server {run.cpu_us('nats-server'):.0f} us"
    )
    return run.seconds


async def _floor(url: str, n: int) -> float:
    run = await run_floor_measured(url, n)
    log(
        f"    cpu per order: floor process {run.cpu_us('floor'):.0f} us, "
        f"nats-server {run.cpu_us('nats-server'):.0f} us"
    )
    return run.seconds


async def _run(opts: Options, emit: Emit, url: str, workdir: Path) -> None:
    n = ORDERS[1 if opts.quick else 0]
    warm = WARM_UP[1 if opts.quick else 0]
    await _floor(url, warm)  # this process's code paths warm, as the silos' are
    for mode, silos in MODES.items():
        if not opts.wants(mode):
            continue

        async def ours(silos: int = silos) -> float:
            return await _ours(url, workdir, silos, n, warm)

        async def floor() -> float:
            return await _floor(url, n)

        t_ours, t_floor = await best_of(opts.rounds, ours, floor, mode)
        emit(
            result(
                "orders",
                mode,
                n / t_ours,
                n / t_floor,
                unit="orders/s",
                target=">= 0.5 (ratio)",
                n=n,
                silos=silos,
                customers=CUSTOMERS,
                partitions=PARTITIONS,
                writes_per_order=3,
            )
        )


@benchmark("orders", modes=tuple(MODES))
def orders_bench(opts: Options, emit: Emit) -> None:
    """the orders example end to end (silo processes, JetStream, nats-kv) vs the same by hand"""
    if not any(opts.wants(mode) for mode in MODES):
        return
    with tempfile.TemporaryDirectory(prefix="orders-bench-") as tmp:
        workdir = Path(tmp)
        saved = os.environ.get("PYTHONPATH")
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:  # silo processes inherit our environment: a sitecustomize profiles them
            site = workdir / "profile-site"
            site.mkdir()
            target = os.path.abspath(profile_dir)
            os.makedirs(target, exist_ok=True)
            (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(dir=target))
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), saved]))
            log(f"profiling silo processes into {target}")
        try:
            with run_nats_server(workdir / "nats") as url:
                log(f"nats-server at {url}")
                trio.run(_run, opts, emit, url, workdir)
        finally:
            if profile_dir:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
