"""streams: items/s through the ``jetstream`` stream provider, end to end, vs raw JetStream.

``ours``: a silo with the ``jetstream`` provider (8 partitions, ``batch_size = 256`` like
the floor's fetch, default ``max_in_flight``); N items are published with ``stream.publish_batch``
(100 keys, batches of 100, the keys' publishers running concurrently) while implicitly
subscribed grains (one per key) handle them; the clock stops when every item was handled
and acked (and the acks flushed to the server).

``floor``: the same items (the same encoded payloads, the same subjects) through our own
connection (``trio_grains_nats``) with nothing on top: ``publish_many`` pipelined, and
concurrently one durable pull consumer on the stream, ``fetch(256)`` + ``ack()`` of each
message, then a flush. Same nats-server (started here, JetStream in a temporary
directory), same run, alternating rounds. Target ratio >= 0.6.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from typing import Any

import trio
import trio_grains_nats as tgn
from _runner import Emit, Options, benchmark, best_of, log, result
from trio_grains_nats.testing import run_nats_server

from trio_grains import (
    Grain,
    SequenceToken,
    SiloConfig,
    StreamId,
    escape_token,
    implicit_subscription,
    open_silo,
    partition_for,
)

MODES = ("end-to-end",)
SIZES = (20_000, 2_000)  # (full, quick)
KEYS = 100
BATCH = 100
PARTITIONS = 8
PAYLOAD = {"order": "x" * 48, "amount": 12.5}

_STATE: dict[str, Any] = {"count": 0, "target": 0, "done": None}


@implicit_subscription("bench")
class BenchGrain(Grain):
    async def on_stream_item(self, item: dict[str, Any], token: SequenceToken) -> None:
        _STATE["count"] += 1
        if _STATE["count"] == _STATE["target"]:
            _STATE["done"].set()


def _batches(n: int) -> dict[int, list[int]]:
    by_key: dict[int, list[int]] = {k: [] for k in range(KEYS)}
    for i in range(n):
        by_key[i % KEYS].append(i)
    return by_key


async def _ours(nc: tgn.Connection, url: str, n: int) -> float:
    prefix = "sb" + uuid.uuid4().hex[:8]
    config = SiloConfig.from_dict(
        {
            "streams": {
                "default": {
                    "provider": "jetstream",
                    "options": {
                        "servers": [url],
                        "prefix": prefix,
                        "partitions": PARTITIONS,
                        "batch_size": 256,
                    },
                }
            }
        }
    )
    _STATE.update(count=0, target=n, done=trio.Event())
    async with open_silo(config, grains=[BenchGrain]) as silo:
        provider = silo.get_stream_provider()
        adapter = silo.provider("streams", "default")
        by_key = _batches(n)

        async def publish(key: int) -> None:
            stream = provider.get_stream("bench", key)
            items = by_key[key]
            for start in range(0, len(items), BATCH):
                await stream.publish_batch([PAYLOAD] * len(items[start : start + BATCH]))

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for key in range(KEYS):
                nursery.start_soon(publish, key)
        await _STATE["done"].wait()
        while provider.statistics().acked < n:  # noqa: ASYNC110 - the last acks
            await trio.sleep(0.001)
        await adapter.connection.flush()
        elapsed = time.perf_counter() - t0
        stream_name = adapter.config.stream
    await nc.jetstream().delete_stream(stream_name)
    return elapsed


async def _floor(nc: tgn.Connection, payload: bytes, n: int) -> float:
    js = nc.jetstream()
    prefix = "fb" + uuid.uuid4().hex[:8]
    name = prefix.upper()
    await js.add_stream(name=name, subjects=[f"{prefix}.*.*.*"])
    await js.add_consumer(name, durable_name="c", ack_policy="explicit", max_ack_pending=-1)
    psub = await js.pull_subscribe(name, "c")
    subjects = {}
    for k in range(KEYS):
        sid = StreamId("bench", k)
        subjects[k] = f"{prefix}.bench.{partition_for(sid, PARTITIONS)}.{escape_token(sid.key)}"
    items = [tgn.PublishItem(subjects[i % KEYS], payload, msg_id=f"{prefix}-{i}") for i in range(n)]

    async def consume() -> None:
        got = 0
        while got < n:
            msgs = await psub.fetch(256, expires=5)
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        await nc.flush()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await js.publish_many(items)
    elapsed = time.perf_counter() - t0
    await psub.unsubscribe()
    await js.delete_stream(name)
    return elapsed


async def _run(opts: Options, emit: Emit, url: str) -> None:
    n = SIZES[1 if opts.quick else 0]
    from trio_grains._serialization import Codec, make_converter

    payload = Codec(make_converter()).dumps(PAYLOAD)
    async with tgn.connect(url, name="streams-bench") as nc:

        async def ours() -> float:
            return await _ours(nc, url, n)

        async def floor() -> float:
            return await _floor(nc, payload, n)

        t_ours, t_floor = await best_of(opts.rounds, ours, floor, "end-to-end")
    emit(
        result(
            "streams",
            "end-to-end",
            n / t_ours,
            n / t_floor,
            unit="items/s (published, handled, acked)",
            target=">= 0.6 (ratio)",
            n=n,
            keys=KEYS,
            partitions=PARTITIONS,
            payload_bytes=len(payload),
        )
    )


@benchmark("streams", modes=MODES)
def streams_bench(opts: Options, emit: Emit) -> None:
    """JetStream stream provider end to end (publish, grain handlers, acks) vs raw JetStream"""
    if not opts.wants("end-to-end"):
        return
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(tmp) as url:
        log(f"nats-server at {url}")
        trio.run(_run, opts, emit, url)
