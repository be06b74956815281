"""One trace from ``client.publish(order)`` to the state writes the order caused: the
reference application on two silos over a real nats-server and JetStream, traced by the
``otel`` provider into OpenTelemetry's in-memory exporter.

The trace context crosses JetStream in the message headers and the silos in the call
envelopes; nothing here is a mock of either.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from trio_grains_orders import app

from trio_grains import ClientConfig, ProviderConfig, SiloConfig, open_client
from trio_grains.testing import open_test_cluster

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def order(oid: str, customer: str) -> app.Order:
    lines = (app.OrderLine("sku-1", 2, 150), app.OrderLine("sku-2", 1, 99))
    amount = sum(line.quantity * line.price for line in lines)
    return app.Order(id=oid, customer=customer, lines=lines, amount=amount, created=NOW)


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider, spans
    provider.shutdown()


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names of *span*'s ancestors, nearest first."""
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_a_trace_follows_an_order_from_publish_to_its_state_writes(
    nats_url: str, tmp_path: Path, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    tracing = ProviderConfig(provider="otel", options={"tracer_provider": provider})
    tag = uuid.uuid4().hex[:8]
    clustering = ProviderConfig(provider="nats", options={"servers": nats_url})
    streams = {
        "default": ProviderConfig(
            provider="jetstream",
            options={"servers": [nats_url], "prefix": f"t{tag}", "partitions": 2},
        )
    }
    config = SiloConfig(
        cluster_id=f"t{tag}",
        heartbeat_interval=0.2,
        dead_after=1.0,
        storage={
            "default": ProviderConfig(provider="sqlite", options={"path": str(tmp_path / "o.db")})
        },
        streams=streams,
        tracing=tracing,
    )
    async with open_test_cluster(
        2, grains=app.GRAINS, clustering=clustering, config=config, client=False
    ):
        client_config = ClientConfig(
            cluster_id=config.cluster_id, clustering=clustering, streams=streams, tracing=tracing
        )
        async with open_client(client_config) as client:
            stream_provider = client.get_stream_provider()
            checkouts = {}
            for i, customer in enumerate(["ann", "bob", "cid", "dee"]):
                oid = f"o{tag}{i}"
                with provider.get_tracer("shop").start_as_current_span("checkout") as root:
                    await stream_provider.get_stream("orders", oid).publish(order(oid, customer))
                checkouts[oid] = (customer, root.get_span_context().trace_id)
            with trio.fail_after(30):
                for oid in checkouts:
                    ref = client.get_grain(app.IOrder, oid)
                    while (await ref.status()).status != "processed":  # noqa: ASYNC110 - polled
                        await trio.sleep(0.05)

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    for oid, (customer, trace_id) in checkouts.items():
        trace = [s for s in finished if s.context.trace_id == trace_id]
        (publish,) = [s for s in trace if s.name == "publish orders"]
        assert publish.kind is SpanKind.PRODUCER
        assert ancestors(publish, by_id) == ["checkout"]
        (process,) = [s for s in trace if s.name == "process orders"]  # on a silo
        assert process.kind is SpanKind.CONSUMER
        assert process.parent is not None
        assert process.parent.span_id == publish.context.span_id  # through JetStream
        assert process.attributes is not None
        assert process.attributes["trio_grains.subscriber"] == f"order/{oid}.on_stream_item"
        writes = {
            str(s.attributes["trio_grains.grain_id"]): s
            for s in trace
            if s.name == "storage write" and s.attributes is not None
        }
        # the order's own state write (received, then processed) and the customer's,
        # wherever the customer grain lives: all in the trace that began at checkout
        assert f"order/{oid}" in writes
        assert f"customer/{customer}" in writes
        for write in writes.values():
            assert ancestors(write, by_id)[-3:] == ["process orders", "publish orders", "checkout"]
        # activated by this delivery, or by the test's polling if that came first (on
        # two silos at once, one of them loses the race: its span says so)
        activations = [
            s
            for s in finished
            if s.name == "activate order"
            and s.attributes is not None
            and s.attributes["trio_grains.grain_id"] == f"order/{oid}"
        ]
        won = [s for s in activations if s.status.is_ok]
        assert len(won) == 1, activations
        assert won[0].attributes is not None
        assert str(won[0].attributes["trio_grains.silo_id"]).startswith("silo-")
