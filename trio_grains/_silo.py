"""The silo: the composition root that hosts grains inside a Trio program.

``async with open_silo(config, grains=[...]) as silo:`` loads the plugins, opens the
configured providers, starts the catalog in a nursery of its own, and on the way out
deactivates every activation (running ``on_deactivate``) and closes the providers in reverse
order. Nothing it started outlives the block.

May import: layers 0-8 (the core, reminders, streams, the cluster, the plugins) and
``_cluster.member``. Not the client, nor the public faces (the package, ``cli``, ``testing``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import cattrs
import trio

from ._calls import TimeoutWheel
from ._catalog import Catalog
from ._cluster.member import ClusterMember, warn_per_silo_providers
from ._cluster.routing import SiloCluster
from ._cluster.silo_entries import MembershipView
from ._config import ProviderConfig, SiloConfig
from ._dispatch import Dispatcher, timeout_error
from ._exceptions import ConfigError, SiloDeclaredDeadError, SiloUnavailableError, first_leaf
from ._grain import GrainClassRegistry, GrainInterface, GrainServices
from ._ids import GrainId, GrainKey
from ._logging import SILO_ID
from ._metrics import MetricsSnapshot, SiloMetrics, TimedStorage
from ._plugins import Plugins, load_plugins
from ._registry import ProviderContext, ProviderRegistry, ServiceContext
from ._reminders import ReminderService
from ._serialization import Codec, make_converter
from ._storage import GrainStorage
from ._streams.model import StreamOptions
from ._streams.provider import StreamProvider, check_implicit_providers
from ._tracing import TracedStorage, Tracer, open_tracer

__all__ = ["Silo", "SiloStatistics", "open_silo"]

log = logging.getLogger("trio_grains.silo")

G = TypeVar("G", bound=GrainInterface)


@attrs.frozen
class SiloStatistics:
    """A snapshot of what a silo is doing, from :meth:`Silo.statistics`."""

    name: str
    silo_id: str
    activations: int
    activations_by_type: Mapping[str, int]
    activations_created: int
    queued_calls: int
    waiting_callers: int
    #: in a cluster: calls sent to other silos and not answered yet, calls this silo
    #: forwarded or re-sent because the grain was elsewhere, and its cluster's size
    remote_calls_pending: int = 0
    calls_forwarded: int = 0
    active_silos: int = 1
    #: calls per grain type and method, storage latency, membership changes: with
    #: ``SiloConfig.metrics`` on (``None`` when it is off)
    metrics: MetricsSnapshot | None = None
    #: in a cluster: messages dropped at the silo's endpoint, by reason (``malformed``,
    #: ``reply_address``, ``unexpected_reply``, ``too_large``, ``send_failed``); see
    #: ``docs/security.md``
    dropped_messages: Mapping[str, int] = attrs.field(factory=dict)
    #: arguments, results, stream items or stored states that did not decode (each one
    #: failed its call, item or activation with a ``SerializationError``)
    decode_failures: int = 0


@attrs.frozen
class _Resolved:
    """A configured provider, looked up: what to open, with which options."""

    kind: str  # "storage", "streams" or "reminders"
    name: str  # the configured instance name ("default", ...)
    provider: str  # the registered provider name ("sqlite", ...)
    factory: Any
    options: dict[str, Any]  # for the factory (the core's stream options taken out)


def _import_grain_class(path: str) -> type:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"grains entry {path!r} must look like 'package.module:ClassName'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"grains entry {path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, type):
        raise ConfigError(f"grains entry {path!r} is not a class")
    return obj


class Silo:
    """A running silo. Get one from :func:`open_silo`; do not instantiate it directly."""

    def __init__(self, config: SiloConfig, plugins: Plugins, registry: GrainClassRegistry) -> None:
        self._config = config
        self._plugins = plugins
        self._registry = registry
        self._converter = make_converter(self._reference_from_id)
        plugins.configure_converter(self._converter)
        self._codec = Codec(self._converter, remote_tracebacks=config.remote_tracebacks)
        self._metrics: SiloMetrics | None = SiloMetrics() if config.metrics else None
        self._grain_services = GrainServices()
        # Built by open_silo, in order, while the silo starts (see its body):
        self._tracer: Tracer | None = None
        self._storages: dict[str, tuple[GrainStorage, str]] = {}
        self._cluster: SiloCluster | None = None
        self._catalog_or_none: Catalog | None = None
        self._dispatcher: Dispatcher | None = None
        self._crashed = False
        self._providers: dict[tuple[str, str], Any] = {}
        self._stream_options: dict[str, StreamOptions] = {}
        self._stream_providers: dict[str, StreamProvider] = {}
        # A cluster member's id names this incarnation: a restarted silo is a new member.
        suffix = "" if config.clustering is None else "-" + secrets.token_hex(4)
        self._silo_id = config.name + suffix
        self._member: ClusterMember | None = None
        self._goodbye_scope: trio.CancelScope | None = None

    @contextlib.asynccontextmanager
    async def _services(self) -> AsyncIterator[None]:
        """Run the configured services (``[services.*]``) while the block runs."""
        async with contextlib.AsyncExitStack() as stack:
            for name, pconf in self._config.services.items():
                factory = self._plugins.services.get(pconf.provider)
                context = ServiceContext(name=name, silo=self)
                await stack.enter_async_context(factory(context, dict(pconf.options)))
            yield

    async def _say_goodbye(self) -> None:
        """The first part of a graceful stop: tell the cluster, hand stream partitions and
        held items back. Bounded by ``deactivation_timeout``, cut short when the silo is
        declared dead (it cannot reach the cluster) or :meth:`abandon_graceful_stop`."""
        with trio.CancelScope() as scope:
            self._goodbye_scope = scope
            scope.deadline = trio.current_time() + self._config.deactivation_timeout
            member = self._member
            if member is not None and member.membership is not None:
                member.membership.cancel_on_death.append(scope)
            if member is not None:
                await member.start_leaving()
            if not self.crashed:
                for stream_provider in self._stream_providers.values():
                    await stream_provider.stop()  # hand held items back
        if scope.cancelled_caught and not self.crashed:
            log.warning(
                "silo %s could not finish its goodbyes (declared dead, or they took longer "
                "than deactivation_timeout); what it could not hand over comes back to the "
                "others after its ack wait",
                self._silo_id,
            )
        membership = None if member is None else member.membership
        if membership is not None and membership.declared_dead.is_set():
            self.mark_crashed()  # its grains may be active elsewhere already

    def abandon_graceful_stop(self) -> None:
        """Make this silo's stop (under way, or the next one) like a crash: no more
        goodbyes, activations dropped without ``on_deactivate``. The rest of the cluster
        takes over its grains and stream items once it is declared dead. For a second
        Ctrl-C, or a stop that waits on a backend that went away."""
        self.mark_crashed()
        member = self._member
        if member is not None and member.membership is not None:
            member.membership.say_goodbye = False
        if self._goodbye_scope is not None:
            self._goodbye_scope.cancel()
        if self._catalog_or_none is not None:
            self._catalog_or_none.abandon_shutdown()

    @property
    def crashed(self) -> bool:
        """The silo stops as if killed: its grains may be active elsewhere already."""
        return self._crashed

    def mark_crashed(self) -> None:
        """Stop as if killed: no goodbyes, activations dropped without ``on_deactivate``."""
        self._crashed = True

    @property
    def catalog(self) -> Catalog:
        """The silo's activations (an internal object: for tests and diagnostics)."""
        if self._catalog_or_none is None:
            raise SiloUnavailableError("the silo is not running: use 'async with open_silo()'")
        return self._catalog_or_none

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise SiloUnavailableError("the silo is not running: use 'async with open_silo()'")
        return self._dispatcher

    @property
    def registry(self) -> GrainClassRegistry:
        """The grain classes this silo hosts."""
        return self._registry

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def silo_id(self) -> str:
        """This silo's id in the cluster (its name plus an incarnation suffix when
        clustered), as in membership rows and directory entries."""
        return self._silo_id

    @property
    def membership_view(self) -> MembershipView | None:
        """The latest cluster membership this silo has seen (every silo's row: status,
        address, grain types, load); ``None`` for a silo that runs alone."""
        cluster = self._cluster
        return None if cluster is None else cluster.locator.view

    @property
    def cluster(self) -> SiloCluster | None:
        """The silo's cluster side, ``None`` for a silo that runs alone."""
        return self._cluster

    @property
    def config(self) -> SiloConfig:
        return self._config

    @property
    def converter(self) -> cattrs.Converter:
        """This silo's converter (extended by plugins): use it to store grain data."""
        return self._converter

    @property
    def plugins(self) -> Plugins:
        return self._plugins

    @property
    def codec(self) -> Codec:
        return self._codec

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        """A reference to grain ``(type of grain_class, key)``. No I/O; nothing is activated.

        *grain_class* may be the grain class or an interface with the same type name.
        ``key_ext`` makes a compound key with an int or UUID *key*.
        """
        return self.dispatcher.get_grain(grain_class, key, key_ext=key_ext)

    def get_grain_by_id(self, grain_class: type[G], grain_id: GrainId | str) -> G:
        """A reference from a stored id (``GrainId`` or its text form ``"cart/bob65"``)."""
        return self.dispatcher.reference(grain_class, grain_id)

    def _reference_from_id(self, iface: type, grain_id: GrainId) -> Any:
        return self.dispatcher.reference(iface, grain_id)

    def provider(self, kind: str, name: str) -> Any:
        """The opened provider *name* of *kind* (``"storage"``, ``"streams"``, ``"reminders"``).

        The reminder table is ``provider("reminders", "default")``.
        """
        try:
            return self._providers[(kind, name)]
        except KeyError:
            configured = sorted(n for k, n in self._providers if k == kind) or ["(none)"]
            raise ConfigError(
                f"no {kind} provider named {name!r} is configured; configured: "
                f"{', '.join(configured)}. Add it under [{kind}.{name}] in the silo config"
            ) from None

    def get_stream_provider(self, name: str = "default") -> StreamProvider:
        """The running stream provider configured as ``[streams.<name>]``."""
        try:
            return self._stream_providers[name]
        except KeyError:
            self.provider("streams", name)  # raises, listing the configured ones
            raise ConfigError(f"stream provider {name!r} is not running") from None

    def statistics(self) -> SiloStatistics:
        catalog = self.catalog
        acts = catalog.activations()
        cluster = self._cluster
        return SiloStatistics(
            name=self.name,
            silo_id=self.silo_id,
            activations=len(acts),
            activations_by_type=dict(catalog.count_by_type()),
            activations_created=catalog.activations_created,
            queued_calls=sum(a.queued for a in acts),
            waiting_callers=catalog.pending_calls(),
            remote_calls_pending=0 if cluster is None else cluster.messenger.pending(),
            calls_forwarded=0 if cluster is None else cluster.forwarded + cluster.rerouted,
            active_silos=1 if cluster is None else len(cluster.locator.view.active()),
            metrics=None if self._metrics is None else self._metrics.snapshot(),
            dropped_messages={} if cluster is None else dict(cluster.messenger.dropped),
            decode_failures=self._codec.decode_failures,
        )

    def __repr__(self) -> str:
        return f"<Silo {self.name!r} cluster={self._config.cluster_id!r}>"

    def _resolve_providers(self) -> list[_Resolved]:
        """Look every configured provider up by name (unknown names fail here, listing all)."""
        storage = {"default": ProviderConfig(provider="memory"), **self._config.storage}
        kinds: list[tuple[str, Mapping[str, ProviderConfig], ProviderRegistry[Any]]] = [
            ("storage", storage, self._plugins.storage),
            ("streams", self._config.streams, self._plugins.streams),
            ("reminders", {"default": self._config.reminders}, self._plugins.reminders),
        ]
        factories = []
        for kind, configured, registry in kinds:
            for name, pconf in configured.items():
                options = dict(pconf.options)
                if kind == "streams":  # the core's options are not the adapter's business
                    self._stream_options[name], options = StreamOptions.split(name, options)
                factory = registry.get(pconf.provider)
                factories.append(_Resolved(kind, name, pconf.provider, factory, options))
        for pconf in self._config.services.values():
            self._plugins.services.get(pconf.provider)  # an unknown name fails here
        if self._config.tracing is not None:
            self._plugins.tracers.get(self._config.tracing.provider)  # and here
        check_implicit_providers(self._registry, self._config.streams)
        for cls_type in self._registry.types():
            info = self._registry.get(cls_type)
            assert info is not None
            for decl in info.states:
                if decl.storage not in storage:
                    raise ConfigError(
                        f"{info.cls.__qualname__}.{decl.attribute} uses storage "
                        f"{decl.storage!r}, which is not configured (configured: "
                        f"{', '.join(sorted(storage))}); add [storage.{decl.storage}] to the "
                        "silo config"
                    )
        return factories

    def _provider_context(self, name: str) -> ProviderContext:
        return ProviderContext(
            name=name,
            silo_name=self.name,
            cluster_id=self._config.cluster_id,
            converter=self._converter,
            clustering=self._config.clustering,
        )

    async def _open_providers(
        self,
        stack: contextlib.AsyncExitStack,
        factories: list[_Resolved],
    ) -> None:
        for resolved in factories:
            kind, name = resolved.kind, resolved.name
            ctx = self._provider_context(name)
            provider = await stack.enter_async_context(resolved.factory(ctx, resolved.options))
            self._providers[(kind, name)] = provider
            if kind == "storage":
                metrics, tracer = self._metrics, self._tracer
                storage = provider if metrics is None else TimedStorage(provider, name, metrics)
                if tracer is not None:
                    storage = TracedStorage(storage, name, resolved.provider, tracer)
                self._storages[name] = (storage, resolved.provider)


@contextlib.asynccontextmanager
async def open_silo(
    config: SiloConfig | None = None,
    *,
    grains: Iterable[type] = (),
    plugins: Sequence[object] = (),
    wall_clock: Callable[[], float] | None = None,
) -> AsyncIterator[Silo]:
    """Run a silo for the duration of an ``async with`` block.

    *grains* are the grain classes this silo hosts (also ``config.grains`` and the
    ``grains_register_grain_classes`` hook); *plugins* are extra plugin objects or modules
    with ``@hookimpl`` functions, registered after the installed ones. *wall_clock* is the
    time source for reminder schedules (default ``time.time``; tests with a ``MockClock``
    pass ``trio.current_time`` so that several silos share one virtual clock).
    """
    config = config or SiloConfig()
    loaded = load_plugins(config.plugins, extra=plugins)
    registry = GrainClassRegistry()
    loaded.register_grain_classes(registry)
    for path in config.grains:
        registry.register(_import_grain_class(path))
    for cls in grains:
        registry.register(cls)
    loaded.placement.get(config.default_placement)  # an unknown name fails here, listing all
    silo = Silo(config, loaded, registry)
    factories = silo._resolve_providers()
    member = None if config.clustering is None else ClusterMember(silo)
    if member is not None:
        infos = [registry.get(t) for t in registry.types()]
        remindable = any(i is not None and "receive_reminder" in i.methods for i in infos)
        warn_per_silo_providers(
            silo.silo_id,
            [
                f"[{r.kind}.{r.name}]"
                for r in factories
                if r.provider == "memory" and (r.kind != "reminders" or remindable)
            ],
        )
    body_error: BaseException | None = None
    # The silo's tasks inherit it (log records say which silo); so does the block's code.
    silo_id_token = SILO_ID.set(silo.silo_id)
    try:
        async with contextlib.AsyncExitStack() as providers:
            # outside the nursery, so that a provider's error is raised unwrapped; the
            # tracer first (and closed last): every span of the silo's lifetime reaches it
            silo._tracer = tracer = await providers.enter_async_context(
                open_tracer(loaded.tracers, config.tracing, silo._provider_context("tracing"))
            )
            await silo._open_providers(providers, factories)
            codec, services = silo._codec, silo._grain_services
            wheel = TimeoutWheel(config.response_timeout, timeout_error)
            cluster = None
            if member is not None:
                cluster = await member.open(
                    providers, codec=codec, wheel=wheel, tracer=tracer, metrics=silo._metrics
                )
            silo._cluster = cluster
            catalog = Catalog(
                config,
                registry,
                codec,
                wheel,
                services,
                silo_id=silo.silo_id,
                tracer=tracer,
                metrics=silo._metrics,
                storages=silo._storages,
                cluster=cluster,
            )
            silo._catalog_or_none = catalog
            dispatcher = Dispatcher(
                catalog,
                codec,
                isolate=config.isolate_local_calls,
                max_key_length=config.max_key_length,
                remote=cluster,
            )
            silo._dispatcher = dispatcher
            services.get_grain = dispatcher.get_grain
            async with trio.open_nursery() as nursery:
                await nursery.start(catalog.run)
                nursery.start_soon(wheel.run)
                if cluster is not None:
                    await nursery.start(cluster.run, catalog)
                service = ReminderService(
                    table=silo.provider("reminders", "default"),
                    invoke=dispatcher.invoke_by_id,
                    tracer=tracer,
                    minimum_period=config.minimum_reminder_period,
                    wall_clock=wall_clock,
                    refresh_interval=None if cluster is None else config.reminder_refresh,
                )
                if member is not None:
                    member.own_reminders(service)
                await nursery.start(service.run)
                services.reminders = service
                for name in config.streams:
                    stream_provider = StreamProvider(
                        name,
                        silo.provider("streams", name),
                        silo._stream_options[name],
                        codec=codec,
                        tracer=tracer,
                        registry=registry,
                        invoke=dispatcher.invoke_by_id,
                        owned=None if cluster is None else (),
                    )
                    await nursery.start(stream_provider.run)
                    silo._stream_providers[name] = services.streams[name] = stream_provider
                    if member is not None:
                        await member.balance(stream_provider, nursery)
                silo._member = member
                try:
                    membership = contextlib.nullcontext() if member is None else member.join()
                    async with membership:
                        if member is not None:
                            assert cluster is not None
                            assert member.membership is not None
                            cluster.on_view(member.membership.view)
                            nursery.start_soon(cluster.follow, member.membership)
                        try:
                            async with silo._services():
                                yield silo
                        except BaseException as exc:
                            body_error = exc
                            raise
                        finally:
                            with trio.CancelScope(shield=True):
                                await silo._say_goodbye()
                                await catalog.shutdown(crashed=silo.crashed)
                finally:
                    if member is not None:
                        await member.linger()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The block's own exception comes back wrapped by the silo's nursery: unwrap it, so
        # ``except KeyError`` around ``async with open_silo()`` works as users expect.
        if body_error is not None and list(group.exceptions) == [body_error]:
            raise body_error from None
        dead = group.subgroup(SiloDeclaredDeadError)
        if dead is not None:
            raise first_leaf(dead) from None
        raise
    finally:
        with contextlib.suppress(ValueError):  # exited in another context than entered
            SILO_ID.reset(silo_id_token)
