"""Clients: Trio programs outside the cluster that call its grains.

``async with open_client(config) as client:`` opens the clustering provider (over NATS:
one connection), a transport endpoint of its own and a watch of the membership table, and
gives references whose calls go to the grain's silo (located through the directory, placed
by a hosting silo when the grain is not active anywhere). The client hosts nothing and
does not join the membership table. Nothing it starts outlives the block.

May import: layers 0-8 (the core, streams, the cluster's client side, the plugins). Not the
silo or ``_cluster.member``: a client hosts nothing and joins nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import cattrs
import trio

from ._calls import TimeoutWheel
from ._cluster.directory import DirectoryEntry, MemoryGrainDirectory
from ._cluster.locator import Locator
from ._cluster.membership import MembershipTable
from ._cluster.messenger import Messenger
from ._cluster.routing import LEFT_GRACE, call_anywhere
from ._cluster.silo_entries import MembershipView, SiloStatus
from ._config import (
    PluginsConfig,
    ProviderConfig,
    positive_int,
    positive_seconds,
    structure_config,
)
from ._exceptions import (
    ConfigError,
    GrainCallTimeoutError,
    GrainMethodError,
    MembershipUnavailableError,
)
from ._grain import GrainInterface, class_info
from ._ids import GrainId, GrainKey, check_key_length
from ._methods import MethodInfo
from ._plugins import Plugins, load_plugins
from ._reference import GrainReference, reference_class
from ._registry import ProviderContext
from ._serialization import Codec, make_converter
from ._streams.model import StreamOptions
from ._streams.provider import StreamProvider
from ._tracing import Tracer, open_tracer

__all__ = ["Client", "ClientConfig", "ClientStatistics", "open_client"]

log = logging.getLogger("trio_grains.client")


async def fail_after_leaving(messenger: Messenger, silo_id: str) -> None:
    """Fail the calls still waiting on *silo_id*, which left the cluster, after a grace."""
    await trio.sleep(LEFT_GRACE)
    messenger.fail_calls_to(silo_id, "left")


#: the activation id of a directory cache entry a client learnt from an answer (it knows
#: the silo, not the activation)
ANSWERED_BY = "answered-by-silo"

G = TypeVar("G", bound=GrainInterface)


def _default_client_name() -> str:
    return f"client-{socket.gethostname()}-{os.getpid()}"


@attrs.frozen(kw_only=True)
class ClientConfig:
    """How a client reaches its cluster; every field but ``clustering`` has a default.

    * ``cluster_id``: the cluster to call (as the silos' ``cluster_id``).
    * ``clustering``: the clustering provider and its options, as the silos have them
      (default: ``nats`` on ``nats://127.0.0.1:4222``).
    * ``response_timeout``: how long a call waits for its reply.
    * ``streams``: stream providers to publish to, configured as the silos have them
      (``client.get_stream_provider(name)``). A client publishes; it pulls nothing.
    * ``tracing``: the tracing provider, as the silos have it: calls and publishes start
      traces (or continue the caller's) that the silos continue.
    * ``max_key_length``: the longest grain key ``get_grain`` accepts (as the silos'
      ``SiloConfig.max_key_length``: they refuse calls to longer keys).
    """

    name: str = attrs.field(factory=_default_client_name)
    cluster_id: str = "dev"
    clustering: ProviderConfig = attrs.field(factory=lambda: ProviderConfig(provider="nats"))
    response_timeout: float = attrs.field(default=30.0, validator=positive_seconds)
    streams: Mapping[str, ProviderConfig] = attrs.field(factory=dict)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    tracing: ProviderConfig | None = None
    max_key_length: int = attrs.field(default=1024, validator=positive_int)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientConfig:
        """Structure *data* (e.g. parsed TOML); :class:`ConfigError` names every bad key."""
        return structure_config(cls, data, "client")


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client, from :meth:`Client.statistics`."""

    name: str
    endpoint_id: str
    active_silos: int
    pending_calls: int
    messages_sent: int
    messages_received: int
    #: messages dropped at the client's endpoint, by reason (forged or late replies are
    #: ``unexpected_reply``); see ``docs/security.md``
    dropped_messages: Mapping[str, int] = attrs.field(factory=dict)


class Client:
    """A connection to a cluster. Get one from :func:`open_client`."""

    def __init__(self, config: ClientConfig, plugins: Plugins) -> None:
        self._config = config
        self._plugins = plugins
        self._converter = make_converter(self._reference_from_id)
        plugins.configure_converter(self._converter)
        self._codec = Codec(self._converter)
        self._endpoint_id = f"{config.name}-{secrets.token_hex(4)}"
        self._locator: Locator | None = None
        self._messenger: Messenger | None = None
        self._view_changed = trio.Event()
        self._streams: dict[str, StreamProvider] = {}
        self._tracer: Tracer | None = None

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def converter(self) -> cattrs.Converter:
        return self._converter

    @property
    def membership_view(self) -> MembershipView:
        """The latest membership view the client has seen."""
        return self._running()[0].view

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        """A reference to grain ``(type of grain_class, key)``; *grain_class* may be an
        interface (the client needs no grain classes). No I/O."""
        grain_id = GrainId.create(class_info(grain_class).grain_type, key, key_ext)
        check_key_length(grain_id.key, self._config.max_key_length)
        return reference_class(grain_class)(self, grain_id)  # type: ignore[return-value]

    def get_grain_by_id(self, grain_class: type[G], grain_id: GrainId | str) -> G:
        """A reference from a stored id (``GrainId`` or its text form)."""
        if isinstance(grain_id, str):
            grain_id = GrainId.parse(grain_id)
        return reference_class(grain_class)(self, grain_id)  # type: ignore[return-value]

    def get_stream_provider(self, name: str = "default") -> StreamProvider:
        """The stream provider configured as ``streams[name]``, for publishing::

        await client.get_stream_provider().get_stream("orders", order_id).publish(order)
        """
        try:
            return self._streams[name]
        except KeyError:
            raise ConfigError(
                f"the client has no stream provider named {name!r}; configured: "
                f"{', '.join(sorted(self._streams)) or '(none)'}. Add it to "
                "ClientConfig.streams, as the silos have it"
            ) from None

    def _reference_from_id(self, iface: type, grain_id: GrainId) -> Any:
        return self.get_grain_by_id(iface, grain_id)

    async def invoke(
        self, ref: GrainReference, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        locator, messenger = self._running()
        method = ref._info.methods.get(name)
        if method is None:
            raise GrainMethodError(f"{ref.interface.__qualname__} has no grain method {name!r}")
        return await call_anywhere(locator, messenger, ref._grain_id, method, args, kwargs)

    async def call(
        self, grain_id: GrainId | str, method: str, arguments: Mapping[str, Any] | None = None
    ) -> Any:
        """Call *method* of grain *grain_id* with keyword *arguments* as plain data (what
        the grain's annotations structure from, e.g. parsed JSON); the result comes back
        as plain data. For tools and gateways; typed code uses :meth:`get_grain`.
        """
        locator, messenger = self._running()
        if isinstance(grain_id, str):
            grain_id = GrainId.parse(grain_id)
        arguments = dict(arguments or {})
        info = _plain_method(method, tuple(sorted(arguments)))
        return await call_anywhere(locator, messenger, grain_id, info, (), arguments)

    async def wait_for_silos(self, count: int = 1) -> MembershipView:
        """Wait until at least *count* silos are ``ACTIVE``; the view that has them."""
        locator = self._running()[0]
        while len(locator.view.active()) < count:
            await self._view_changed.wait()
        await trio.lowlevel.checkpoint()
        return locator.view

    def statistics(self) -> ClientStatistics:
        locator, messenger = self._running()
        return ClientStatistics(
            name=self.name,
            endpoint_id=self._endpoint_id,
            active_silos=len(locator.view.active()),
            pending_calls=messenger.pending(),
            messages_sent=messenger.sent,
            messages_received=messenger.received,
            dropped_messages=dict(messenger.dropped),
        )

    def _running(self) -> tuple[Locator, Messenger]:
        if self._locator is None or self._messenger is None:
            raise RuntimeError("the client is not open: use 'async with open_client(...)'")
        return self._locator, self._messenger

    def _on_view(self, view: MembershipView) -> None:
        if self._locator is None or self._messenger is None:
            return  # the client is closing
        self._locator.set_view(view)  # fails the calls to silos that died or left
        self._view_changed.set()
        self._view_changed = trio.Event()

    def __repr__(self) -> str:
        return f"<Client {self._endpoint_id!r} cluster={self._config.cluster_id!r}>"


@functools.lru_cache(maxsize=256)
def _plain_method(name: str, parameters: tuple[str, ...]) -> MethodInfo:
    """A method description for :meth:`Client.call`: keyword parameters, no annotations
    (so arguments and result travel as the plain data they are)."""

    async def method(self: object, **kwargs: Any) -> Any:  # never called: a signature
        raise NotImplementedError

    method.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
        + [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in parameters]
    )
    method.__name__ = name
    return MethodInfo(name=name, func=method)


async def watch_views(
    table: MembershipTable, on_view: Callable[[MembershipView], None], retry: float = 1.0
) -> None:
    """Feed every view of *table* to *on_view*, re-opening the watch when it is lost."""
    while True:
        try:
            async with table.watch() as views:
                async for view in views:
                    on_view(view)
        except MembershipUnavailableError as exc:
            log.warning("membership watch lost: %s; retrying", exc)
        await trio.sleep(retry)


@contextlib.asynccontextmanager
async def open_client(
    config: ClientConfig | None = None, *, plugins: Sequence[object] = ()
) -> AsyncIterator[Client]:
    """Connect to a cluster for the duration of an ``async with`` block."""
    config = config or ClientConfig()
    loaded = load_plugins(config.plugins, extra=plugins)
    client = Client(config, loaded)
    factory = loaded.clustering.get(config.clustering.provider)
    ctx = ProviderContext(
        name="default",
        silo_name=config.name,
        cluster_id=config.cluster_id,
        converter=client._converter,
        clustering=config.clustering,
    )
    async with (
        open_tracer(loaded.tracers, config.tracing, attrs.evolve(ctx, name="tracing")) as tracer,
        factory(ctx, dict(config.clustering.options)) as backend,
        backend.open_client_endpoint(config.name, client._endpoint_id) as transport,
        trio.open_nursery() as nursery,
    ):
        wheel = TimeoutWheel(config.response_timeout, _timeout_error)
        messenger: Messenger | None = None

        def silo_gone(silo_id: str, view: MembershipView) -> None:
            if messenger is None:
                return
            if view.status_of(silo_id) is SiloStatus.DEAD:
                messenger.fail_calls_to(silo_id, "died")
            else:  # it left: it answers what it holds while it lingers
                nursery.start_soon(fail_after_leaving, messenger, silo_id)

        locator = Locator(
            membership=backend.membership,
            # A client never reads the grain directory (the in-cluster one is reachable
            # from silos only): on a cache miss a hosting silo locates the grain for it
            # (LOCATE), as an Orleans gateway does. This one stays empty.
            directory=MemoryGrainDirectory(),
            placement=loaded.placement,
            default_strategy=loaded.placement.strategy_for_name("random"),
            hosted=None,
            self_id=None,
            on_gone=silo_gone,
        )
        messenger = Messenger(
            transport,
            client._codec,
            wheel,
            client._endpoint_id,
            locator.address_of,
            tracer=tracer,
        )  # (a client's endpoint takes no requests, so its reply-address limit never applies)

        def located(grain_id: GrainId, silo_id: str) -> None:
            locator.directory.cache.put(DirectoryEntry(grain_id, silo_id, ANSWERED_BY))

        messenger.on_located = located
        client._tracer = tracer
        client._locator, client._messenger = locator, messenger
        locator.set_view(await backend.membership.snapshot())
        nursery.start_soon(wheel.run)
        await nursery.start(messenger.run)
        nursery.start_soon(watch_views, backend.membership, client._on_view)
        async with contextlib.AsyncExitStack() as stack:
            await _open_streams(client, ctx, loaded, stack, nursery)
            try:
                yield client
            finally:
                client._locator = client._messenger = None
        # only now: the stream adapters closed above still needed their connections' tasks
        nursery.cancel_scope.cancel()


async def _open_streams(
    client: Client,
    ctx: ProviderContext,
    loaded: Plugins,
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
) -> None:
    for name, pconf in client._config.streams.items():
        options, adapter_options = StreamOptions.split(name, dict(pconf.options))
        factory = loaded.streams.get(pconf.provider)
        adapter = await stack.enter_async_context(
            factory(attrs.evolve(ctx, name=name), adapter_options)
        )
        provider = StreamProvider(
            name, adapter, options, codec=client._codec, tracer=client._tracer, owned=()
        )
        await nursery.start(provider.run)
        client._streams[name] = provider


def _timeout_error(call: Any, timeout: float) -> Exception:
    return GrainCallTimeoutError(
        f"no reply from {call.describe()} within {timeout} s (response_timeout): its silo "
        "may be overloaded or unreachable; raise ClientConfig.response_timeout if it is slow"
    )
