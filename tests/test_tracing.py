"""The tracing seam (``SiloConfig.tracing``): which spans the runtime makes, how they nest,
and how their context crosses tasks, silos and stream items.

A small recording :class:`~trio_grains.Tracer` stands in for OpenTelemetry here, so these
tests pin the core's side of the contract; ``plugins/otel/tests`` run the same paths
through the OpenTelemetry SDK.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_grains import (
    Grain,
    PluginError,
    ProviderConfig,
    SerializationError,
    SiloConfig,
    SpanKind,
    TickStatus,
    Tracer,
    hookimpl,
    implicit_subscription,
    open_silo,
    persistent_state,
)
from trio_grains._cluster import envelope as env
from trio_grains._grain import class_info
from trio_grains._logging import GrainsContextFilter
from trio_grains.testing import open_test_cluster

# --- a tracer that records spans --------------------------------------------------------


@attrs.define(eq=False)
class Span:
    name: str
    kind: SpanKind
    attributes: dict[str, Any]
    trace_id: int
    span_id: int
    parent_id: int | None
    error: str | None = None
    ended: bool = False


_CURRENT: contextvars.ContextVar[Span | None] = contextvars.ContextVar("span", default=None)
_ids = itertools.count(1)


class RecordingTracer(Tracer):
    def __init__(self, *, inline_calls: bool = False) -> None:
        self.inline_calls = inline_calls
        self.spans: list[Span] = []

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        *,
        parent: object = None,
        root: bool = False,
    ) -> Iterator[None]:
        above = parent if parent is not None else (None if root else _CURRENT.get())
        assert above is None or isinstance(above, Span)
        span_id = next(_ids)
        trace_id = above.trace_id if above is not None else span_id
        span = Span(
            name,
            kind,
            dict(attributes),
            trace_id,
            span_id,
            None if above is None else above.span_id,
        )
        self.spans.append(span)
        token = _CURRENT.set(span)
        try:
            yield
        except BaseException as exc:
            span.error = type(exc).__name__
            raise
        finally:
            _CURRENT.reset(token)
            span.ended = True

    def current(self) -> object:
        return _CURRENT.get()

    @contextlib.contextmanager
    def resume(self, context: object) -> Iterator[None]:
        assert isinstance(context, Span)
        token = _CURRENT.set(context)
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        span = _CURRENT.get()
        if span is not None:
            headers["traceparent"] = f"00-{span.trace_id:032x}-{span.span_id:016x}-01"

    def extract(self, headers: Mapping[str, str]) -> object:
        value = headers.get("traceparent")
        if value is None:
            return None
        _, trace, span, _ = value.split("-")
        # a stand-in for the remote parent: only its ids matter
        return Span("(remote)", SpanKind.CLIENT, {}, int(trace, 16), int(span, 16), None)

    def trace_id(self) -> str | None:
        span = _CURRENT.get()
        return None if span is None else f"{span.trace_id:032x}"

    # -- what the tests ask ---------------------------------------------------------------

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> Span:
        (span,) = self.named(name)
        return span

    def child_of(self, parent: Span, name: str) -> Span:
        (span,) = [s for s in self.named(name) if s.parent_id == parent.span_id]
        return span


class TracingPlugin:
    """Registers ``recording`` (yielding *tracer*), as a tracing plugin would."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    @hookimpl
    def grains_register_tracers(self, registry: Any) -> None:
        @contextlib.asynccontextmanager
        async def open_recording(_context: Any, _options: Any) -> AsyncIterator[Tracer]:
            yield self.tracer

        registry.register("recording", open_recording)


TRACING = ProviderConfig(provider="recording")


def traced(**changes: Any) -> SiloConfig:
    return SiloConfig(tracing=TRACING, **changes)


# --- grains -------------------------------------------------------------------------------


@attrs.define
class Total:
    n: int = 0


class CounterGrain(Grain):
    state = persistent_state(Total)

    async def add(self, n: int) -> int:
        self.state.state.n += n
        return self.state.state.n

    async def save(self) -> None:
        await self.state.write()

    async def slow_add(self, n: int) -> int:
        await trio.sleep(1)
        return await self.add(n)

    async def fail(self) -> None:
        raise KeyError("nope")

    async def leave(self) -> None:
        self.deactivate_on_idle()

    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        await self.add(1)

    async def remind(self) -> None:
        await self.register_reminder("tick", due=60, period=60)


class CallerGrain(Grain):
    async def call_counter(self, key: str, n: int) -> int:
        return await self.get_grain(CounterGrain, key).add(n)


ITEMS: list[int] = []


@implicit_subscription("ticks")
class TickGrain(Grain):
    async def on_stream_item(self, item: int) -> None:
        ITEMS.append(item)


# --- tests ----------------------------------------------------------------------------------


async def test_without_tracing_the_silo_has_no_tracer_and_plain_method_tables() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        await silo.get_grain(CounterGrain, "a").add(1)
        assert silo.catalog.tracer is None
        assert (
            silo.catalog.method_table(class_info(CounterGrain)) is class_info(CounterGrain).methods
        )


async def test_a_call_in_the_callers_task_is_part_of_the_callers_span() -> None:
    tracer = RecordingTracer()
    async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        await ref.add(1)  # activates it: the activating call is a turn with a span
        with tracer.span("request", SpanKind.SERVER, {}):
            assert await ref.add(2) == 3
    request = tracer.one("request")
    assert [s for s in tracer.spans if s.parent_id == request.span_id] == []
    activation = tracer.one("activate counter")
    assert activation.attributes["trio_grains.grain_id"] == "counter/a"
    first = tracer.one("counter/add")  # the activating call's turn
    assert first.kind is SpanKind.SERVER
    assert first.attributes["rpc.method"] == "add"
    assert first.attributes["rpc.service"] == "counter"


async def test_inline_calls_option_gives_every_call_a_span() -> None:
    tracer = RecordingTracer(inline_calls=True)
    async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        await ref.add(1)
        with tracer.span("request", SpanKind.SERVER, {}):
            await ref.add(2)
            await ref.add(3)
    request = tracer.one("request")
    inside = [s for s in tracer.spans if s.parent_id == request.span_id]
    assert [s.name for s in inside] == ["counter/add", "counter/add"]
    assert all(s.trace_id == request.trace_id and s.ended for s in inside)


async def test_a_queued_call_has_a_caller_span_and_its_turn_continues_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracer = RecordingTracer()
    async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        await ref.add(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.slow_add, 1)  # holds the grain for a second
            await trio.sleep(0.1)
            with tracer.span("request", SpanKind.SERVER, {}):
                assert await ref.add(2) == 3  # waits in the mailbox
    request = tracer.one("request")
    caller = tracer.child_of(request, "counter/add")
    assert caller.kind is SpanKind.CLIENT
    turn = tracer.child_of(caller, "counter/add")  # run by the activation's own task
    assert turn.kind is SpanKind.SERVER
    assert turn.trace_id == request.trace_id


async def test_storage_operations_are_spans_inside_the_turn() -> None:
    tracer = RecordingTracer(inline_calls=True)
    async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        await ref.add(1)
        with tracer.span("request", SpanKind.SERVER, {}):
            await ref.save()
    turn = tracer.child_of(tracer.one("request"), "counter/save")
    write = tracer.child_of(turn, "storage write")
    assert write.kind is SpanKind.CLIENT
    assert write.attributes["db.system"] == "memory"
    assert write.attributes["trio_grains.storage"] == "default"
    assert write.attributes["trio_grains.grain_id"] == "counter/a"
    read = tracer.one("storage read")  # at activation, inside its span
    assert read.parent_id == tracer.one("activate counter").span_id


async def test_a_failing_turn_marks_its_span() -> None:
    tracer = RecordingTracer(inline_calls=True)
    async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]) as silo:
        with pytest.raises(KeyError):
            await silo.get_grain(CounterGrain, "a").fail()
    assert tracer.one("counter/fail").error == "KeyError"


async def test_deactivation_and_reminder_ticks_start_traces_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracer = RecordingTracer()
    config = traced(minimum_reminder_period=60)
    async with open_silo(
        config, grains=[CounterGrain], plugins=[TracingPlugin(tracer)], wall_clock=trio.current_time
    ) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        with tracer.span("request", SpanKind.SERVER, {}):
            await ref.remind()
            await ref.leave()
        await trio.sleep(1)
        assert tracer.one("deactivate counter").attributes["trio_grains.reason"]
        await trio.sleep(61)  # the reminder fires, activating the grain again
        assert tracer.named("reminder tick")
    deactivate = tracer.named("deactivate counter")[0]
    assert deactivate.parent_id is None  # not part of the request that asked for it
    tick = tracer.named("reminder tick")[0]
    assert tick.parent_id is None
    assert tick.attributes["trio_grains.grain_id"] == "counter/a"
    assert any(s.parent_id == tick.span_id for s in tracer.named("activate counter"))


async def test_a_call_to_another_silo_carries_its_trace_in_the_envelope() -> None:
    tracer = RecordingTracer()
    plugin = TracingPlugin(tracer)
    async with open_test_cluster(
        2, grains=[CounterGrain, CallerGrain], config=traced(), plugins=[plugin]
    ) as cluster:
        client = cluster.client
        with tracer.span("request", SpanKind.SERVER, {}):
            for key in "abcdef":  # some of them land on each silo
                assert await client.get_grain(CounterGrain, key).add(1) == 1
    request = tracer.one("request")
    calls = [s for s in tracer.spans if s.parent_id == request.span_id]
    assert len(calls) == 6
    assert {s.kind for s in calls} == {SpanKind.CLIENT}
    assert all(s.attributes["trio_grains.target_silo"].startswith("silo-") for s in calls)
    for call in calls:  # the silo's turn is the child of the client's span, same trace
        turn = tracer.child_of(call, "counter/add")
        assert turn.kind is SpanKind.SERVER
        assert turn.trace_id == request.trace_id


async def test_stream_items_carry_the_publishers_trace_to_their_consumer() -> None:
    ITEMS.clear()
    tracer = RecordingTracer(inline_calls=True)
    streams = {"default": ProviderConfig(provider="memory")}
    async with open_silo(
        traced(streams=streams), grains=[TickGrain], plugins=[TracingPlugin(tracer)]
    ) as silo:
        stream = silo.get_stream_provider().get_stream("ticks", "k1")
        with tracer.span("request", SpanKind.SERVER, {}):
            await stream.publish(7)
        with trio.fail_after(5):
            while not ITEMS:  # noqa: ASYNC110 - the handler appends
                await trio.sleep(0.01)
    publish = tracer.child_of(tracer.one("request"), "publish ticks")
    assert publish.kind is SpanKind.PRODUCER
    assert publish.attributes["messaging.destination.name"] == "ticks"
    process = tracer.child_of(publish, "process ticks")  # in another task, via the headers
    assert process.kind is SpanKind.CONSUMER
    assert process.attributes["messaging.delivery_attempt"] == 1
    assert process.attributes["trio_grains.subscriber"] == "tick/k1.on_stream_item"
    assert tracer.named("tick/on_stream_item")[-1].trace_id == publish.trace_id


async def test_log_records_carry_the_trace_id() -> None:
    tracer = RecordingTracer()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(GrainsContextFilter())
    logger = logging.getLogger("test_tracing")
    logger.addHandler(handler)
    try:
        async with open_silo(traced(), grains=[CounterGrain], plugins=[TracingPlugin(tracer)]):
            with tracer.span("request", SpanKind.SERVER, {}):
                logger.warning("inside")
            logger.warning("outside")
        logger.warning("no silo")
    finally:
        logger.removeHandler(handler)
    request = tracer.one("request")
    assert [r.trace_id for r in records] == [f"{request.trace_id:032x}", "-", "-"]  # type: ignore[attr-defined]


async def test_an_unknown_tracing_provider_fails_at_start_listing_the_known_ones() -> None:
    config = SiloConfig(tracing=ProviderConfig(provider="recordng"))
    with pytest.raises(PluginError, match=r"unknown tracing provider 'recordng'.*'recording'"):
        async with open_silo(config, plugins=[TracingPlugin(RecordingTracer())]):
            pass


async def test_a_factory_that_yields_no_tracer_is_named() -> None:
    class Wrong:
        @hookimpl
        def grains_register_tracers(self, registry: Any) -> None:
            @contextlib.asynccontextmanager
            async def open_wrong(_context: Any, _options: Any) -> AsyncIterator[object]:
                yield object()

            registry.register("wrong", open_wrong)

    config = SiloConfig(tracing=ProviderConfig(provider="wrong"))
    with pytest.raises(PluginError, match=r"'wrong' yielded .* not a trio_grains\.Tracer"):
        async with open_silo(config, plugins=[Wrong()]):
            pass


def test_the_envelope_carries_trace_headers_and_rejects_malformed_ones() -> None:
    headers = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    limits = env.Limits(lambda address: address == "reply")
    data = env.encode_request(1, "reply", "counter/a", "add", b"", None, 0, 0, headers)
    request = env.decode(data, limits)
    assert isinstance(request, env.Request)
    assert request.trace == headers
    forwarded = env.decode(request.encode(), limits)  # forwarded as is
    assert isinstance(forwarded, env.Request)
    assert forwarded.trace == headers
    bad = env.encode_request(1, "reply", "counter/a", "add", b"", None, 0, 0, {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(SerializationError, match="malformed request"):
        env.decode(bad, limits)
