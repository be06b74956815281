"""One run of the demo: its options, the orders, how they are published (in phases, paced
or not), progress until each is counted, and the final check and summary.

``--rate auto`` is two phases: the first half of the orders unpaced (what this machine
sustains; also the silos' warm-up), then the other half at half of that. The capacity is
the rate at which the last 90 % of the first half were processed, read from the orders'
own states (``processed_at``): the progress poll sees the end only to within its 0.25 s,
and the first orders meet cold silos and a backlog still filling up. ``--kill-silo``
kills a silo a third of the way into the last phase, so the capacity is measured whole.
"""

from __future__ import annotations

import datetime
import math
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import attrs
import trio

from trio_grains import Client

from . import app
from ._measure import CpuMeter, CpuPerOrder, CpuSample, Pacer, PhaseSummary, find_child, summarize
from ._processes import DemoError, SiloProcess

__all__ = [
    "INVALID",
    "Options",
    "Progress",
    "Rate",
    "Run",
    "check",
    "invalid_orders",
    "make_order",
    "read_states",
]

INVALID = {
    "bad-amount": "is not the sum of the lines",
    "bad-customer": "no customer",
}


Rate = float | Literal["auto"] | None
"""Orders per second; ``"auto"``: half of what an unpaced first half measured; None: unpaced."""


@attrs.frozen
class Options:
    orders: int = 6_000
    silos: int = 2
    customers: int = 100
    partitions: int = 8
    kill_silo: bool = False
    publishers: int = 32
    timeout: float = 300.0
    dashboard: int | None = None
    # None (unpaced) here but "auto" on the command line: Run.publish_all with the defaults
    # is what the benchmark (benchmarks/orders_bench.py) measures, as fast as it goes.
    rate: Rate = None


def make_order(
    i: int, customers: int, rng: random.Random, created: datetime.datetime | None = None
) -> app.Order:
    """Order number *i*; *created* (when it is published) is now unless given."""
    lines = tuple(
        app.OrderLine(f"sku-{rng.randrange(1000)}", rng.randrange(1, 5), rng.randrange(100, 5000))
        for _ in range(rng.randrange(1, 4))
    )
    return app.Order(
        id=f"o{i:06d}",
        customer=f"customer-{i % customers:04d}",
        lines=lines,
        amount=sum(line.quantity * line.price for line in lines),
        created=created or datetime.datetime.now(datetime.UTC),
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


@attrs.define(eq=False)
class Phase:
    """Orders published one way (unpaced, or paced at *rate*), and the CPU they took."""

    label: str
    rate: float | None
    before: CpuSample
    after: CpuSample | None = None  # None: cut short (--timeout)
    orders: list[app.Order] = attrs.field(factory=list)


@attrs.define
class Run:
    options: Options
    client: Client
    silos: list[SiloProcess]
    orders: list[app.Order] = attrs.field(factory=list)
    published: int = 0
    processed: int = 0
    killed: str = ""
    phases: list[Phase] = attrs.field(factory=list)
    cpu: CpuMeter = attrs.field(init=False)

    @cpu.default
    def _cpu(self) -> CpuMeter:
        # the nats-server is the one the demo started: its child (None when not found)
        return CpuMeter([s.pid for s in self.silos], find_child("nats-server"))

    async def publish(
        self, first: int, count: int, rate: float | None, into: list[app.Order] | None = None
    ) -> None:
        """Publish orders *first* .. *first* + *count* - 1, at *rate* per second (None: as
        fast as ``options.publishers`` concurrent publishers go). A paced order's
        ``created`` is when it was due: a publisher late on the schedule shows as latency."""
        provider = self.client.get_stream_provider()
        rng = random.Random(42 + first)

        async def one(i: int, created: datetime.datetime | None) -> None:
            order = make_order(first + i, self.options.customers, rng, created)
            self.orders.append(order)
            if into is not None:
                into.append(order)
            await provider.get_stream("orders", order.id).publish(order, msg_id=order.id)
            self.published += 1

        if rate is None:  # the publishers share one iterator: no channel hop per order
            pending = iter(range(count))

            async def unpaced() -> None:
                for i in pending:
                    await one(i, None)

            async with trio.open_nursery() as nursery:
                for _ in range(self.options.publishers):
                    nursery.start_soon(unpaced)
            return

        pacer = Pacer(count, rate, trio.current_time())
        wall = datetime.datetime.now(datetime.UTC)  # = pacer.start, on the orders' clock
        send, receive = trio.open_memory_channel[int](math.inf)

        async def paced(receive: trio.MemoryReceiveChannel[int]) -> None:
            async with receive:
                async for i in receive:
                    await one(i, wall + datetime.timedelta(seconds=pacer.due(i) - pacer.start))

        async with trio.open_nursery() as nursery:
            async with receive:
                for _ in range(self.options.publishers):
                    nursery.start_soon(paced, receive.clone())
            async with send:
                while burst := await pacer.next_burst():
                    for i in burst:
                        send.send_nowait(i)

    async def publish_invalid(self) -> None:
        provider = self.client.get_stream_provider()
        for order in invalid_orders():
            await provider.get_stream("orders", order.id).publish(order, msg_id=order.id)

    async def publish_all(self) -> None:
        """``options.orders`` orders at ``options.rate``, then the two invalid ones. The rate
        ``"auto"`` needs the processing measured: :meth:`run_phases` does that."""
        if self.options.rate == "auto":
            raise ValueError("publish_all() needs a number or None as the rate; see run_phases")
        await self.publish(0, self.options.orders, self.options.rate)
        await self.publish_invalid()

    async def run_phases(self, progress: Progress) -> None:
        """Publish every order (one phase, or two for ``rate="auto"``), following progress
        until each is counted; then the invalid ones."""
        total, rate = self.options.orders, self.options.rate
        if rate != "auto":
            label = "unpaced" if rate is None else f"paced at {rate:,.0f} orders/s"
            await self.phase(label, 0, total, rate, progress, last=True)
            return
        first_half = total // 2
        await self.phase("unpaced (capacity)", 0, first_half, None, progress, last=False)
        capacity = (await self.summaries(self.phases))[0].sustained
        if capacity <= 0:
            raise DemoError(f"the first {first_half:,} orders did not measure a rate")
        half = capacity / 2
        progress.end()
        print(
            f"capacity: {capacity:,.0f} orders/s sustained ({first_half:,} orders unpaced); "
            f"the other {total - first_half:,} at half of it, {half:,.0f} orders/s"
        )
        label = f"paced at {half:,.0f} orders/s (half the capacity)"
        await self.phase(label, first_half, total - first_half, half, progress, last=True)

    async def phase(
        self,
        label: str,
        first: int,
        count: int,
        rate: float | None,
        progress: Progress,
        *,
        last: bool,
    ) -> None:
        phase = Phase(label, rate, before=self.cpu.sample())
        self.phases.append(phase)
        kill_at = first + count // 3 if self.options.kill_silo and last else None

        async def publish() -> None:
            await self.publish(first, count, rate, phase.orders)
            if last:
                await self.publish_invalid()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await self.follow(progress, first + count, kill_at)
        phase.after = self.cpu.sample()

    async def summaries(
        self, phases: Sequence[Phase], states: dict[str, app.OrderState] | None = None
    ) -> list[PhaseSummary]:
        """What *phases* measured, from *states* (read here when not given)."""
        if states is None:
            states = await read_processed(self.client, [o.id for p in phases for o in p.orders])
        now = self.cpu.sample()
        return [
            summarize(
                p.label,
                p.rate,
                {o.id: o.created for o in p.orders},
                {o.id: states[o.id].processed_at for o in p.orders if o.id in states},
                CpuPerOrder.between(p.before, p.after or now, len(p.orders)),
            )
            for p in phases
        ]

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

    async def follow(self, progress: Progress, until: int, kill_at: int | None = None) -> None:
        """Show progress until *until* orders are counted; kill a silo at *kill_at*."""
        while self.processed < until:
            await trio.sleep(0.25)
            self.processed = await self.count_processed()
            self.cpu.sample()  # a silo killed later counts up to here
            progress.show(self.published, self.processed)
            if kill_at is not None and not self.killed and self.processed >= kill_at:
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


async def read_processed(client: Client, ids: Sequence[str]) -> dict[str, app.OrderState]:
    """The states of orders *ids*, once each is ``processed`` or after 30 s."""
    states = await read_states(client, ids)
    with trio.move_on_after(30):  # the last orders may sit between their two writes
        while unfinished := [i for i, s in states.items() if s.status != "processed"]:
            await trio.sleep(0.2)
            states.update(await read_states(client, unfinished))
    return states


async def check(run: Run) -> list[str]:
    """Print the results; the list of problems (empty: exactly once in effect)."""
    client, orders = run.client, run.orders
    problems: list[str] = []
    states = await read_processed(client, [o.id for o in orders])
    unfinished = [i for i, s in states.items() if s.status != "processed"]
    if unfinished:
        problems.append(f"{len(unfinished)} orders not processed, e.g. {unfinished[:3]}")
    done = {i: s.processed_at for i, s in states.items() if s.processed_at is not None}
    for summary in await run.summaries(run.phases, states):
        for line in summary.lines():
            print(line)
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
