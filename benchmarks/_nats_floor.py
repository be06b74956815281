"""The floor of ``benchmarks/run.py nats``: the same workloads with nats-py on plain asyncio.

Run by ``nats_bench.py`` in a separate process (importing trio or trio-asyncio would
change asyncio's behaviour; this process imports neither)::

    python benchmarks/_nats_floor.py WORKLOAD URL N

prints one JSON object ``{"workload": ..., "seconds": <elapsed>, "n": N}`` on stdout.
Each workload mirrors ``nats_bench.py``'s, step by step.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

PAYLOAD = b"x" * 64
IN_FLIGHT = 100


async def core_publish(nc: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await nc.publish("bench.pub", PAYLOAD)
    await nc.flush()
    return time.perf_counter() - t0


async def pub_sub(nc: Any, n: int) -> float:
    # A callback subscription: nats-py's fastest delivery path (its `sub.messages`
    # iterator measured ~4x slower here), so the floor is the stricter one.
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    sub = await nc.subscribe(
        "bench.ps", cb=on_msg, pending_msgs_limit=n + 1, pending_bytes_limit=-1
    )
    await nc.flush()
    t0 = time.perf_counter()
    for _ in range(n):
        await nc.publish("bench.ps", PAYLOAD)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed


async def request_reply(nc: Any, n: int) -> float:
    async def respond(msg: Any) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe("bench.rr", cb=respond)
    await nc.flush()
    per_task = n // IN_FLIGHT

    async def caller() -> None:
        for _ in range(per_task):
            await nc.request("bench.rr", PAYLOAD, timeout=30)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed


async def _stream(js: Any) -> str:
    name = "FLOOR_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    return name


async def js_publish(nc: Any, n: int) -> float:
    js = nc.jetstream()
    name = await _stream(js)
    t0 = time.perf_counter()
    futures = [await js.publish_async(f"{name}.x", PAYLOAD) for _ in range(n)]
    await js.publish_async_completed()
    elapsed = time.perf_counter() - t0
    assert all(f.result().seq for f in futures)
    await js.delete_stream(name)
    return elapsed


async def fetch_ack(nc: Any, n: int) -> float:
    js = nc.jetstream()
    name = await _stream(js)
    futures = [await js.publish_async(f"{name}.x", PAYLOAD) for _ in range(n)]
    await js.publish_async_completed()
    del futures
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
    psub = await js.pull_subscribe_bind("c", stream=name)
    t0 = time.perf_counter()
    got = 0
    while got < n:
        msgs = await psub.fetch(256, timeout=5)
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - t0
    await js.delete_stream(name)
    return elapsed


WORKLOADS = {
    "core-publish": core_publish,
    "pub-sub": pub_sub,
    "request-reply": request_reply,
    "js-publish": js_publish,
    "fetch-ack": fetch_ack,
}


async def main(workload: str, url: str, n: int) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        seconds = await WORKLOADS[workload](nc, n)
    finally:
        await nc.drain()
    print(json.dumps({"workload": workload, "seconds": seconds, "n": n}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
