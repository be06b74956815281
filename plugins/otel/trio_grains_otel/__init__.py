"""OpenTelemetry metrics for trio-grains silos.

Install ``trio-grains-otel``, set up the OpenTelemetry SDK with an exporter, and start the
``otel-metrics`` service in the silo::

    metrics = true                  # calls per method, latency, storage (optional)

    [services.otel]
    provider = "otel-metrics"
    options = { meter_name = "trio_grains" }

The service creates observable instruments on a meter of the global meter provider (or
the ``meter_provider`` option, in code) whose callbacks read ``silo.statistics()`` and
every stream provider's ``statistics()``. :data:`INSTRUMENTS` lists them; see
``docs/otel.md`` for the reference and the exporters. Tracing comes later.
"""

from ._instruments import DEFAULT_QUANTILES as DEFAULT_QUANTILES
from ._instruments import INSTRUMENTS as INSTRUMENTS
from ._instruments import InstrumentSpec as InstrumentSpec
from ._metrics import __version__ as __version__
from .plugin import SERVICE_NAME as SERVICE_NAME
from .plugin import OtelMetricsOptions as OtelMetricsOptions
from .plugin import open_otel_metrics as open_otel_metrics

__all__ = [
    "DEFAULT_QUANTILES",
    "INSTRUMENTS",
    "SERVICE_NAME",
    "InstrumentSpec",
    "OtelMetricsOptions",
    "open_otel_metrics",
]
