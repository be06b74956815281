"""Typed registries that plugins fill from their ``grains_register_*`` hooks.

A hook never returns a provider: it calls ``registry.register(name, factory)``. The registry
remembers which plugin registered each name (the plugin manager tells it while it calls each
hook implementation), so a name claimed twice is an error naming both plugins, and an
unknown name is an error listing the names that exist.

A *provider factory* is a plain callable ``factory(context, options)`` that returns an async
context manager; the silo enters it with ``async with`` inside its nursery when it starts and
leaves it, in reverse order, when it stops. The hook itself stays sync and does no I/O.

May import: values, ids and config. Not placement, which builds on the registries.
Type names only from: the silo (:class:`ServiceContext` hands a service the ``Silo`` it runs in).
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import attrs
import cattrs

from ._config import ProviderConfig
from ._exceptions import PluginError

if TYPE_CHECKING:
    from ._silo import Silo

__all__ = [
    "UNATTRIBUTED",
    "ProviderContext",
    "ProviderFactory",
    "ClusteringFactory",
    "ServiceContext",
    "ServiceFactory",
    "ProviderRegistry",
    "StorageFactory",
    "ReminderTableFactory",
    "StreamProviderFactory",
    "TracerFactory",
]

F = TypeVar("F")

UNATTRIBUTED = "(no plugin)"
"""The plugin name recorded for a registration made outside any hook (e.g. in a test)."""

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


@attrs.frozen
class ProviderContext:
    """What a provider factory is told about where it runs.

    * ``name``: the configured provider instance name (``"default"`` for
      ``[storage.default]``), not the provider's registered name.
    * ``silo_name`` / ``cluster_id``: the silo opening the provider.
    * ``converter``: the silo's cattrs converter (one per silo), for turning state and
      events into plain data.
    * ``clustering``: the silo's (or client's) clustering provider configuration, or
      ``None``: a provider that shares a backend with it can refuse settings that would
      collide (a JetStream stream whose subjects would capture the cluster's calls).
    """

    name: str
    silo_name: str
    cluster_id: str
    converter: cattrs.Converter
    clustering: ProviderConfig | None = None


ProviderFactory: TypeAlias = Callable[
    [ProviderContext, Mapping[str, Any]], contextlib.AbstractAsyncContextManager[Any]
]
"""``factory(context, options) -> async context manager`` yielding the provider.

``options`` is the ``options`` table of the provider's configuration
(:attr:`trio_grains.ProviderConfig.options`). Validate it eagerly and raise
:class:`~trio_grains.ConfigError` naming the bad key.
"""

StorageFactory: TypeAlias = ProviderFactory
"""A factory yielding a :class:`~trio_grains.GrainStorage` (the storage contract)."""

StreamProviderFactory: TypeAlias = ProviderFactory
"""A factory for a stream provider. The stream adapter contract comes in a later issue."""

ReminderTableFactory: TypeAlias = ProviderFactory
"""A factory yielding a :class:`~trio_grains.ReminderTable`."""

ClusteringFactory: TypeAlias = ProviderFactory
"""A factory yielding a :class:`~trio_grains.ClusterBackend` (membership table, grain
directory and transport endpoints of one cluster)."""


TracerFactory: TypeAlias = ProviderFactory
"""A factory yielding a :class:`~trio_grains.Tracer` (``[tracing] provider = ...``): the
silo or client enters it before anything else and leaves it last, so every span of its
lifetime reaches the tracer. ``context.silo_name`` is the client's name for a client."""


@attrs.frozen
class ServiceContext:
    """What a service factory is told: its configured instance name (``"dashboard"`` for
    ``[services.dashboard]``) and the running :class:`~trio_grains.Silo` it serves beside
    (statistics, membership view, grain references, stream providers)."""

    name: str
    silo: Silo


ServiceFactory: TypeAlias = Callable[
    [ServiceContext, Mapping[str, Any]], contextlib.AbstractAsyncContextManager[Any]
]
"""``factory(context, options) -> async context manager``: the service runs while it is
entered (start its tasks in a nursery of its own there)."""


class ProviderRegistry(Generic[F]):
    """Names -> factories of one kind (``"storage provider"``, ``"stream provider"``, ...).

    Plugins call :meth:`register` from their registration hook; the silo calls :meth:`get`
    with the name from its configuration.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._entries: dict[str, tuple[F, str]] = {}
        self._current_plugin: str | None = None

    @property
    def kind(self) -> str:
        """What this registry holds, as used in error messages (``"storage provider"``)."""
        return self._kind

    def __repr__(self) -> str:
        names = ", ".join(self.names()) or "(none)"
        return f"<{type(self).__name__} {self._kind!r}: {names}>"

    @contextlib.contextmanager
    def registering_for(self, plugin_name: str) -> Iterator[None]:
        """Attribute every :meth:`register` call inside the block to *plugin_name*.

        Used by the plugin manager around each hook implementation it calls.
        """
        previous = self._current_plugin
        self._current_plugin = plugin_name
        try:
            yield
        finally:
            self._current_plugin = previous

    def register(self, name: str, factory: F) -> None:
        """Make *factory* available under *name*.

        Names hold letters, digits, ``-``, ``_`` and ``.``. A name may be registered once
        per silo: a second registration, from any plugin, raises
        :class:`~trio_grains.PluginError` naming both plugins.
        """
        plugin = self._current_plugin or UNATTRIBUTED
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise PluginError(
                f"plugin {plugin!r} registered {self._kind} name {name!r}; names must be "
                "non-empty and hold only letters, digits, '-', '_' and '.'"
            )
        self._check_entry(name, factory, plugin)
        if name in self._entries:
            first = self._entries[name][1]
            raise PluginError(
                f"{self._kind} {name!r} is registered by both {first!r} and {plugin!r}; "
                f"block one of them with TRIO_GRAINS_BLOCK_PLUGINS={plugin}"
            )
        self._entries[name] = (factory, plugin)

    def _check_entry(self, name: str, factory: F, plugin: str) -> None:
        """Reject what cannot be registered; subclasses check their own kind of value."""
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registered {self._kind} {name!r} with {factory!r}, which "
                "is not callable; register the factory itself, e.g. "
                f"registry.register({name!r}, open_my_provider)"
            )

    def get(self, name: str) -> F:
        """The factory registered under *name*.

        Raises :class:`~trio_grains.PluginError` listing the available names if none is.
        """
        try:
            return self._entries[name][0]
        except KeyError:
            raise PluginError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def plugin_of(self, name: str) -> str:
        """The name of the plugin that registered *name* (``PluginError`` if none did)."""
        try:
            return self._entries[name][1]
        except KeyError:
            raise PluginError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        message = f"unknown {self._kind} {name!r}; available: {', '.join(names) or '(none)'}."
        close = difflib.get_close_matches(str(name), names, n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        return (
            f"{message} Install the plugin that provides it "
            f"(e.g. pip install trio-grains-{name}) or fix the name."
        )
