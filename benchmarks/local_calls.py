"""local-calls: in-process grain calls against plain-object and raw-Trio floors."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio
from _runner import Emit, Options, benchmark, best_of, log, result

from trio_grains import Grain, open_silo


class CounterGrain(Grain):
    def __init__(self) -> None:
        self.total = 0

    async def incr(self, x: int) -> int:
        self.total += x
        return self.total


class PlainCounter:
    def __init__(self) -> None:
        self.total = 0

    async def incr(self, x: int) -> int:
        self.total += x
        return self.total


class YieldingCounterGrain(Grain):
    def __init__(self) -> None:
        self.total = 0

    async def incr(self, x: int) -> int:
        await trio.sleep(0)  # noqa: ASYNC115 (the benchmark's spec: sleep(0), as the floor does)
        self.total += x
        return self.total


class EmptyGrain(Grain):
    """Holds nothing: what an idle activation costs beyond it is the runtime's."""

    async def ping(self) -> None:
        return None


class PlainEmpty:
    async def ping(self) -> None:
        return None


LOCAL_MODES = ("sequential", "concurrent", "contended", "idle-memory", "activation-rate")


@benchmark("local-calls", modes=LOCAL_MODES)
def local_calls(opts: Options, emit: Emit) -> None:
    """In-process grain calls against plain-object and raw-Trio floors."""

    async def main() -> None:
        for mode, fn in [
            ("sequential", _sequential),
            ("concurrent", _concurrent),
            ("contended", _contended),
            ("idle-memory", _idle_memory),
            ("activation-rate", _activation_rate),
        ]:
            if opts.wants(mode):
                log(f"local-calls {mode} ...")
                emit(await fn(opts))

    trio.run(main)


async def _sequential(opts: Options) -> dict[str, Any]:
    n = 5_000 if opts.quick else 200_000
    plain = PlainCounter()
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, 0)
        await ref.incr(1)  # activate: the mode measures calls to an idle, active grain
        await plain.incr(1)

        async def ours() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await ref.incr(1)
            return time.perf_counter() - t0

        async def floor() -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await plain.incr(1)
            return time.perf_counter() - t0

        t_ours, t_floor = await best_of(opts.rounds, ours, floor, "sequential")
    return result(
        "local-calls",
        "sequential",
        n / t_ours,
        n / t_floor,
        unit="calls/s",
        target=">= 0.06 (ratio)",
        n=n,
    )


async def _concurrent(opts: Options) -> dict[str, Any]:
    tasks = 100
    per_task = 50 if opts.quick else 1_000
    n = tasks * per_task
    async with open_silo(grains=[CounterGrain]) as silo:
        refs = [silo.get_grain(CounterGrain, i) for i in range(tasks)]
        plains = [PlainCounter() for _ in range(tasks)]
        for ref in refs:
            await ref.incr(1)  # activated and idle before the clock starts

        async def ours_caller(ref: CounterGrain) -> None:
            for _ in range(per_task):
                await ref.incr(1)

        async def plain_caller(obj: PlainCounter) -> None:
            for _ in range(per_task):
                await obj.incr(1)

        async def ours() -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for ref in refs:
                    nursery.start_soon(ours_caller, ref)
            return time.perf_counter() - t0

        async def floor() -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for obj in plains:
                    nursery.start_soon(plain_caller, obj)
            return time.perf_counter() - t0

        t_ours, t_floor = await best_of(opts.rounds, ours, floor, "concurrent")
    return result(
        "local-calls",
        "concurrent",
        n / t_ours,
        n / t_floor,
        unit="calls/s",
        target=">= 0.06 (ratio)",
        n=n,
    )


async def _contended(opts: Options) -> dict[str, Any]:
    callers, grains = 100, 10
    per_caller = 20 if opts.quick else 1_000
    n = callers * per_caller
    async with open_silo(grains=[YieldingCounterGrain]) as silo, trio.open_nursery() as servers:
        refs = [silo.get_grain(YieldingCounterGrain, i) for i in range(grains)]
        for ref in refs:
            await ref.incr(1)

        # The floor: 10 server tasks, each looping over its own request channel (buffer 0),
        # doing the same sleep(0) and replying on the caller's own reply channel (buffer 0,
        # made once per caller and reused: the cheapest memory-channel reply).
        requests: list[trio.MemorySendChannel[tuple[int, trio.MemorySendChannel[int]]]] = []
        for _ in range(grains):
            send, recv = trio.open_memory_channel[tuple[int, trio.MemorySendChannel[int]]](0)
            requests.append(send)
            servers.start_soon(_counter_server, recv)

        async def ours_caller(ref: YieldingCounterGrain) -> None:
            for _ in range(per_caller):
                await ref.incr(1)

        async def raw_caller(
            req: trio.MemorySendChannel[tuple[int, trio.MemorySendChannel[int]]],
        ) -> None:
            reply_send, reply_recv = trio.open_memory_channel[int](0)
            for _ in range(per_caller):
                await req.send((1, reply_send))
                await reply_recv.receive()

        async def ours() -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(ours_caller, refs[i % grains])
            return time.perf_counter() - t0

        async def floor() -> float:
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(raw_caller, requests[i % grains])
            return time.perf_counter() - t0

        t_ours, t_floor = await best_of(opts.rounds, ours, floor, "contended")
        servers.cancel_scope.cancel()
    return result(
        "local-calls",
        "contended",
        n / t_ours,
        n / t_floor,
        unit="calls/s",
        target=">= 0.8 (ratio)",
        n=n,
    )


async def _counter_server(
    recv: trio.MemoryReceiveChannel[tuple[int, trio.MemorySendChannel[int]]],
) -> None:
    total = 0
    async for x, reply in recv:
        await trio.sleep(0)  # noqa: ASYNC115 (the same work as the grain method)
        total += x
        await reply.send(total)


def _bytes_per_object(make: Callable[[], object], n: int) -> float:
    """tracemalloc bytes retained per object by ``[make() for _ in range(n)]``, list excluded."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    objs = [make() for _ in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    size = (after - before - sys.getsizeof(objs)) / n
    del objs
    return size


def _bare_grain(cls: type[Grain] = EmptyGrain) -> Grain:
    # As the runtime makes the grain object (Activation.activate), minus the runtime.
    obj = cls.__new__(cls)
    cls.__init__(obj)
    return obj


async def _idle_memory(opts: Options) -> dict[str, Any]:
    n = 2_000 if opts.quick else 100_000
    floor = _bytes_per_object(_bare_grain, n)
    async with open_silo(grains=[EmptyGrain]) as silo:
        # Warm up one activation: class tables and caches are not per-activation costs.
        await silo.get_grain(EmptyGrain, -1).ping()
        gc.collect()
        tracemalloc.start()
        before_snap = tracemalloc.take_snapshot()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            # No reference is kept: each one dies after its call (a reference caches its
            # activation, it does not keep the catalog's entry alive or count here).
            await silo.get_grain(EmptyGrain, i).ping()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        after_snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        created = silo.statistics().activations
        assert created == n + 1, created
        ours = (after - before) / n
        top = after_snap.compare_to(before_snap, "lineno")[:8]
        log("  idle-memory: retained bytes per activation by allocation site:")
        for stat in top:
            frame = stat.traceback[0]
            log(f"    {stat.size_diff / n:8.1f}  {frame.filename}:{frame.lineno}")
        del before_snap, after_snap, top
    return result(
        "local-calls",
        "idle-memory",
        ours,
        floor,
        unit="bytes",
        target="< 2048 bytes beyond the grain object",
        n=n,
        beyond_grain_object=round(ours - floor, 1),
    )


async def _activation_rate(opts: Options) -> dict[str, Any]:
    n = 2_000 if opts.quick else 100_000
    round_no = 0

    async def ours() -> float:
        nonlocal round_no
        round_no += 1
        async with open_silo(grains=[EmptyGrain]) as silo:
            await silo.get_grain(EmptyGrain, -1).ping()
            base = round_no * n
            t0 = time.perf_counter()
            for i in range(base, base + n):
                await silo.get_grain(EmptyGrain, i).ping()
            elapsed = time.perf_counter() - t0
            log("  (silo shutdown: deactivating them, not timed)")
        return elapsed

    async def floor() -> float:
        kept: list[PlainEmpty] = []  # the catalog keeps its activations; keep these too
        t0 = time.perf_counter()
        for _ in range(n):
            obj = PlainEmpty()
            kept.append(obj)
            await obj.ping()
        elapsed = time.perf_counter() - t0
        del kept
        return elapsed

    t_ours, t_floor = await best_of(opts.rounds, ours, floor, "activation-rate")
    return result(
        "local-calls",
        "activation-rate",
        n / t_ours,
        n / t_floor,
        unit="activations/s",
        target="> 50000 activations/s",
        n=n,
    )
