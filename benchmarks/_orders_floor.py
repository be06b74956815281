"""The floor of ``benchmarks/run.py orders``: the orders pipeline by hand, on our NATS client.

What an engineer writes without the framework, in this one process, on our connection
(``trio_grains_nats``): the same JetStream stream layout as the ``jetstream`` stream
provider (one stream on ``<prefix>.*.*.*``, 8 partitions, one durable pull consumer per
partition filtered on ``<prefix>.*.<N>.*``, explicit acks), the same KV bucket settings as
the ``nats-kv`` storage provider (history 1), and per order the app's storage work:

1. decode the order (the client's encoding: msgpack through the silo converter) and check
   it (``app.problems_of``); an invalid one gets a dead-letter record and is acked;
2. write the order's state ``received`` (``create``: a redelivered order finds its key and
   is picked up from its stored state);
3. add it to its customer's aggregate: a compare-and-set ``update`` on the revision cached
   in this process, one at a time per customer (a ``trio.Lock`` each), re-read and retried
   when another writer got there first;
4. write the order's state ``processed`` (``update`` on the revision of step 2);
5. ack the message.

Each partition is one task keeping one pull request (``batch`` 64, the provider's default
``batch_size``; expiring after 2 s) outstanding on the partition's consumer, renewed as soon
as it is served or expires; each order is handled in a task of its own as it arrives (at
most 1,024 at once per partition, the provider's default ``max_in_flight``). The
``PullSubscription.fetch`` helper is not used: it returns only once its batch is full or
expired, which stalls a trickle of orders. The states are JSON. Publishing is the demo
client's: 32 concurrent tasks, one ``publish`` at a time each, ``msg_id`` = the order id, on
a connection of its own.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio_grains_nats as tgn
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from trio_grains_nats.client import KeyValue, create_key_value
from trio_grains_orders import app
from trio_grains_orders.demo import invalid_orders, make_order

from trio_grains import StreamId, escape_token, partition_for, unescape_token
from trio_grains._serialization import Codec, make_converter

FETCH_BATCH = 64  # the stream provider's default batch_size
FETCH_EXPIRES = 2.0
MAX_IN_FLIGHT = 1024  # per partition: the provider's default max_in_flight
PUBLISHERS = 32


@attrs.frozen
class FloorLayout:
    stream: str
    prefix: str
    bucket: str
    partitions: int = 8
    ack_wait: float = 4.0


@attrs.define
class _Customer:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    state: dict[str, Any] | None = None
    revision: int | None = None  # None: no value yet (create)


class FloorPipeline:
    """The consumers and their state; :meth:`run` processes until :meth:`stop`."""

    def __init__(self, nc: tgn.Connection, kv: KeyValue, layout: FloorLayout) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.kv = kv
        self.layout = layout
        self.codec = Codec(make_converter())
        self.customers: dict[str, _Customer] = {}
        self.counted = 0  # orders counted by their customer's aggregate
        self.processed = 0  # orders whose state is "processed"
        self.dead = 0
        self.conflicts = 0
        self.on_counted: Callable[[int], None] = lambda counted: None
        self._strip = len(layout.prefix) + 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        subs = [
            await self.nc.subscribe(self.nc.new_inbox(), max_pending=1 << 20)
            for _ in range(self.layout.partitions)
        ]
        try:
            async with trio.open_nursery() as nursery:
                for n, sub in enumerate(subs):
                    nursery.start_soon(self._partition, n, sub)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                for sub in subs:
                    await sub.unsubscribe()

    async def _partition(self, n: int, sub: tgn.Subscription) -> None:
        """Pull partition *n*: one pull request (FETCH_BATCH, expiring) outstanding, renewed
        when it is served or expires; each order handled as it arrives, at most MAX_IN_FLIGHT
        of this partition at once."""
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.layout.stream}.p{n}"
        request = json.dumps({"batch": FETCH_BATCH, "expires": int(FETCH_EXPIRES * 1e9)}).encode()
        in_flight = trio.Semaphore(MAX_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            await self.nc.publish(next_subject, request, reply=sub.subject)
            owed = FETCH_BATCH
            async for msg in sub:
                if msg.status is not None:
                    if msg.status == 100:  # idle heartbeat
                        continue
                    if msg.status not in (404, 408):  # 409 & co: do not spin
                        await trio.sleep(0.01)
                    owed = 0  # the request is over (expired): ask again
                else:
                    owed -= 1
                    await in_flight.acquire()
                    nursery.start_soon(self._handle, tgn.JsMsg(msg, self.nc), in_flight)
                if owed <= 0:
                    await self.nc.publish(next_subject, request, reply=sub.subject)
                    owed = FETCH_BATCH

    async def _handle(self, msg: tgn.JsMsg, in_flight: trio.Semaphore) -> None:
        try:
            await self._process(msg)
        finally:
            in_flight.release()

    async def _process(self, msg: tgn.JsMsg) -> None:
        key = unescape_token(msg.subject[self._strip :].split(".")[2])
        order: app.Order = self.codec.loads(msg.data, app.Order)
        problems = app.problems_of(order, key)
        if problems:
            reason = "; ".join(problems).encode()
            await self.kv.put(f"letters.deadletter/{escape_token(key)}", reason)
            self.dead += 1
            await msg.ack()
            return
        order_key = f"state.order/{order.id}"
        state = {
            "status": "received",
            "sequence": msg.metadata.stream_seq,
            "customer": order.customer,
            "amount": order.amount,
            "deliveries": 1,
            "processed_at": None,
        }
        try:
            revision = await self.kv.create(order_key, json.dumps(state).encode())
        except tgn.KeyExistsError:  # a redelivery: go on from the stored state
            entry = await self.kv.get(order_key)
            state = json.loads(entry.value)
            state["deliveries"] += 1
            revision = await self.kv.update(order_key, json.dumps(state).encode(), entry.revision)
            if state["status"] == "processed":
                await msg.ack()
                return
        await self._add_to_customer(order)
        state["status"] = "processed"
        state["processed_at"] = time.time()
        await self.kv.update(order_key, json.dumps(state).encode(), revision)
        self.processed += 1
        await msg.ack()

    async def _add_to_customer(self, order: app.Order) -> None:
        customer = self.customers.get(order.customer)
        if customer is None:
            customer = self.customers[order.customer] = _Customer()
        key = f"state.customer/{order.customer}"
        async with customer.lock:
            while True:
                current = customer.state or {"orders": 0, "total": 0, "order_ids": []}
                if order.id in current["order_ids"]:
                    return
                new = {
                    "orders": current["orders"] + 1,
                    "total": current["total"] + order.amount,
                    "order_ids": [*current["order_ids"], order.id],
                }
                data = json.dumps(new).encode()
                try:
                    if customer.revision is None:
                        customer.revision = await self.kv.create(key, data)
                    else:
                        customer.revision = await self.kv.update(key, data, customer.revision)
                except tgn.WrongLastSequenceError:  # someone else wrote it: re-read, retry
                    self.conflicts += 1
                    entry = await self.kv.get(key)
                    customer.state, customer.revision = json.loads(entry.value), entry.revision
                    continue
                customer.state = new
                self.counted += 1
                self.on_counted(self.counted)
                return


async def setup(nc: tgn.Connection, layout: FloorLayout) -> KeyValue:
    """The stream, its partitions' durable consumers and the KV bucket (as the providers')."""
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=layout.stream,
            subjects=[f"{layout.prefix}.*.*.*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )
    for n in range(layout.partitions):
        await js.add_consumer(
            layout.stream,
            ConsumerConfig(
                durable_name=f"p{n}",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=f"{layout.prefix}.*.{n}.*",
                max_deliver=-1,
                ack_wait=layout.ack_wait,
                max_ack_pending=-1,
            ),
        )
    return await create_key_value(
        js, layout.bucket, history=1, storage=StorageType.FILE, allow_msg_ttl=False
    )


async def teardown(nc: tgn.Connection, layout: FloorLayout) -> None:
    js = nc.jetstream()
    for name in (layout.stream, f"KV_{layout.bucket}"):
        try:
            await js.delete_stream(name)
        except tgn.NatsError:
            pass


async def publish_orders(
    nc: tgn.Connection, layout: FloorLayout, n: int, customers: int, *, invalid: bool = True
) -> None:
    """The demo client's publishing (``Run.publish_all``), on our connection."""
    js = nc.jetstream()
    codec = Codec(make_converter())
    rng = random.Random(42)
    pending = iter(range(n))

    def subject(key: str) -> str:
        partition = partition_for(StreamId("orders", key), layout.partitions)
        return f"{layout.prefix}.orders.{partition}.{escape_token(key)}"

    async def publish(order: app.Order) -> None:
        await js.publish(subject(order.id), codec.dumps(order), msg_id=order.id)

    async def publisher() -> None:
        for i in pending:
            await publish(make_order(i, customers, rng))

    async with trio.open_nursery() as nursery:
        for _ in range(PUBLISHERS):
            nursery.start_soon(publisher)
    if invalid:
        for order in invalid_orders():
            await publish(order)


async def run_floor(
    url: str,
    layout: FloorLayout,
    n: int,
    customers: int,
    *,
    on_start: Callable[[], None] = lambda: None,
    on_stop: Callable[[], None] = lambda: None,
) -> float:
    """Seconds from the first publish until the customers' aggregates count all *n* orders
    (then the rest of the work is waited for, untimed, and the stream and bucket deleted).

    *on_start* is called just before the clock starts, *on_stop* just after it stops (to
    sample what the measured interval cost)."""
    async with (
        tgn.connect(url, name="orders-floor-pub") as pub,
        tgn.connect(url, name="orders-floor") as nc,
    ):
        kv = await setup(nc, layout)
        try:
            pipeline = FloorPipeline(nc, kv, layout)
            counted = trio.Event()
            pipeline.on_counted = lambda c: counted.set() if c >= n else None
            async with trio.open_nursery() as nursery:
                await nursery.start(pipeline.run)
                on_start()
                t0 = time.perf_counter()
                nursery.start_soon(publish_orders, pub, layout, n, customers)
                await counted.wait()
                elapsed = time.perf_counter() - t0
                on_stop()
                while pipeline.processed < n or pipeline.dead < 2:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await nc.flush()
                nursery.cancel_scope.cancel()
            assert pipeline.counted == n, (pipeline.counted, n)
        finally:
            with trio.CancelScope(shield=True):
                await teardown(nc, layout)
    return elapsed
