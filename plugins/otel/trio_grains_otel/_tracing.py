"""The ``otel`` tracing provider: a :class:`trio_grains.Tracer` on the OpenTelemetry API.

:class:`OtelTracer` turns the runtime's spans into OpenTelemetry spans of one API tracer
(instrumentation scope ``trio_grains``). The trace context is OpenTelemetry's own (a
``contextvars`` variable, so each Trio task has its own current span and a child task
starts from its parent's), and it crosses silos through the global propagator (W3C
``traceparent`` / ``tracestate`` and ``baggage`` unless the application configured
another).

:func:`open_otel_tracer` is the factory registered as ``otel``. Which tracer provider
records the spans (:class:`OtelTracerOptions`):

* ``tracer_provider = <object>`` (in code): that one;
* ``exporter = "otlp" | "console"``: an SDK ``TracerProvider`` the plugin builds, with a
  ``BatchSpanProcessor``; flushed and shut down (in a worker thread, bounded) when the
  silo or client stops;
* neither: the global one, which the application (or ``opentelemetry-instrument``) set up.

``span()`` runs on every traced call, so it is a small class with ``__slots__`` rather
than a generator-based context manager, and it does what the SDK's
``start_as_current_span`` does without its two nested generator context managers.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import attrs
import trio
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import trio_grains
from trio_grains import Attributes, ConfigError, ProviderContext, SpanKind, TraceContext, Tracer

from ._options import check_known

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

__all__ = [
    "ATTR_CANCELLED",
    "SCOPE_NAME",
    "TRACER_NAME",
    "OtelTracer",
    "OtelTracerOptions",
    "open_otel_tracer",
]

TRACER_NAME = "otel"
"""The name the tracing provider is registered under (``[tracing] provider = "otel"``)."""

SCOPE_NAME = "trio_grains"
"""The instrumentation scope (``get_tracer`` name) of every span."""

ATTR_CANCELLED = "trio_grains.cancelled"
"""Set (``True``) on a span left by a cancellation (or another ``BaseException``)."""

# By the runtime's kind's value: hashing an Enum member runs Python code, its str value not.
_KINDS: Final[dict[str, trace.SpanKind]] = {
    SpanKind.INTERNAL.value: trace.SpanKind.INTERNAL,
    SpanKind.SERVER.value: trace.SpanKind.SERVER,
    SpanKind.CLIENT.value: trace.SpanKind.CLIENT,
    SpanKind.PRODUCER.value: trace.SpanKind.PRODUCER,
    SpanKind.CONSUMER.value: trace.SpanKind.CONSUMER,
}
_ROOT: Final = Context()  # the parent of a span that starts a trace (Context is immutable)
_DESCRIPTION_LIMIT = 200  # characters of an exception's message kept in the span status
_CLOSE_TIMEOUT = 5.0  # seconds to flush and shut down a provider the plugin built

# --- the tracer ------------------------------------------------------------------------


class _Span:
    """``OtelTracer.span()``: starts the span on entry, makes it current, ends it on exit."""

    __slots__ = ("_attributes", "_kind", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        kind: trace.SpanKind,
        attributes: Attributes,
        parent: Context | None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._parent = parent  # None: the current context

    def __enter__(self) -> None:
        parent = self._parent
        span = self._tracer.start_span(self._name, parent, self._kind, self._attributes)
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        otel_context.detach(self._token)
        if exc is not None:
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, _describe(exc)))
            else:  # trio.Cancelled, KeyboardInterrupt, ...: not the span's failure
                description = "cancelled" if _cancelled(exc) else type(exc).__name__
                span.set_attribute(ATTR_CANCELLED, True)
                span.set_status(Status(StatusCode.ERROR, description))
        span.end()  # returns None: the exception, if any, propagates


class _Resumed:
    """``OtelTracer.resume()``: *context* is the current one inside the block."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    def __enter__(self) -> None:
        self._token = otel_context.attach(self._context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)


_W3C: Final = TraceContextTextMapPropagator()


def _w3c_only() -> bool:
    """Is the global propagator OpenTelemetry's default (W3C trace context and baggage)?
    Then headers without baggage need only the trace-context propagator, which skips the
    composite's and the baggage propagator's work on every call and stream item."""
    textmap = propagate.get_global_textmap()
    return textmap is _DEFAULT_TEXTMAP


_DEFAULT_TEXTMAP: Final = (
    propagate.get_global_textmap()
    if [type(p) for p in getattr(propagate.get_global_textmap(), "_propagators", ())]
    == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    else None
)


def _cancelled(exc: BaseException) -> bool:
    """Whether *exc* is a cancellation (or a group of nothing but cancellations)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _describe(exc: BaseException) -> str:
    message = str(exc)
    if len(message) > _DESCRIPTION_LIMIT:
        message = message[: _DESCRIPTION_LIMIT - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class OtelTracer(Tracer):
    """A :class:`trio_grains.Tracer` recording through an OpenTelemetry API tracer.

    The trace contexts it hands out (:meth:`current`, :meth:`extract`) are OpenTelemetry
    ``Context`` objects, so application code can use them too (``context.attach``,
    ``tracer.start_span(..., context=...)``).
    """

    def __init__(self, tracer: trace.Tracer, *, inline_calls: bool = False) -> None:
        self._tracer = tracer
        self.inline_calls = inline_calls

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._tracer!r} inline_calls={self.inline_calls}>"

    @property
    def otel_tracer(self) -> trace.Tracer:
        """The OpenTelemetry tracer the spans are started on."""
        return self._tracer

    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        *,
        parent: TraceContext | None = None,
        root: bool = False,
    ) -> _Span:
        if parent is None and root:
            parent = _ROOT
        return _Span(
            self._tracer, name, _KINDS[kind._value_], attributes, cast("Context | None", parent)
        )

    def current(self) -> TraceContext | None:
        ctx = otel_context.get_current()
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
        return None

    def resume(self, context: TraceContext) -> _Resumed:
        if not isinstance(context, Context):
            raise TypeError(
                f"resume() takes a trace context from current() or extract(), got {context!r}"
            )
        return _Resumed(context)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        if _w3c_only() and not baggage.get_all():
            _W3C.inject(headers)  # what the default propagator does then, in a third of the time
        else:
            propagate.inject(headers)

    def extract(self, headers: Mapping[str, str]) -> TraceContext | None:
        if not headers:
            return None
        if _w3c_only() and "baggage" not in headers:
            ctx = _W3C.extract(headers, _ROOT)
        else:
            ctx = propagate.extract(headers)
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
        return None

    def trace_id(self) -> str | None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return trace.format_trace_id(span_context.trace_id)
        return None


# --- options ---------------------------------------------------------------------------

_KEYS = ("tracer_provider", "exporter", "endpoint", "service_name", "sample_ratio", "inline_calls")
_BUILT = ("exporter", "endpoint", "service_name", "sample_ratio")  # configure a built provider
_EXPORTERS = ("otlp", "console")
_DEFAULT_SERVICE_NAME = "trio-grains"


@attrs.frozen
class OtelTracerOptions:
    """The ``options`` table of ``[tracing] provider = "otel"``.

    * ``tracer_provider``: an OpenTelemetry ``TracerProvider`` object (in code only), used
      as it is. Not together with the options below that configure a provider the plugin
      builds.
    * ``exporter``: ``"otlp"`` (OTLP over HTTP/protobuf; needs
      ``trio-grains-otel[otlp]``) or ``"console"`` (spans printed to stdout; needs
      ``trio-grains-otel[sdk]``): the plugin builds an SDK ``TracerProvider`` of its own
      with a ``BatchSpanProcessor``, and flushes and shuts it down when the silo stops.
      Leave it out (and ``tracer_provider``) to use the global tracer provider.
    * ``endpoint``: with ``exporter = "otlp"``, the traces URL
      (``"http://localhost:4318/v1/traces"``); default the exporter's own, from the
      ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` environment.
    * ``service_name``: the ``service.name`` resource attribute of the built provider;
      default ``$OTEL_SERVICE_NAME`` or ``"trio-grains"``. ``service.instance.id`` is the
      silo's (or client's) name.
    * ``sample_ratio``: with ``exporter``, the fraction of new traces recorded, in (0, 1],
      default 1 (``ParentBased(TraceIdRatioBased(ratio))``: a call continues its caller's
      decision).
    * ``inline_calls``: give calls that run in the caller's own task a span of their own
      (:attr:`trio_grains.Tracer.inline_calls`), default ``False``.
    """

    tracer_provider: trace.TracerProvider | None = None
    exporter: Literal["otlp", "console"] | None = None
    endpoint: str | None = None
    service_name: str | None = None
    sample_ratio: float = 1.0
    inline_calls: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> OtelTracerOptions:
        """Validate *options* (every problem in one :class:`~trio_grains.ConfigError`)."""
        problems: list[str] = []
        check_known(options, _KEYS, problems)
        provider = options.get("tracer_provider")
        if provider is not None and not isinstance(provider, trace.TracerProvider):
            problems.append(
                "tracer_provider must be an opentelemetry.trace.TracerProvider (e.g. "
                "opentelemetry.sdk.trace.TracerProvider()), got "
                f"{provider!r}; leave it out to use the global one"
            )
        exporter = options.get("exporter")
        if exporter is not None and exporter not in _EXPORTERS:
            problems.append(
                f"exporter must be one of {', '.join(map(repr, _EXPORTERS))}, got {exporter!r}; "
                "leave it out to use the global tracer provider"
            )
        built = [key for key in _BUILT if key in options]
        if provider is not None and built:
            problems.append(
                f"{', '.join(built)} configure{'s' if len(built) == 1 else ''} a tracer "
                "provider the plugin builds: give either tracer_provider or those, not both"
            )
        elif exporter is None and (orphans := [key for key in built if key != "exporter"]):
            problems.append(
                f"{', '.join(orphans)} configure{'s' if len(orphans) == 1 else ''} the tracer "
                'provider the plugin builds: set exporter = "otlp" (or "console") too, or '
                "configure the global tracer provider in the application instead"
            )
        endpoint = options.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                problems.append(
                    "endpoint must be an http(s) URL (e.g. "
                    f'"http://localhost:4318/v1/traces"), got {endpoint!r}'
                )
            elif exporter == "console":
                problems.append('endpoint applies to exporter = "otlp" only, not "console"')
        service_name = options.get("service_name")
        if service_name is not None and (not isinstance(service_name, str) or not service_name):
            problems.append(f"service_name must be a non-empty string, got {service_name!r}")
        ratio = options.get("sample_ratio", 1.0)
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, int | float)
            or not math.isfinite(ratio)
            or not 0 < ratio <= 1
        ):
            problems.append(
                "sample_ratio must be a number greater than 0 and at most 1 (e.g. 0.1 to "
                f"record one new trace in ten), got {ratio!r}"
            )
            ratio = 1.0
        inline_calls = options.get("inline_calls", False)
        if not isinstance(inline_calls, bool):
            problems.append(f"inline_calls must be true or false, got {inline_calls!r}")
        if problems:
            raise ConfigError(
                "invalid options for the otel tracing provider ([tracing] options):\n  "
                + "\n  ".join(problems)
            )
        if exporter is not None:
            _check_installed(exporter)
        return cls(
            tracer_provider=provider,
            exporter=exporter,
            endpoint=endpoint,
            service_name=service_name,
            sample_ratio=float(ratio),
            inline_calls=inline_calls,
        )


def _check_installed(exporter: str) -> None:
    extra = "otlp" if exporter == "otlp" else "sdk"
    modules = ["opentelemetry.sdk.trace"]
    if exporter == "otlp":
        modules.append("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f'the otel tracing provider\'s exporter = "{exporter}" needs {exc.name or "a package"}'
            f" that is not installed: pip install 'trio-grains-otel[{extra}]'"
        ) from exc


# --- the factory -----------------------------------------------------------------------


def open_otel_tracer(
    context: ProviderContext, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[OtelTracer]:
    """The ``otel`` tracer factory (options: :class:`OtelTracerOptions`).

    The options are checked now (a :class:`~trio_grains.ConfigError` names every bad
    key); a provider the plugin builds is built when the returned context manager is
    entered and flushed and shut down when it is left.
    """
    return _opened(context, OtelTracerOptions.from_mapping(options))


@contextlib.asynccontextmanager
async def _opened(
    context: ProviderContext, options: OtelTracerOptions
) -> AsyncIterator[OtelTracer]:
    if options.exporter is None:
        provider = options.tracer_provider or trace.get_tracer_provider()
        yield _tracer_of(provider, options)
        return
    built = _build_provider(context, options)
    try:
        yield _tracer_of(built, options)
    finally:
        # Flush what the batch processor holds, even when the silo is being cancelled,
        # but bounded: a collector that does not answer must not hold the silo's exit.
        with trio.move_on_after(_CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(_close, built, abandon_on_cancel=True)


def _tracer_of(provider: trace.TracerProvider, options: OtelTracerOptions) -> OtelTracer:
    tracer = provider.get_tracer(SCOPE_NAME, trio_grains.__version__)
    return OtelTracer(tracer, inline_calls=options.inline_calls)


def _build_provider(context: ProviderContext, options: OtelTracerOptions) -> SdkTracerProvider:
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    service_name = (
        options.service_name or os.environ.get("OTEL_SERVICE_NAME") or _DEFAULT_SERVICE_NAME
    )
    resource = Resource.create({SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: context.silo_name})
    exporter: SpanExporter
    if options.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=options.endpoint)
    else:
        exporter = ConsoleSpanExporter(out=sys.stdout)  # now's (the SDK's default: import's)
    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(options.sample_ratio),
        resource=resource,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _close(provider: SdkTracerProvider) -> None:
    """Flush and shut down *provider* (blocking: in a worker thread)."""
    provider.force_flush(int(_CLOSE_TIMEOUT * 1000))
    provider.shutdown()
