"""Tracing: the seam between the runtime and a tracing provider (OpenTelemetry, ...).

The core names the spans and decides where they begin and end; a :class:`Tracer` (from a
plugin: ``[tracing] provider = "otel"``) records them. Off by default: then the silo has
no tracer and nothing here runs.

Spans, by where they come from (``name`` / kind):

* a call that leaves the caller's task (queued behind a busy grain, or sent to another
  silo): ``<grain type>/<method>`` CLIENT around the wait, in the caller's task;
* the turn that runs it: ``<grain type>/<method>`` SERVER, by a wrapper in the silo's
  method table (:func:`traced_methods`). A call that runs in the caller's own task (an
  idle local grain: the in-task fast path) is, to a trace, a function call: it has no span
  unless ``Tracer.inline_calls`` is set (a span costs tens of microseconds in
  OpenTelemetry's Python SDK; such a call costs about one);
* ``activate <grain type>`` (inside the trace of the call that activated it) and
  ``deactivate <grain type>`` (a trace of its own);
* ``publish <namespace>`` PRODUCER, ``process <namespace>`` CONSUMER for stream items
  (the trace context travels in the item's headers, so JetStream carries it);
* ``storage <read|write|clear>`` CLIENT (:class:`TracedStorage`);
* ``reminder <name>`` for a reminder tick (a trace of its own).

The trace context crosses silos in the request envelope (W3C ``traceparent`` /
``tracestate`` headers, :meth:`Tracer.inject` / :meth:`Tracer.extract`); a queued call
carries the caller's context (:meth:`Tracer.current`) to the turn that runs it
(:meth:`Tracer.resume`).

May import: layers 0-3 (values up to grains, calls, storage and serialization) and metrics.
Type names only from: ``_streams.model`` (:func:`stream_attributes` takes a ``StreamId``).
"""

from __future__ import annotations

import abc
import contextlib
import enum
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from ._config import ProviderConfig
from ._exceptions import PluginError
from ._ids import GrainId
from ._logging import trace_ids_from
from ._methods import MethodInfo
from ._registry import ProviderContext, ProviderRegistry, TracerFactory
from ._storage import GrainStorage, StoredState

if TYPE_CHECKING:
    from ._streams.model import StreamId

__all__ = [
    "ATTR_GRAIN_ID",
    "ATTR_SILO_ID",
    "Attributes",
    "SpanKind",
    "TraceContext",
    "TracedStorage",
    "Tracer",
    "call_attributes",
    "open_tracer",
    "stream_attributes",
    "traced_methods",
]

ATTR_GRAIN_ID = "trio_grains.grain_id"
ATTR_SILO_ID = "trio_grains.silo_id"
RPC_SYSTEM = "trio_grains"

Attributes: TypeAlias = Mapping[str, str | int | float | bool]
"""Span attributes: OpenTelemetry's attribute values (no ``None``)."""

TraceContext: TypeAlias = object
"""A trace context as the tracer represents it (opaque to the runtime): what
:meth:`Tracer.current` and :meth:`Tracer.extract` return and a span's *parent* takes."""


class SpanKind(enum.Enum):
    """OpenTelemetry's span kinds (the runtime's names for them)."""

    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


class Tracer(abc.ABC):
    """What the runtime asks of a tracing provider.

    A tracer factory (registered through ``grains_register_tracers``) yields one for the
    lifetime of a silo or client. Every method is called on the silo's Trio thread and
    must not block; spans are exported by the provider's own machinery.
    """

    #: give calls that run in the caller's own task (an idle local grain) a span of
    #: their own; off, they are part of the caller's span (see the module docstring)
    inline_calls: bool = False

    @abc.abstractmethod
    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        *,
        parent: TraceContext | None = None,
        root: bool = False,
    ) -> AbstractContextManager[None]:
        """A span around the block, current inside it.

        Its parent is *parent* if given, else none if *root*, else the current span. An
        exception leaving the block is recorded on the span and marks it failed; a
        cancellation marks it failed without an exception event.
        """

    @abc.abstractmethod
    def current(self) -> TraceContext | None:
        """The current trace context, to continue in another task (``None``: no span)."""

    @abc.abstractmethod
    def resume(self, context: TraceContext) -> AbstractContextManager[None]:
        """Make *context* (from :meth:`current` or :meth:`extract`) current in the block."""

    @abc.abstractmethod
    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Write the current trace context into *headers* (W3C ``traceparent`` and
        ``tracestate``, and whatever else the provider propagates, e.g. ``baggage``)."""

    @abc.abstractmethod
    def extract(self, headers: Mapping[str, str]) -> TraceContext | None:
        """The trace context *headers* carry (``None`` if they carry none)."""

    def trace_id(self) -> str | None:
        """The current trace's id as 32 hex digits, for log records (``None``: none)."""
        return None


@contextlib.asynccontextmanager
async def open_tracer(
    registry: ProviderRegistry[TracerFactory],
    config: ProviderConfig | None,
    context: ProviderContext,
) -> AsyncIterator[Tracer | None]:
    """The configured tracing provider's tracer while the block runs (``None``: none is
    configured); log records take their trace ids from it."""
    if config is None:
        yield None
        return
    factory = registry.get(config.provider)
    async with factory(context, dict(config.options)) as tracer:
        if not isinstance(tracer, Tracer):
            raise PluginError(
                f"tracing provider {config.provider!r} yielded {tracer!r}, which is not a "
                "trio_grains.Tracer: its factory must yield the tracer"
            )
        with trace_ids_from(tracer.trace_id):
            yield tracer


def call_attributes(grain_type: str, method: str, grain_id: object) -> dict[str, str]:
    """The attributes of a grain call's spans (OpenTelemetry's RPC conventions)."""
    return {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": grain_type,
        "rpc.method": method,
        ATTR_GRAIN_ID: str(grain_id),
    }


def stream_attributes(provider: str, stream_id: StreamId) -> dict[str, str]:
    """The attributes of a stream item's spans (OpenTelemetry's messaging conventions)."""
    return {
        "messaging.system": RPC_SYSTEM,
        "messaging.destination.name": stream_id.namespace,
        "trio_grains.stream_provider": provider,
        "trio_grains.stream_key": stream_id.key,
    }


def _traced(
    func: Callable[..., Awaitable[Any]], tracer: Tracer, grain_type: str, method: str
) -> Callable[..., Awaitable[Any]]:
    name = f"{grain_type}/{method}"
    server = SpanKind.SERVER

    @functools.wraps(func)  # the grain's name, annotations and signature (the codec's)
    async def turn(grain: Any, *args: Any, **kwargs: Any) -> Any:
        attributes = call_attributes(grain_type, method, grain._activation.grain_id)
        with tracer.span(name, server, attributes):
            return await func(grain, *args, **kwargs)

    return turn


def traced_methods(
    methods: Mapping[str, MethodInfo], tracer: Tracer, grain_type: str
) -> dict[str, MethodInfo]:
    """*methods* whose turns are spans: those through the mailbox or from another silo
    (``func``) always, those the in-task fast path runs (``inline``) when the tracer's
    ``inline_calls`` is set."""
    table = {}
    for name, method in methods.items():
        func = _traced(method.func, tracer, grain_type, name)
        inline = func if tracer.inline_calls else method.inline
        table[name] = attrs.evolve(method, func=func, inline=inline)
    return table


class TracedStorage(GrainStorage):
    """A storage provider whose every operation is a span (``storage <operation>``)."""

    def __init__(self, inner: GrainStorage, name: str, provider: str, tracer: Tracer) -> None:
        self.inner = inner
        self._name = name
        self._provider = provider
        self._tracer = tracer

    def _span(self, operation: str, state_name: str, grain_id: GrainId) -> Any:
        attributes = {
            "db.system": self._provider,
            "db.operation.name": operation,
            "trio_grains.storage": self._name,
            "trio_grains.state": state_name,
            ATTR_GRAIN_ID: str(grain_id),
        }
        return self._tracer.span(f"storage {operation}", SpanKind.CLIENT, attributes)

    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        with self._span("read", state_name, grain_id):
            return await self.inner.read(state_name, grain_id)

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        with self._span("write", state_name, grain_id):
            return await self.inner.write(state_name, grain_id, data, etag)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        with self._span("clear", state_name, grain_id):
            await self.inner.clear(state_name, grain_id, etag)
