"""Every hook a trio-grains plugin can implement.

A plugin is a module (or any object) with functions decorated with :data:`hookimpl` whose
names are hooks below; it is found through the ``trio_grains`` entry-point group, or
passed directly (``open_silo(plugins=[...])``)::

    from trio_grains import hookimpl

    @hookimpl
    def grains_register_storage(registry):
        registry.register("redis", open_redis_storage)

How hooks work here:

* **Hooks are sync and declarative.** pluggy cannot await, so a hook never opens a
  connection or starts a task. It registers a *factory* in a typed registry; the silo
  calls the factory and enters the returned async context manager with ``async with``
  inside its nursery when it starts, and leaves it (in reverse order) when it stops.
* **One plugin manager per silo.** Each silo loads its plugins and calls these hooks
  once, with registries and a converter of its own; nothing is global.
* **Order.** Implementations are called in plugin registration order: the built-in
  plugins, then entry points, then plugins passed in code. ``@hookimpl(tryfirst=True)``
  moves an implementation before the others, ``trylast=True`` after them. Hook wrappers
  are not supported.
* **Names are claimed once.** Registering a name another plugin already registered is a
  :class:`~trio_grains.PluginError` naming both plugins.

Hooks, grouped by what they contribute:

* providers: :func:`grains_register_storage`, :func:`grains_register_streams`,
  :func:`grains_register_reminder_tables`
* clustering: :func:`grains_register_clustering`
* placement: :func:`grains_register_placement`
* grains and values: :func:`grains_register_grain_classes`,
  :func:`grains_configure_converter`

May import: layers 0-7 (the registries the hooks fill, the types they name). Not the plugin
manager or the built-ins, which build on these hooks, nor the silo or the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cattrs
import pluggy

from ._placement import PlacementRegistry
from ._registry import (
    ClusteringFactory,
    ProviderContext,
    ProviderFactory,
    ProviderRegistry,
    ReminderTableFactory,
    ServiceContext,
    ServiceFactory,
    StorageFactory,
    StreamProviderFactory,
    TracerFactory,
)

if TYPE_CHECKING:
    from ._grain import GrainClassRegistry

__all__ = [
    "PROJECT_NAME",
    "ClusteringFactory",
    "ProviderContext",
    "ProviderFactory",
    "ServiceContext",
    "ServiceFactory",
    "StorageFactory",
    "StreamProviderFactory",
    "TracerFactory",
    "grains_configure_converter",
    "grains_register_clustering",
    "grains_register_grain_classes",
    "grains_register_placement",
    "grains_register_reminder_tables",
    "grains_register_services",
    "grains_register_storage",
    "grains_register_streams",
    "grains_register_tracers",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "trio_grains"
"""The pluggy project name, which is also the entry-point group plugins are found under."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks the hook specifications below. Plugins do not need it."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function as a hook implementation: ``@hookimpl`` or
``@hookimpl(tryfirst=True)``. Re-exported as ``trio_grains.hookimpl``."""


# --- providers -------------------------------------------------------------------------


@hookspec
def grains_register_storage(registry: ProviderRegistry[StorageFactory]) -> None:
    """Register grain storage providers by name.

    Called once per silo, while its plugins are loaded and before it starts. Call
    ``registry.register(name, factory)`` for each provider the plugin offers; the silo's
    configuration picks one by that name (``[storage.default] provider = "<name>"``).

    ``factory(context, options)`` is called when the silo starts, with a
    :class:`~trio_grains.hookspecs.ProviderContext` (the configured instance name, the silo
    and cluster, the silo's converter) and the ``options`` table of that provider's
    configuration. It must return an async context manager that yields the provider and
    releases its resources on exit; do all I/O there, not in the hook. The provider
    implements :class:`~trio_grains.GrainStorage` (``read`` / ``write`` / ``clear`` over
    bytes with ETags); check it with :func:`trio_grains.testing.check_grain_storage`.

    Example::

        @contextlib.asynccontextmanager
        async def open_redis_storage(context, options):
            async with await connect(options["url"]) as conn:
                yield RedisStorage(conn, converter=context.converter)

        @hookimpl
        def grains_register_storage(registry):
            registry.register("redis", open_redis_storage)
    """


@hookspec
def grains_register_streams(registry: ProviderRegistry[StreamProviderFactory]) -> None:
    """Register stream providers by name.

    Called once per silo, while its plugins are loaded and before it starts. Call
    ``registry.register(name, factory)`` for each stream provider the plugin offers; the
    silo's configuration picks one by that name (``[streams.default] provider = "<name>"``).

    The factory has the same shape as a storage factory: ``factory(context, options)``
    returns an async context manager yielding the provider, entered when the silo starts.
    The narrow adapter a stream provider implements (publish a batch, receive a batch from a
    partition, acknowledge) is specified in a later issue; the runtime owns pulling agents,
    backpressure and delivery.

    Example::

        @contextlib.asynccontextmanager
        async def open_jetstream(context, options):
            async with connect_jetstream(options["servers"]) as js:
                yield JetStreamAdapter(js, prefix=context.cluster_id)

        @hookimpl
        def grains_register_streams(registry):
            registry.register("jetstream", open_jetstream)
    """


@hookspec
def grains_register_reminder_tables(registry: ProviderRegistry[ReminderTableFactory]) -> None:
    """Register reminder-table providers by name.

    Called once per silo, while its plugins are loaded. Call
    ``registry.register(name, factory)``; the silo's configuration picks one by that name
    (``[reminders] provider = "<name>"``; the built-in ``memory`` table when not set). The
    factory has the shape of a storage factory: ``factory(context, options)`` returns an
    async context manager yielding a :class:`~trio_grains.ReminderTable`.

    The built-in plugins register ``memory`` and ``sqlite`` this way; check a table of
    your own with :func:`trio_grains.testing.check_reminder_table`.

    Example::

        @hookimpl
        def grains_register_reminder_tables(registry):
            registry.register("redis", open_redis_reminder_table)
    """


@hookspec
def grains_register_clustering(registry: ProviderRegistry[ClusteringFactory]) -> None:
    """Register clustering providers by name.

    Called once per silo or client, while its plugins are loaded. Call
    ``registry.register(name, factory)``; the configuration picks one by that name
    (``[clustering] provider = "<name>"``; without a ``[clustering]`` table the silo runs
    alone). ``factory(context, options)`` returns an async context manager yielding a
    :class:`~trio_grains.ClusterBackend`: the cluster's membership table, its grain
    directory, and ``open_endpoint(endpoint_id)`` for the transport.

    The built-in ``memory`` provider joins silos of one process (options:
    ``{"cluster": MemoryCluster()}``, shared by them); the ``nats`` plugin registers
    ``nats``. Check a transport of your own with
    :func:`trio_grains.testing.check_transport`.

    A membership table (:class:`~trio_grains.MembershipTable`) is compare-and-set storage of
    rows: implement ``read_row``, ``insert_row``, ``update_row``, ``delete_row`` and
    ``watch_rows`` (plus ``key_of`` if the backend restricts keys, ``row_ttl`` if it expires
    rows); the core joins, heartbeats, declares silos dead and checks every row. A grain
    directory (:class:`~trio_grains.GrainDirectory`) implements ``register``
    (create-if-absent), ``lookup``, ``unregister``, ``remove_silo`` and
    ``remove_silos_not_in``. Check them with
    :func:`trio_grains.testing.check_membership_table` and
    :func:`trio_grains.testing.check_grain_directory`.

    Example::

        @hookimpl
        def grains_register_clustering(registry):
            registry.register("redis", open_redis_cluster)
    """


@hookspec
def grains_register_services(registry: ProviderRegistry[ServiceFactory]) -> None:
    """Register silo services by name: things that run beside a silo while it serves (an
    HTTP dashboard, a metrics endpoint, an exporter, an admin API).

    Called once per silo, while its plugins are loaded. Call
    ``registry.register(name, factory)``; the silo's configuration starts a service by that
    name (``[services.dashboard] provider = "<name>"``, with its ``options``).
    ``factory(context, options)`` gets a :class:`~trio_grains.hookspecs.ServiceContext`
    (the configured instance name and the running :class:`~trio_grains.Silo`) and returns
    an async context manager: the silo enters it once it serves (joined its cluster,
    streams running) and leaves it first when it stops, before its goodbyes. A service
    runs its tasks in a nursery it opens there; an exception out of it stops the silo.

    Example::

        @hookimpl
        def grains_register_services(registry):
            registry.register("dashboard", open_dashboard)
    """


@hookspec
def grains_register_tracers(registry: ProviderRegistry[TracerFactory]) -> None:
    """Register tracing providers by name.

    Called once per silo (and client), while its plugins are loaded. Call
    ``registry.register(name, factory)``; the configuration chooses one
    (``[tracing] provider = "<name>"``, with its ``options``). ``factory(context, options)``
    returns an async context manager yielding a :class:`~trio_grains.Tracer`: the object
    the runtime asks for spans, the current trace context, and the W3C headers that carry
    it to other silos and into stream items. The silo enters it before its other
    providers and leaves it after them. ``trio-grains-otel`` registers ``otel``.

    Example::

        @hookimpl
        def grains_register_tracers(registry):
            registry.register("otel", open_otel_tracer)
    """


# --- placement -------------------------------------------------------------------------


@hookspec
def grains_register_placement(registry: PlacementRegistry) -> None:
    """Register placement directors by strategy name.

    Called once per silo, while its plugins are loaded. Call
    ``registry.register(name, director, strategy_type)`` where ``director`` is an instance of
    a :class:`~trio_grains.PlacementDirector` subclass (sync ``choose_silo``) and
    ``strategy_type`` the frozen :class:`~trio_grains.PlacementStrategy` subclass whose
    class-level ``name`` is ``name`` (optional; it lets the strategy be chosen by name in
    the configuration's ``default_placement``). The registry is built once per silo, so a
    director may keep state of its own (e.g. a ``random.Random``).

    The built-in plugin ``trio_grains.builtin.placement`` registers ``random``,
    ``prefer-local``, ``hash-based``, ``activation-count`` and ``silo-role`` this way.

    Example::

        @attrs.frozen
        class NearDataPlacement(PlacementStrategy):
            name: ClassVar[str] = "near-data"
            region: str

        class NearDataDirector(PlacementDirector):
            def choose_silo(self, strategy, target, silos):
                near = [s for s in silos if strategy.region in s.roles]
                return (near or silos)[0]

        @hookimpl
        def grains_register_placement(registry):
            registry.register("near-data", NearDataDirector(), NearDataPlacement)
    """


# --- grains and values -----------------------------------------------------------------


@hookspec
def grains_register_grain_classes(registry: GrainClassRegistry) -> None:
    """Contribute grain classes for the silo to host.

    Called once per silo when it builds its catalog of grain types, in addition to the
    classes given to ``open_silo(grains=...)`` and listed in the configuration. Call
    ``registry.register(cls)`` for each grain class; a grain type name claimed twice is a
    :class:`~trio_grains.GrainTypeError`.

    Example::

        @hookimpl
        def grains_register_grain_classes(registry):
            registry.register(AuditLogGrain)
    """


@hookspec
def grains_configure_converter(converter: cattrs.Converter) -> None:
    """Teach the silo's cattrs converter about your types.

    Called once per silo on its converter (one converter per silo, used for grain call
    arguments and results, persistent state and stream events), after trio-grains' own hooks
    are installed. Register structure / unstructure hooks on ``converter``; implementations
    are called in plugin order, and with cattrs a hook registered later wins, so a
    third-party plugin can override a built-in one. Do not replace the converter.

    Example::

        @hookimpl
        def grains_configure_converter(converter):
            converter.register_unstructure_hook(Money, lambda m: f"{m.amount} {m.currency}")
            converter.register_structure_hook(Money, lambda text, _: Money.parse(text))
    """
