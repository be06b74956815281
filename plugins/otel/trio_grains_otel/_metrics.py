"""The machinery behind the ``otel-metrics`` service: the instruments of a meter, and the
silos they observe.

* **One set of instruments per meter, shared by the silos of a process.** The
  OpenTelemetry API cannot remove an instrument, and the SDK ignores a second instrument of
  the same name on a meter (it logs a warning and keeps the first one's callbacks). So
  :func:`instruments_for` creates the instruments of :data:`INSTRUMENTS` once per (meter
  provider, meter name), and their callbacks observe the silos currently registered
  (:meth:`Instruments.observe`). A stopped silo is taken out (:meth:`Instruments.forget`);
  the callbacks then report nothing for it.
* **Statistics are read on the silo's Trio thread.** An SDK's periodic reader calls the
  callbacks from a thread of its own, while the silo changes its counters on the Trio
  thread. :meth:`SiloSource.figures` reads directly when called on that thread (a reader
  collected from Trio code, as the tests do) and otherwise hops onto it with
  ``TrioToken.run_sync_soon``, waiting at most the callback's timeout. A collection from
  another thread reuses one read for ``_CACHE_SECONDS``: one hop per collection, not one
  per instrument.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

import outcome
import trio
from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from trio_grains import ConfigError, Silo

from ._instruments import INSTRUMENTS, Figures, InstrumentSpec

__all__ = ["Instruments", "SiloSource", "__version__", "instruments_for"]

__version__ = "0.1.0"

log = logging.getLogger("trio_grains.otel")

_CACHE_SECONDS = 1.0


# --- a silo, observed ----------------------------------------------------------------------


class SiloSource:
    """One running silo as the instruments see it (created on the silo's Trio thread)."""

    def __init__(self, silo: Silo, quantiles: tuple[float, ...]) -> None:
        self._silo = silo
        self._quantiles = quantiles
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._grain_types: dict[str, int] = {}
        self._cached: tuple[float, Figures | None] | None = None
        self.stopped = False

    def figures(self, timeout: float) -> Figures | None:
        """The silo's figures, ``None`` once it stopped (or when its Trio thread does not
        answer within *timeout* seconds)."""
        if self.stopped:
            return None
        if threading.get_ident() == self._thread:
            return self._read()
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        figures = self._read_from_other_thread(timeout)
        # A read that timed out is remembered too: the other instruments of this
        # collection skip the silo instead of waiting for it again, each.
        self._cached = (time.monotonic(), figures)
        return figures

    def _read(self) -> Figures | None:
        """Read the figures; on the silo's Trio thread only."""
        if self.stopped:
            return None
        silo = self._silo
        stats = silo.statistics()
        streams = []
        for name in silo.config.streams:
            try:
                provider = silo.get_stream_provider(name)
            except ConfigError:  # not running (yet, or any more)
                continue
            streams.append(provider.statistics())
        self._grain_types.update(dict.fromkeys(stats.activations_by_type, 0))
        activations = {**self._grain_types, **stats.activations_by_type}
        return Figures(stats, activations, tuple(streams), self._quantiles)

    def _read_from_other_thread(self, timeout: float) -> Figures | None:
        done = threading.Event()
        box: list[outcome.Outcome[Figures | None]] = []

        def read() -> None:
            box.append(outcome.capture(self._read))
            done.set()

        try:
            self._token.run_sync_soon(read)
        except trio.RunFinishedError:
            return None
        if not done.wait(timeout):
            log.warning(
                "silo %s did not answer an OpenTelemetry collection within %.1f s (its Trio "
                "thread is busy); its figures are left out of this collection",
                self._silo.silo_id,
                timeout,
            )
            return None
        return box[0].unwrap()


class Instruments:
    """The instruments of one meter, observing the silos registered with :meth:`observe`."""

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._sources: list[SiloSource] = []
        for spec in INSTRUMENTS:
            create = {
                "counter": meter.create_observable_counter,
                "up_down_counter": meter.create_observable_up_down_counter,
                "gauge": meter.create_observable_gauge,
            }[spec.kind]
            create(
                spec.name,
                callbacks=[self._callback(spec)],
                unit=spec.unit,
                description=spec.description,
            )

    def observe(self, source: SiloSource) -> None:
        with self._lock:
            self._sources.append(source)

    def forget(self, source: SiloSource) -> None:
        source.stopped = True
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    def _callback(self, spec: InstrumentSpec) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            with self._lock:
                sources = tuple(self._sources)
            observations: list[Observation] = []
            for source in sources:
                try:
                    figures = source.figures(options.timeout_millis / 1000)
                    if figures is not None:
                        observations.extend(
                            Observation(value, attributes)
                            for value, attributes in spec.read(figures)
                        )
                except Exception:  # one silo's problem must not hide the others
                    log.exception("reading %s for OpenTelemetry failed", spec.name)
            return observations

        return observe


_LOCK = threading.Lock()
_GLOBAL: dict[str, Instruments] = {}
_BY_PROVIDER: weakref.WeakKeyDictionary[MeterProvider, dict[str, Instruments]] = (
    weakref.WeakKeyDictionary()
)


def instruments_for(provider: MeterProvider | None, meter_name: str) -> Instruments:
    """The instruments of meter *meter_name* of *provider* (``None``: the global meter
    provider), created on first use in this process."""
    with _LOCK:
        by_name = _GLOBAL if provider is None else _BY_PROVIDER.setdefault(provider, {})
        instruments = by_name.get(meter_name)
        if instruments is None:
            if provider is None:
                # The global provider may still be the API's proxy; the instruments it
                # creates follow the SDK provider set later (set_meter_provider works once).
                provider = otel_metrics.get_meter_provider()
            meter = provider.get_meter(meter_name, __version__)
            instruments = by_name[meter_name] = Instruments(meter)
        return instruments
