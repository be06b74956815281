"""The plugin manager: one per silo, built by :func:`load_plugins`.

Loading order: the built-in plugins (``trio_grains._builtin``), then every installed
distribution's ``trio_grains`` entry point (unless ``PluginsConfig.load_entry_points`` is
off), then plugins passed in code. Names in ``PluginsConfig.block`` and in
``TRIO_GRAINS_BLOCK_PLUGINS`` (comma-separated) are blocked before anything is loaded;
essential built-ins cannot be blocked. ``TRIO_GRAINS_TRACE_HOOKS=1`` logs every hook call to
the ``trio_grains.plugins`` logger at DEBUG.

The registration hooks are not called through ``pm.hook``: :func:`_call_hook` calls each
implementation itself, in plugin order, telling the registry which plugin is registering, so
that errors can name plugins.

May import: layers 0-7, ``_builtin`` (the list of built-ins) and ``hookspecs``. Not the silo
or the client, which load their plugins through it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
import pluggy

from . import hookspecs
from ._builtin import BUILTIN_PLUGINS
from ._config import PluginsConfig
from ._exceptions import GrainsError, PluginError
from ._placement import PlacementRegistry
from ._registry import (
    ClusteringFactory,
    ProviderRegistry,
    ReminderTableFactory,
    ServiceFactory,
    StorageFactory,
    StreamProviderFactory,
    TracerFactory,
)

if TYPE_CHECKING:
    from ._grain import GrainClassRegistry

__all__ = [
    "BLOCK_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "TRACE_ENV_VAR",
    "Plugins",
    "load_plugins",
]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BLOCK_ENV_VAR = "TRIO_GRAINS_BLOCK_PLUGINS"
TRACE_ENV_VAR = "TRIO_GRAINS_TRACE_HOOKS"

logger = logging.getLogger("trio_grains.plugins")

_Attribution = Callable[[str], contextlib.AbstractContextManager[None]]


@attrs.define(eq=False)
class Plugins:
    """A silo's loaded plugins and the registries they filled.

    * ``manager``: the silo's own :class:`pluggy.PluginManager`.
    * ``storage`` / ``streams``: provider factories by name.
    * ``placement``: placement directors by strategy name.
    * ``reminders``: reminder-table factories by name.
    * ``clustering``: clustering-provider factories by name.
    * ``services``: service factories by name (things that run beside a silo).
    * ``tracers``: tracing-provider factories by name.
    """

    manager: pluggy.PluginManager
    storage: ProviderRegistry[StorageFactory]
    streams: ProviderRegistry[StreamProviderFactory]
    placement: PlacementRegistry
    reminders: ProviderRegistry[ReminderTableFactory]
    clustering: ProviderRegistry[ClusteringFactory]
    services: ProviderRegistry[ServiceFactory]
    tracers: ProviderRegistry[TracerFactory]

    def configure_converter(self, converter: cattrs.Converter) -> None:
        """Let every plugin add structure / unstructure hooks to *converter*."""
        _call_hook(self.manager, "grains_configure_converter", {"converter": converter})

    def register_grain_classes(self, registry: GrainClassRegistry) -> None:
        """Let every plugin contribute grain classes to *registry*.

        If the registry has a ``registering_for(plugin_name)`` context manager,
        registrations are attributed to plugins as for providers.
        """
        _call_hook(
            self.manager,
            "grains_register_grain_classes",
            {"registry": registry},
            attribute_to=getattr(registry, "registering_for", None),
        )

    def names(self) -> list[str]:
        """The names of the loaded plugins, in registration order."""
        return [name for name, plugin in self.manager.list_name_plugin() if plugin is not None]

    def blocked(self) -> list[str]:
        """The plugin names that are blocked."""
        return [name for name, plugin in self.manager.list_name_plugin() if plugin is None]


def load_plugins(config: PluginsConfig | None = None, *, extra: Sequence[object] = ()) -> Plugins:
    """Create a plugin manager, load plugins as *config* says, and fill the registries.

    *extra*: plugin objects or modules with ``@hookimpl`` functions, registered last (e.g.
    ``open_silo(plugins=[...])`` or a test's plugin). One already loaded is skipped.
    """
    config = PluginsConfig() if config is None else config
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if _env_flag(TRACE_ENV_VAR):
        pm.trace.root.setwriter(lambda message: logger.debug("%s", message.rstrip("\n")))
        pm.enable_tracing()

    _block(pm, config)
    for builtin in BUILTIN_PLUGINS:
        if not pm.is_blocked(builtin.name):
            _register(pm, importlib.import_module(builtin.module), builtin.name)
    if config.load_entry_points:
        _load_entry_points(pm)
    for plugin in extra:
        if isinstance(plugin, type):
            raise PluginError(
                f"plugin {plugin.__qualname__} is a class; pass an instance "
                f"({plugin.__qualname__}()) or a module"
            )
        if not pm.is_registered(plugin):
            _register(pm, plugin, None)
    _check_pending(pm)

    plugins = Plugins(
        manager=pm,
        storage=ProviderRegistry("storage provider"),
        streams=ProviderRegistry("stream provider"),
        placement=PlacementRegistry(),
        reminders=ProviderRegistry("reminder table"),
        clustering=ProviderRegistry("clustering provider"),
        services=ProviderRegistry("service"),
        tracers=ProviderRegistry("tracing provider"),
    )
    registration_hooks: list[tuple[str, ProviderRegistry[Any]]] = [
        ("grains_register_storage", plugins.storage),
        ("grains_register_streams", plugins.streams),
        ("grains_register_placement", plugins.placement),
        ("grains_register_reminder_tables", plugins.reminders),
        ("grains_register_clustering", plugins.clustering),
        ("grains_register_services", plugins.services),
        ("grains_register_tracers", plugins.tracers),
    ]
    for hook_name, registry in registration_hooks:
        _call_hook(pm, hook_name, {"registry": registry}, attribute_to=registry.registering_for)
    return plugins


# --- loading ---------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _block(pm: pluggy.PluginManager, config: PluginsConfig) -> None:
    from_env = [name.strip() for name in os.environ.get(BLOCK_ENV_VAR, "").split(",")]
    essential = {builtin.name for builtin in BUILTIN_PLUGINS if builtin.essential}
    for source, names in [("plugins.block", config.block), (BLOCK_ENV_VAR, from_env)]:
        for name in names:
            if not name:
                continue
            if name in essential:
                raise PluginError(
                    f"plugin {name!r} is essential and cannot be blocked; remove it from {source}"
                )
            pm.set_blocked(name)


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {name or pm.get_canonical_name(plugin)!r} is not a valid trio-grains "
            f"plugin: {exc}"
        ) from exc
    except ValueError as exc:
        raise PluginError(f"cannot register plugin {plugin!r}: {exc}") from exc


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    # One entry point at a time through pluggy, so a failure can name its distribution.
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                logger.warning(
                    "plugin %r is provided by both %s and %s; only the first is loaded",
                    ep.name,
                    seen[ep.name],
                    dist.name,
                )
                continue
            seen[ep.name] = dist.name
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            where = f"entry point '{ep.name} = {ep.value}' of {dist.name} {dist.version}"
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({where}) is not a valid trio-grains plugin: {exc}. "
                    f"Upgrade {dist.name}, or block it with {BLOCK_ENV_VAR}={ep.name}"
                ) from exc
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({where}) failed to load: "
                    f"{type(exc).__name__}: {exc}. Reinstall or upgrade {dist.name}, or block "
                    f"it with {BLOCK_ENV_VAR}={ep.name}"
                ) from exc


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = [name for name in vars(pm.hook) if not name.startswith("_")]
        specified = [name for name in known if getattr(pm.hook, name).has_spec()]
        for name in known:
            hook = getattr(pm.hook, name)
            if hook.has_spec():
                continue
            for impl in hook.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, specified, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise PluginError(
                    f"plugin {impl.plugin_name!r} implements {name!r}, which is not a "
                    f"trio-grains hook; {hint}See trio_grains.hookspecs for the hooks, or "
                    "mark it @hookimpl(optionalhook=True) if it is meant for another version"
                ) from exc
        raise PluginError(f"invalid plugin: {exc}") from exc


# --- calling hooks ---------------------------------------------------------------------


def _ordered_impls(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    """The implementations of *hook_name*: tryfirst ones, the others, then trylast ones,
    each group in plugin registration order (``get_hookimpls`` respects blocking)."""
    hook: pluggy.HookCaller = getattr(pm.hook, hook_name)
    impls = hook.get_hookimpls()
    for impl in impls:
        if impl.wrapper or impl.hookwrapper:
            raise PluginError(
                f"plugin {impl.plugin_name!r} implements {hook_name!r} as a hook wrapper, "
                "which trio-grains does not support; use a plain @hookimpl (with "
                "tryfirst=True or trylast=True to order it)"
            )
    position = {name: index for index, (name, _) in enumerate(pm.list_name_plugin())}
    impls.sort(key=lambda impl: (-impl.tryfirst, impl.trylast, position[impl.plugin_name]))
    return impls


def _call_hook(
    pm: pluggy.PluginManager,
    hook_name: str,
    kwargs: Mapping[str, object],
    *,
    attribute_to: _Attribution | None = None,
) -> None:
    """Call every implementation of a registration hook.

    *attribute_to* (a registry's ``registering_for``) is entered around each
    implementation with its plugin name, so the registry knows who registers what.

    With tracing on, the call and each implementation called are written to the tracer
    (pluggy's own hook tracing only sees calls made through ``pm.hook``).
    """
    trace = pm.trace.root.get("hook")
    trace.root.indent += 1
    trace(hook_name, dict(kwargs))
    try:
        for impl in _ordered_impls(pm, hook_name):
            _call_impl(impl, hook_name, kwargs, attribute_to, trace)
        trace("finish", hook_name, dict(kwargs))
    finally:
        trace.root.indent -= 1


def _call_impl(
    impl: pluggy.HookImpl,
    hook_name: str,
    kwargs: Mapping[str, object],
    attribute_to: _Attribution | None,
    trace: Any,
) -> None:
    args = [kwargs[name] for name in impl.argnames]
    trace.root.indent += 1
    trace("->", impl.plugin_name)
    try:
        with (
            attribute_to(impl.plugin_name) if attribute_to is not None else contextlib.nullcontext()
        ):
            result = impl.function(*args)
    except GrainsError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        trace.root.indent -= 1
    if result is not None:
        raise PluginError(
            f"plugin {impl.plugin_name!r} returned {result!r} from {hook_name}; hooks "
            "return nothing: call the registry's register(...) instead"
        )
