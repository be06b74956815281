"""observability: what metrics cost, as throughput with them on against off, same run.

Modes (``ratio`` = on / off; ``ours`` = on, ``floor`` = off):

* ``metrics-local-calls``: sequential calls to an idle local grain (the cheapest call path,
  so the one where counting shows most), one silo with ``SiloConfig.metrics`` on and one
  with it off, rounds alternating.
* ``metrics-streams``: items through the built-in memory stream provider to an implicit
  subscriber grain (publish, pull, deliver as a turn, ack), metrics on against off.

Targets (issue 7): metrics on >= 0.9. Tracing modes come with the tracing plugin.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from _runner import Emit, Options, benchmark, best_of, log, result

from trio_grains import (
    Grain,
    ProviderConfig,
    SequenceToken,
    SiloConfig,
    implicit_subscription,
    open_silo,
)

MODES = ("metrics-local-calls", "metrics-streams")


class CounterGrain(Grain):
    def __init__(self) -> None:
        self.total = 0

    async def incr(self, x: int) -> int:
        self.total += x
        return self.total


DONE: dict[str, int] = {"items": 0}


@implicit_subscription("ticks")
class TickGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        DONE["items"] += 1


@benchmark("observability", modes=MODES)
def observability(opts: Options, emit: Emit) -> None:
    """Metrics on against off: local calls and stream delivery."""

    async def main() -> None:
        if opts.wants("metrics-local-calls"):
            log("observability metrics-local-calls ...")
            emit(await _local_calls(opts))
        if opts.wants("metrics-streams"):
            log("observability metrics-streams ...")
            emit(await _streams(opts))

    trio.run(main)


async def _local_calls(opts: Options) -> dict[str, Any]:
    n = 5_000 if opts.quick else 200_000
    async with (
        open_silo(SiloConfig(metrics=True), grains=[CounterGrain]) as on,
        open_silo(SiloConfig(metrics=False), grains=[CounterGrain]) as off,
    ):
        refs = {"on": on.get_grain(CounterGrain, 0), "off": off.get_grain(CounterGrain, 0)}
        for ref in refs.values():
            await ref.incr(1)  # activated and idle before the clock starts

        def timed(which: str) -> Any:
            ref = refs[which]

            async def run() -> float:
                t0 = time.perf_counter()
                for _ in range(n):
                    await ref.incr(1)
                return time.perf_counter() - t0

            return run

        t_on, t_off = await best_of(opts.rounds, timed("on"), timed("off"), "metrics-local-calls")
    return result(
        "observability",
        "metrics-local-calls",
        n / t_on,
        n / t_off,
        unit="calls/s",
        target=">= 0.9 (ratio)",
        n=n,
    )


async def _streams(opts: Options) -> dict[str, Any]:
    n = 2_000 if opts.quick else 50_000
    keys = 100

    def config(metrics: bool) -> SiloConfig:
        streams = {"default": ProviderConfig(provider="memory", options={"partitions": 8})}
        return SiloConfig(metrics=metrics, streams=streams)

    def timed(metrics: bool) -> Any:
        async def run() -> float:
            DONE["items"] = 0
            async with open_silo(config(metrics), grains=[TickGrain]) as silo:
                provider = silo.get_stream_provider()
                streams = [provider.get_stream("ticks", str(k)) for k in range(keys)]
                t0 = time.perf_counter()
                for start in range(0, n, keys):
                    for i, stream in enumerate(streams[: min(keys, n - start)]):
                        await stream.publish(start + i)
                while DONE["items"] < n:  # noqa: ASYNC110 - a counter, polled
                    await trio.sleep(0.001)
                return time.perf_counter() - t0

        return run

    t_on, t_off = await best_of(opts.rounds, timed(True), timed(False), "metrics-streams")
    return result(
        "observability",
        "metrics-streams",
        n / t_on,
        n / t_off,
        unit="items/s",
        target=">= 0.9 (ratio)",
        n=n,
    )
