"""OpenTelemetry metrics and tracing for trio-grains silos and clients.

Install ``trio-grains-otel``, set up the OpenTelemetry SDK with an exporter, and start the
``otel-metrics`` service in the silo::

    metrics = true                  # calls per method, latency, storage (optional)

    [services.otel]
    provider = "otel-metrics"
    options = { meter_name = "trio_grains" }

The service creates observable instruments on a meter of the global meter provider (or
the ``meter_provider`` option, in code) whose callbacks read ``silo.statistics()`` and
every stream provider's ``statistics()``. :data:`INSTRUMENTS` lists them; see
``docs/otel.md`` for the reference and the exporters.

The ``otel`` tracing provider records the runtime's spans (grain calls, activations,
stream items, storage, reminders) through the OpenTelemetry API::

    [tracing]
    provider = "otel"
    options = { exporter = "otlp", endpoint = "http://localhost:4318/v1/traces" }

Without ``exporter`` it uses the global tracer provider (the application's SDK set-up);
:class:`OtelTracerOptions` lists the options.
"""

from ._instruments import DEFAULT_QUANTILES as DEFAULT_QUANTILES
from ._instruments import INSTRUMENTS as INSTRUMENTS
from ._instruments import InstrumentSpec as InstrumentSpec
from ._metrics import __version__ as __version__
from ._tracing import ATTR_CANCELLED as ATTR_CANCELLED
from ._tracing import TRACER_NAME as TRACER_NAME
from ._tracing import OtelTracer as OtelTracer
from ._tracing import OtelTracerOptions as OtelTracerOptions
from ._tracing import open_otel_tracer as open_otel_tracer
from .plugin import SERVICE_NAME as SERVICE_NAME
from .plugin import OtelMetricsOptions as OtelMetricsOptions
from .plugin import open_otel_metrics as open_otel_metrics

__all__ = [
    "ATTR_CANCELLED",
    "DEFAULT_QUANTILES",
    "INSTRUMENTS",
    "SERVICE_NAME",
    "TRACER_NAME",
    "InstrumentSpec",
    "OtelMetricsOptions",
    "OtelTracer",
    "OtelTracerOptions",
    "open_otel_metrics",
    "open_otel_tracer",
]
