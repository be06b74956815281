"""The ``otel`` plugin: registers the ``otel-metrics`` silo service and the ``otel``
tracing provider.

Loaded through the ``trio_grains`` entry point ``otel`` of trio-grains-otel; the hooks only
register the factories. The service factory validates its options when the silo starts (a
:class:`~trio_grains.ConfigError` names every bad key) and returns an async context
manager: entered, it registers the silo with the OpenTelemetry instruments of its meter
(creating them on first use); left, it takes the silo out again, so the callbacks report
nothing more for it. The tracer factory (:func:`~trio_grains_otel.open_otel_tracer`, in
``_tracing.py``) yields an :class:`~trio_grains_otel.OtelTracer` for ``[tracing] provider
= "otel"``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
from opentelemetry.metrics import MeterProvider

from trio_grains import ConfigError, ProviderRegistry, hookimpl
from trio_grains.hookspecs import ServiceContext, ServiceFactory, TracerFactory

from ._instruments import DEFAULT_QUANTILES
from ._metrics import SiloSource, instruments_for
from ._options import check_known
from ._tracing import TRACER_NAME, open_otel_tracer

__all__ = ["SERVICE_NAME", "OtelMetricsOptions", "open_otel_metrics"]

SERVICE_NAME = "otel-metrics"
"""The name the service is registered under (``[services.<x>] provider = "otel-metrics"``)."""

_KEYS = ("meter_name", "meter_provider", "quantiles")


@attrs.frozen
class OtelMetricsOptions:
    """The ``options`` table of an ``otel-metrics`` service.

    * ``meter_name``: the name of the meter (the instrumentation scope) the instruments
      are created on, default ``"trio_grains"``.
    * ``meter_provider``: an OpenTelemetry ``MeterProvider`` object (in code only), default
      the global one (``opentelemetry.metrics.get_meter_provider()``), so the SDK set up
      by the application (or by ``opentelemetry-instrument``) and its exporters apply.
    * ``quantiles``: the latency percentiles reported, numbers in (0, 1], default
      ``[0.5, 0.9, 0.99]``.
    """

    meter_name: str = "trio_grains"
    meter_provider: MeterProvider | None = None
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], what: str) -> OtelMetricsOptions:
        """Validate *options*; *what* names the service in errors."""
        problems: list[str] = []
        check_known(options, _KEYS, problems)
        meter_name = options.get("meter_name", "trio_grains")
        if not isinstance(meter_name, str) or not meter_name.strip():
            problems.append(f"meter_name must be a non-empty string, got {meter_name!r}")
        provider = options.get("meter_provider")
        if provider is not None and not isinstance(provider, MeterProvider):
            problems.append(
                "meter_provider must be an opentelemetry.metrics.MeterProvider (e.g. "
                "opentelemetry.sdk.metrics.MeterProvider(metric_readers=[...])), got "
                f"{provider!r}; leave it out to use the global one"
            )
        quantiles = _quantiles(options.get("quantiles", list(DEFAULT_QUANTILES)), problems)
        if problems:
            raise ConfigError(f"invalid options for the {what}:\n  " + "\n  ".join(problems))
        return cls(meter_name=meter_name, meter_provider=provider, quantiles=quantiles)


def _quantiles(value: Any, problems: list[str]) -> tuple[float, ...]:
    problem = (
        f"quantiles must be a list of distinct numbers greater than 0 and at most 1 "
        f"(e.g. [0.5, 0.9, 0.99]), got {value!r}"
    )
    if not isinstance(value, list | tuple):
        problems.append(problem)
        return ()
    quantiles: list[float] = []
    for q in value:
        if (
            isinstance(q, bool)
            or not isinstance(q, int | float)
            or not math.isfinite(q)
            or not 0 < q <= 1
            or float(q) in quantiles
        ):
            problems.append(problem)
            return ()
        quantiles.append(float(q))
    return tuple(quantiles)


def open_otel_metrics(
    context: ServiceContext, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[None]:
    """The ``otel-metrics`` service factory (options: :class:`OtelMetricsOptions`)."""
    opts = OtelMetricsOptions.from_mapping(options, f"otel-metrics service {context.name!r}")
    return _observed(context, opts)


@contextlib.asynccontextmanager
async def _observed(context: ServiceContext, options: OtelMetricsOptions) -> AsyncIterator[None]:
    instruments = instruments_for(options.meter_provider, options.meter_name)
    source = SiloSource(context.silo, options.quantiles)
    instruments.observe(source)
    try:
        yield
    finally:
        instruments.forget(source)


@hookimpl
def grains_register_services(registry: ProviderRegistry[ServiceFactory]) -> None:
    registry.register(SERVICE_NAME, open_otel_metrics)


@hookimpl
def grains_register_tracers(registry: ProviderRegistry[TracerFactory]) -> None:
    registry.register(TRACER_NAME, open_otel_tracer)
