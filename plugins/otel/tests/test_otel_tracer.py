"""The ``otel`` tracing provider at the tracer level (no silo): spans recorded by the SDK's
``InMemorySpanExporter``, their parents, kinds, attributes and statuses, the context
carried across Trio tasks and through W3C headers, the options, and a provider the plugin
builds exporting over OTLP/HTTP to a receiver in the test."""

from __future__ import annotations

import functools
import gzip
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import cattrs
import pytest
import trio
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from trio_grains_otel import ATTR_CANCELLED, OtelTracer, open_otel_tracer

import trio_grains
from trio_grains import ConfigError, ProviderContext, SpanKind
from trio_grains._plugins import load_plugins

CONTEXT = ProviderContext(
    name="tracing", silo_name="silo-7", cluster_id="test", converter=cattrs.Converter()
)
ATTRS = {"rpc.system": "trio_grains", "rpc.method": "add"}


@attrs.define
class Recorded:
    """An SDK tracer provider exporting to memory, and the ``otel`` tracer on it."""

    tracer: OtelTracer
    exporter: InMemorySpanExporter

    def spans(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.exporter.get_finished_spans()}


@pytest.fixture
async def recorded() -> AsyncIterator[Recorded]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with open_otel_tracer(CONTEXT, {"tracer_provider": provider}) as tracer:
        yield Recorded(tracer, exporter)
    provider.shutdown()


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


# --- spans -----------------------------------------------------------------------------


async def test_nested_span_is_a_child_of_the_enclosing_one(recorded: Recorded) -> None:
    tracer = recorded.tracer
    with tracer.span("outer", SpanKind.INTERNAL, {}):
        with tracer.span("inner", SpanKind.INTERNAL, {}):
            pass
        with tracer.span("sibling", SpanKind.INTERNAL, {}):
            pass
    spans = recorded.spans()
    assert parent_id(spans["outer"]) is None
    assert parent_id(spans["inner"]) == span_id(spans["outer"])
    assert parent_id(spans["sibling"]) == span_id(spans["outer"])
    assert trace_id(spans["inner"]) == trace_id(spans["outer"])
    assert tracer.current() is None  # the outer span is no longer current


async def test_root_starts_a_new_trace(recorded: Recorded) -> None:
    tracer = recorded.tracer
    with (
        tracer.span("call", SpanKind.SERVER, {}),
        tracer.span("deactivate Counter", SpanKind.INTERNAL, {}, root=True),
        tracer.span("storage clear", SpanKind.CLIENT, {}),
    ):
        pass
    spans = recorded.spans()
    root = spans["deactivate Counter"]
    assert parent_id(root) is None
    assert trace_id(root) != trace_id(spans["call"])
    assert parent_id(spans["storage clear"]) == span_id(root)


async def test_attributes_scope_and_kinds(recorded: Recorded) -> None:
    for kind in SpanKind:
        with recorded.tracer.span(f"span {kind.name}", kind, ATTRS):
            pass
    spans = recorded.spans()
    for kind in SpanKind:
        span = spans[f"span {kind.name}"]
        assert span.kind is trace.SpanKind[kind.name]
        assert dict(span.attributes or {}) == ATTRS
        assert span.status.status_code is StatusCode.UNSET
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "trio_grains"
        assert span.instrumentation_scope.version == trio_grains.__version__


async def test_an_exception_is_recorded_and_fails_the_span(recorded: Recorded) -> None:
    with (
        pytest.raises(ValueError, match="no such order"),
        recorded.tracer.span("Orders/get", SpanKind.SERVER, ATTRS),
    ):
        raise ValueError("no such order")
    span = recorded.spans()["Orders/get"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: no such order"
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert ATTR_CANCELLED not in (span.attributes or {})
    assert span.end_time is not None


async def test_a_long_exception_message_is_cut_in_the_status(recorded: Recorded) -> None:
    with pytest.raises(RuntimeError), recorded.tracer.span("s", SpanKind.INTERNAL, {}):
        raise RuntimeError("x" * 1000)
    description = recorded.spans()["s"].status.description
    assert description is not None
    assert len(description) < 250
    assert description.startswith("RuntimeError: xxx")
    assert description.endswith("...")


async def test_a_cancellation_fails_the_span_without_an_exception_event(
    recorded: Recorded,
) -> None:
    with (
        trio.CancelScope() as scope,
        recorded.tracer.span("Slow/wait", SpanKind.CLIENT, ATTRS),
    ):
        scope.cancel()
        await trio.sleep(1)  # raises trio.Cancelled
    assert scope.cancelled_caught
    span = recorded.spans()["Slow/wait"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "cancelled"
    assert (span.attributes or {})[ATTR_CANCELLED] is True
    assert list(span.events) == []


async def test_a_group_of_cancellations_is_a_cancellation(recorded: Recorded) -> None:
    async def sleeper() -> None:
        await trio.sleep(1)

    with (
        trio.CancelScope() as scope,
        recorded.tracer.span("fan-out", SpanKind.INTERNAL, {}),
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sleeper)
            nursery.start_soon(sleeper)
            scope.cancel()  # the nursery raises a group of trio.Cancelled
    assert scope.cancelled_caught
    span = recorded.spans()["fan-out"]
    assert span.status.description == "cancelled"
    assert list(span.events) == []


async def test_another_base_exception_is_named_in_the_status(recorded: Recorded) -> None:
    with (
        pytest.raises(KeyboardInterrupt),
        recorded.tracer.span("interrupted", SpanKind.INTERNAL, {}),
    ):
        raise KeyboardInterrupt
    span = recorded.spans()["interrupted"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyboardInterrupt"
    assert (span.attributes or {})[ATTR_CANCELLED] is True
    assert list(span.events) == []


# --- the trace context -----------------------------------------------------------------


async def test_no_span_no_context(recorded: Recorded) -> None:
    tracer = recorded.tracer
    assert tracer.current() is None
    assert tracer.trace_id() is None
    headers: dict[str, str] = {}
    tracer.inject(headers)
    assert headers == {}
    assert tracer.extract({}) is None
    assert tracer.extract({"traceparent": "garbage"}) is None
    assert tracer.extract({"baggage": "k=v"}) is None


async def test_trace_id_is_32_lowercase_hex_digits(recorded: Recorded) -> None:
    with recorded.tracer.span("s", SpanKind.INTERNAL, {}):
        found = recorded.tracer.trace_id()
    assert found is not None
    assert len(found) == 32
    assert found == found.lower()
    assert int(found, 16) == trace_id(recorded.spans()["s"])


async def test_headers_carry_the_context_to_a_remote_span(recorded: Recorded) -> None:
    tracer = recorded.tracer
    headers: dict[str, str] = {}
    with tracer.span("Orders/add", SpanKind.CLIENT, ATTRS):
        tracer.inject(headers)
    assert set(headers) == {"traceparent"}
    assert headers["traceparent"].startswith("00-")
    # the other silo: no span of its own, the caller's context from the envelope
    remote = tracer.extract(headers)
    assert remote is not None
    with (
        tracer.span("Orders/add", SpanKind.SERVER, ATTRS, parent=remote),
        tracer.span("storage write", SpanKind.CLIENT, {}),
    ):
        pass
    client, storage, server = recorded.exporter.get_finished_spans()  # in the order they end
    assert (client.kind, server.kind) == (trace.SpanKind.CLIENT, trace.SpanKind.SERVER)
    assert trace_id(server) == trace_id(client)
    assert parent_id(server) == span_id(client)
    assert server.parent is not None
    assert server.parent.is_remote
    assert parent_id(storage) == span_id(server)


async def test_explicit_parent_wins_over_the_current_span(recorded: Recorded) -> None:
    tracer = recorded.tracer
    with tracer.span("a", SpanKind.INTERNAL, {}):
        a = tracer.current()
    assert a is not None
    with tracer.span("b", SpanKind.INTERNAL, {}), tracer.span("c", SpanKind.INTERNAL, {}, parent=a):
        pass
    spans = recorded.spans()
    assert parent_id(spans["c"]) == span_id(spans["a"])


async def test_current_and_resume_carry_the_context_to_another_task(recorded: Recorded) -> None:
    tracer = recorded.tracer
    send, receive = trio.open_memory_channel[object](1)
    seen: dict[str, object] = {}

    async def caller() -> None:
        with tracer.span("Counter/add", SpanKind.CLIENT, ATTRS):
            context = tracer.current()
            assert context is not None
            await send.send(context)
            await trio.sleep(0.01)  # still open while the turn runs

    async def turn() -> None:
        context = await receive.receive()
        seen["before"] = tracer.current()  # this task has no span of its own
        with tracer.resume(context):
            seen["trace_id"] = tracer.trace_id()
            with tracer.span("Counter/add", SpanKind.SERVER, ATTRS):
                pass
        seen["after"] = tracer.current()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(turn)
        nursery.start_soon(caller)
    server, client = recorded.exporter.get_finished_spans()  # in the order they end
    assert (client.kind, server.kind) == (trace.SpanKind.CLIENT, trace.SpanKind.SERVER)
    assert parent_id(server) == span_id(client)
    assert seen["before"] is None
    assert seen["after"] is None
    assert seen["trace_id"] == f"{trace_id(client):032x}"


async def test_resume_takes_a_context_only(recorded: Recorded) -> None:
    with pytest.raises(TypeError, match=r"current\(\) or extract\(\)"):
        recorded.tracer.resume("00-abc")


# --- the factory and its options -------------------------------------------------------


async def test_the_plugin_registers_otel() -> None:
    plugins = load_plugins()
    assert plugins.tracers.get("otel") is open_otel_tracer
    assert plugins.tracers.plugin_of("otel") == "otel"


async def test_without_options_the_global_provider_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    async with open_otel_tracer(CONTEXT, {}) as tracer:
        assert tracer.inline_calls is False
        with tracer.span("global", SpanKind.INTERNAL, {}):
            pass
    assert [span.name for span in exporter.get_finished_spans()] == ["global"]


async def test_inline_calls_option() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    options = {"tracer_provider": provider, "inline_calls": True}
    async with open_otel_tracer(CONTEXT, options) as tracer:
        assert tracer.inline_calls is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"exporters": "otlp"}, r"unknown option 'exporters'; the options are tracer_provider"),
        ({"tracer_provider": "sdk"}, r"tracer_provider must be an opentelemetry"),
        ({"exporter": "jaeger"}, r"exporter must be one of 'otlp', 'console', got 'jaeger'"),
        ({"exporter": "otlp", "sample_ratio": 0}, r"sample_ratio must be a number greater than 0"),
        ({"exporter": "otlp", "sample_ratio": 1.5}, r"sample_ratio must be"),
        ({"exporter": "otlp", "sample_ratio": True}, r"sample_ratio must be"),
        ({"exporter": "otlp", "sample_ratio": "all"}, r"sample_ratio must be"),
        ({"exporter": "otlp", "endpoint": "localhost:4318"}, r"endpoint must be an http\(s\) URL"),
        ({"exporter": "console", "endpoint": "http://x:4318"}, r'exporter = "otlp" only'),
        ({"exporter": "otlp", "service_name": ""}, r"service_name must be a non-empty string"),
        ({"inline_calls": "yes"}, r"inline_calls must be true or false, got 'yes'"),
        ({"sample_ratio": 0.5}, r'sample_ratio configures .* set exporter = "otlp"'),
        ({"endpoint": "http://x:4318/v1/traces"}, r"endpoint configures .* set exporter"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_otel_tracer(CONTEXT, options)


def test_tracer_provider_with_options_for_a_built_one() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    options = {"tracer_provider": provider, "exporter": "otlp", "sample_ratio": 0.5}
    with pytest.raises(
        ConfigError, match=r"exporter, sample_ratio configure a tracer provider the plugin builds"
    ):
        open_otel_tracer(CONTEXT, options)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        open_otel_tracer(CONTEXT, {"bogus": 1, "exporter": "x", "inline_calls": 1})
    message = str(info.value)
    assert "'bogus'" in message
    assert "exporter must be" in message
    assert "inline_calls must be" in message


def test_a_missing_exporter_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"pip install 'trio-grains-otel\[otlp\]'"):
        open_otel_tracer(CONTEXT, {"exporter": "otlp"})
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"pip install 'trio-grains-otel\[sdk\]'"):
        open_otel_tracer(CONTEXT, {"exporter": "console"})


async def test_console_exporter_builds_flushes_and_shuts_down(
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = {"exporter": "console", "service_name": "orders", "sample_ratio": 1}
    async with open_otel_tracer(CONTEXT, options) as tracer:
        with tracer.span("printed", SpanKind.INTERNAL, ATTRS):
            pass
        assert capsys.readouterr().out == ""  # batched: not exported yet
    span = json.loads(capsys.readouterr().out)
    assert span["name"] == "printed"
    assert span["resource"]["attributes"]["service.name"] == "orders"
    assert span["resource"]["attributes"]["service.instance.id"] == "silo-7"
    # the provider is shut down: a span started now is not exported
    with tracer.span("late", SpanKind.INTERNAL, {}):
        pass
    assert capsys.readouterr().out == ""


# --- OTLP end to end -------------------------------------------------------------------


@attrs.define
class Receiver:
    """A minimal OTLP/HTTP receiver: records each request's path, headers and body."""

    requests: list[tuple[str, dict[str, str], bytes]] = attrs.Factory(list)

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        while True:  # one connection may carry several requests (keep-alive)
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                data = await stream.receive_some()
                if not data:
                    return
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            self.requests.append((request_line, headers, body))
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 0\r\n\r\n"
            )

    def spans(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) of every span received."""
        for _, _, body in self.requests:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = {
                    kv.key: kv.value.string_value for kv in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource, span


async def test_otlp_exporter_end_to_end(nursery: trio.Nursery) -> None:
    receiver = Receiver()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    options = {
        "exporter": "otlp",
        "endpoint": f"http://127.0.0.1:{port}/v1/traces",
        "service_name": "orders-e2e",
    }
    async with open_otel_tracer(CONTEXT, options) as tracer:
        with (
            tracer.span("Orders/add", SpanKind.SERVER, ATTRS),
            tracer.span("storage write", SpanKind.CLIENT, {}),
        ):
            pass
        assert receiver.requests == []  # batched until the factory's block is left
    request_line, headers, _ = receiver.requests[0]
    assert request_line == "POST /v1/traces HTTP/1.1"
    assert headers["content-type"] == "application/x-protobuf"
    received = {span.name: (resource, span) for resource, span in receiver.spans()}
    assert set(received) == {"Orders/add", "storage write"}
    resource, server = received["Orders/add"]
    assert resource["service.name"] == "orders-e2e"
    assert resource["service.instance.id"] == "silo-7"
    assert {kv.key: kv.value.string_value for kv in server.attributes} == ATTRS
    _, storage = received["storage write"]
    assert storage.parent_span_id == server.span_id
    assert storage.trace_id == server.trace_id
