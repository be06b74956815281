"""observability: what metrics and tracing cost, as throughput on against off, same run.

Modes (``ratio`` = on / off; ``ours`` = on, ``floor`` = off):

* ``metrics-local-calls``: sequential calls to an idle local grain (the cheapest call path,
  so the one where counting shows most), one silo with ``SiloConfig.metrics`` on and one
  with it off, rounds alternating.
* ``metrics-streams``: items through the built-in memory stream provider to an implicit
  subscriber grain (publish, pull, deliver as a turn, ack), metrics on against off.

* ``tracing-local-calls``: the local calls above, made inside a traced request, on a silo
  with tracing on (the ``otel`` provider on OpenTelemetry's SDK: a batch span processor
  and an exporter that drops the spans, so the export's network cost is left out) against
  one without. Calls that run in the caller's task have no span of their own.
* ``tracing-local-calls-inline``: the same with ``inline_calls``: a span per call (no
  target: it shows what a span costs against the cheapest call).
* ``tracing-streams``: the stream items above with tracing on: a publish span and a
  process span per item, their context in the item's headers.

Targets (issue 7): metrics on >= 0.9, tracing on >= 0.6.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import trio
from _runner import Emit, Options, benchmark, best_of, log, result

from trio_grains import (
    Grain,
    ProviderConfig,
    SequenceToken,
    Silo,
    SiloConfig,
    implicit_subscription,
    open_silo,
)

MODES = (
    "metrics-local-calls",
    "metrics-streams",
    "tracing-local-calls",
    "tracing-local-calls-inline",
    "tracing-streams",
)


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
        for mode in ("tracing-local-calls", "tracing-local-calls-inline"):
            if opts.wants(mode):
                log(f"observability {mode} ...")
                emit(await _traced_local_calls(opts, mode))
        if opts.wants("tracing-streams"):
            log("observability tracing-streams ...")
            emit(await _streams(opts, "tracing-streams"))

    trio.run(main)


async def _local_calls(opts: Options) -> dict[str, Any]:
    async with (
        open_silo(SiloConfig(metrics=True), grains=[CounterGrain]) as on,
        open_silo(SiloConfig(metrics=False), grains=[CounterGrain]) as off,
    ):
        return await _compare_calls(opts, "metrics-local-calls", on, off, ">= 0.9 (ratio)")


async def _traced_local_calls(opts: Options, mode: str) -> dict[str, Any]:
    tracing = _tracing(inline_calls=mode == "tracing-local-calls-inline")
    target = ">= 0.6 (ratio)" if mode == "tracing-local-calls" else "none (a span per call)"
    async with (
        open_silo(SiloConfig(tracing=tracing), grains=[CounterGrain]) as on,
        open_silo(SiloConfig(), grains=[CounterGrain]) as off,
    ):
        request = _request_span(tracing)
        return await _compare_calls(opts, mode, on, off, target, around_on=request)


async def _compare_calls(
    opts: Options,
    mode: str,
    on: Silo,
    off: Silo,
    target: str,
    *,
    around_on: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, Any]:
    n = 5_000 if opts.quick else 200_000
    if mode == "tracing-local-calls-inline":
        n //= 10  # a span per call: tens of microseconds each
    refs = {"on": on.get_grain(CounterGrain, 0), "off": off.get_grain(CounterGrain, 0)}
    for ref in refs.values():
        await ref.incr(1)  # activated and idle before the clock starts

    def timed(which: str) -> Any:
        ref = refs[which]
        around = around_on if which == "on" else contextlib.nullcontext

        async def run() -> float:
            t0 = time.perf_counter()
            with around():  # the caller's own span (tracing modes)
                for _ in range(n):
                    await ref.incr(1)
            return time.perf_counter() - t0

        return run

    t_on, t_off = await best_of(opts.rounds, timed("on"), timed("off"), mode)
    return result("observability", mode, n / t_on, n / t_off, unit="calls/s", target=target, n=n)


def _tracing(*, inline_calls: bool = False) -> ProviderConfig:
    """The ``otel`` tracing provider on an SDK tracer provider whose spans go nowhere."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    options = {"tracer_provider": provider, "inline_calls": inline_calls}
    return ProviderConfig(provider="otel", options=options)


def _request_span(tracing: ProviderConfig) -> Callable[[], AbstractContextManager[Any]]:
    tracer = tracing.options["tracer_provider"].get_tracer("benchmark")
    return lambda: tracer.start_as_current_span("request")


async def _streams(opts: Options, mode: str = "metrics-streams") -> dict[str, Any]:
    n = 2_000 if opts.quick else 50_000
    keys = 100
    streams = {"default": ProviderConfig(provider="memory", options={"partitions": 8})}
    if mode == "metrics-streams":
        on_config = SiloConfig(metrics=True, streams=streams)
        target = ">= 0.9 (ratio)"
    else:
        on_config = SiloConfig(tracing=_tracing(), streams=streams)
        target = ">= 0.6 (ratio)"
    off_config = SiloConfig(streams=streams)

    def timed(config: SiloConfig) -> Any:
        async def run() -> float:
            DONE["items"] = 0
            async with open_silo(config, grains=[TickGrain]) as silo:
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

    t_on, t_off = await best_of(opts.rounds, timed(on_config), timed(off_config), mode)
    return result("observability", mode, n / t_on, n / t_off, unit="items/s", target=target, n=n)
