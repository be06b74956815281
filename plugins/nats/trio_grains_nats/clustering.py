"""The ``nats`` clustering provider: membership, grain directory and transport over NATS.

One connection per silo (or client) carries everything:

* membership: :class:`~trio_grains_nats.membership.KvMembershipTable`, KV bucket
  ``grains-membership-<cluster>``;
* grain directory: :class:`~trio_grains_nats.directory.KvGrainDirectory`, KV bucket
  ``grains-directory-<cluster>``;
* transport: each silo's endpoint subscribes to its address ``<subject_prefix>.silo.<token>``,
  where the token is the silo id escaped into one subject token
  (:func:`~trio_grains_nats.membership.encode_token`: any string, reversibly); a client's
  to ``<subject_prefix>.client.<name token>.<id token>``, apart from the silos, so that a
  server's permissions can let clients publish to silos only and receive on their own
  name's addresses only (``docs/security.md``). Messages are core NATS publishes: at most
  once, in order between two endpoints, dropped when nobody listens. A reply goes only to
  an address of one of these two shapes (:meth:`NatsTransport.is_endpoint_address`).

Options (``[clustering] provider = "nats"``; see ``docs/clustering-nats.md``): ``servers``,
the credential and TLS options of the ``jetstream`` stream provider, ``subject_prefix``,
``replicas``, ``storage``, ``entry_ttl``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import trio
from nats.js.api import StorageType

from trio_grains import (
    ClusterBackend,
    ConfigError,
    MessageTooLargeError,
    ProviderContext,
    Transport,
    TransportClosedError,
    TransportError,
)

from ._options import (
    CONNECT_OPTIONS,
    ConnectOptions,
    parse_connect_options,
    parse_storage_type_option,
    unreachable_error,
)
from .client import (
    Connection,
    ConnectionClosedError,
    NatsConnectionError,
    NatsError,
    PayloadSubscription,
)
from .directory import KvGrainDirectory, directory_bucket_name
from .membership import KvMembershipTable, decode_token, encode_token

__all__ = [
    "ENDPOINT_MAX_PENDING",
    "NatsCluster",
    "NatsClusterConfig",
    "NatsTransport",
    "open_nats_cluster",
    "parse_cluster_options",
]

DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)
DEFAULT_ENTRY_TTL = 30.0
ENDPOINT_MAX_PENDING = 262_144
"""Messages an endpoint buffers before the connection's reader waits for its consumer."""
RECEIVE_BATCH = 48
"""The most messages :meth:`NatsTransport.receive_batch` returns at once.

After a full batch the next take yields first, so the tasks a batch woke (turns,
callers) run and their messages leave before the next batch is handled: two silos
exchanging calls then work at the same time instead of in turn. Measured with
``benchmarks/run.py cluster --mode calls`` (100 calls in flight), median of 10
runs: 1024 gave 21k calls/s, 64 28k, 48 31k, 32 28k."""

_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_TOKEN = "[A-Za-z0-9_=-]{1,200}"  # what encode_token makes


# --- the transport ----------------------------------------------------------------------------


class NatsTransport(Transport):
    """An endpoint on a NATS connection; get one from :meth:`NatsCluster.open_endpoint`.

    Receives through one subscription on :attr:`address`, in batches (a
    :class:`~trio_grains_nats.client.PayloadSubscription`: the messenger's receive loop
    wakes once per read from the socket, not once per message); sends are core NATS
    publishes (:meth:`~trio_grains_nats.Connection.publish` / ``publish_nowait``), which
    the connection's writer sends together.
    """

    def __init__(
        self,
        nc: Connection,
        address: str,
        sub: PayloadSubscription,
        endpoints: re.Pattern[str],
    ) -> None:
        self._nc = nc
        self._address = address
        self._sub = sub
        self._closed = False
        self._endpoints = endpoints

    def __repr__(self) -> str:
        return f"<NatsTransport {self._address!r}{' closed' if self._closed else ''}>"

    @property
    def address(self) -> str:
        return self._address

    @property
    def max_message_size(self) -> int:
        return self._nc.max_payload

    def is_endpoint_address(self, address: str) -> bool:
        return self._endpoints.fullmatch(address) is not None

    def _closed_error(self, cause: BaseException | None = None) -> TransportClosedError:
        why = f": {cause}" if cause is not None else ""
        return TransportClosedError(f"endpoint {self._address!r} is closed{why}")

    def _check(self, message: bytes) -> None:
        if self._closed:
            raise self._closed_error()
        limit = self._nc.max_payload
        if len(message) > limit:
            raise MessageTooLargeError(
                f"a message of {len(message)} bytes is larger than the NATS server's "
                f"max_payload of {limit} bytes"
            )

    async def send(self, address: str, message: bytes) -> None:
        self._check(message)
        try:
            await self._nc.publish(address, message)
        except ConnectionClosedError as exc:
            raise self._closed_error(exc) from exc

    def send_nowait(self, address: str, message: bytes) -> None:
        self._check(message)
        try:
            self._nc.publish_nowait(address, message)
        except ConnectionClosedError as exc:
            raise self._closed_error(exc) from exc

    async def receive(self) -> bytes:
        return (await self._receive(1))[0]

    async def receive_batch(self) -> list[bytes]:
        return await self._receive(RECEIVE_BATCH)

    async def _receive(self, limit: int) -> list[bytes]:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise self._closed_error()
        try:
            return await self._sub.next_batch(limit)
        except ConnectionClosedError as exc:
            raise self._closed_error(exc) from exc

    async def _close(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True), contextlib.suppress(NatsError):
            await self._sub.unsubscribe()


# --- the backend ------------------------------------------------------------------------------


@attrs.define(eq=False)
class NatsCluster(ClusterBackend):
    """Membership, directory and transport of one cluster on the connection *nc*.

    Open it with :meth:`open` (or through the ``nats`` provider, :func:`open_nats_cluster`).
    Holds no resources of its own beyond the endpoints' subscriptions: it lives as long as
    *nc*.
    """

    nc: Connection
    subject_prefix: str
    _membership: KvMembershipTable
    _directory: KvGrainDirectory
    _endpoints: set[str] = attrs.field(factory=set, init=False)
    _endpoint_re: re.Pattern[str] = attrs.field(init=False)

    @_endpoint_re.default
    def _endpoint_pattern(self) -> re.Pattern[str]:
        prefix = re.escape(self.subject_prefix)
        return re.compile(
            rf"{prefix}\.(?:silo\.{_TOKEN}|peer\.{_TOKEN}|client\.{_TOKEN}\.{_TOKEN})"
        )

    @classmethod
    async def open(
        cls,
        nc: Connection,
        cluster_id: str,
        *,
        subject_prefix: str | None = None,
        replicas: int = 1,
        storage: StorageType = StorageType.FILE,
        entry_ttl: float = DEFAULT_ENTRY_TTL,
    ) -> NatsCluster:
        """Open (creating the KV buckets if needed) the cluster *cluster_id* on *nc*;
        *subject_prefix* defaults to ``grains.<cluster_id>``."""
        directory_bucket_name(cluster_id)  # ConfigError for a name no bucket can have
        js = nc.jetstream()
        membership = await KvMembershipTable.open(
            js, cluster_id, entry_ttl=entry_ttl, replicas=replicas, storage=storage
        )
        directory = await KvGrainDirectory.open(js, cluster_id, replicas=replicas, storage=storage)
        prefix = f"grains.{cluster_id}" if subject_prefix is None else subject_prefix
        return cls(nc, prefix, membership, directory)

    @property
    def membership(self) -> KvMembershipTable:
        return self._membership

    @property
    def directory(self) -> KvGrainDirectory:
        return self._directory

    def address_of(self, endpoint_id: str) -> str:
        """The subject the endpoint *endpoint_id* receives on."""
        return f"{self.subject_prefix}.silo.{encode_token(endpoint_id)}"

    def endpoint_id_of(self, address: str) -> str | None:
        """The endpoint id of an address of this cluster, ``None`` for other subjects."""
        head = f"{self.subject_prefix}.silo."
        if not address.startswith(head) or "." in address[len(head) :]:
            return None
        try:
            return decode_token(address[len(head) :])
        except ValueError:
            return None

    def open_endpoint(
        self, endpoint_id: str
    ) -> contextlib.AbstractAsyncContextManager[NatsTransport]:
        return self._open(endpoint_id, self.address_of(endpoint_id))

    def open_peer_endpoint(
        self, endpoint_id: str
    ) -> contextlib.AbstractAsyncContextManager[NatsTransport]:
        """A silo's peer endpoint (the in-cluster directory): ``<prefix>.peer.<id token>``,
        a subject the client user of ``docs/security.md`` may not publish to."""
        address = f"{self.subject_prefix}.peer.{encode_token(endpoint_id)}"
        return self._open(f"{endpoint_id}\x00peer", address)

    def open_client_endpoint(
        self, client_name: str, endpoint_id: str
    ) -> contextlib.AbstractAsyncContextManager[NatsTransport]:
        """A client's endpoint: ``<prefix>.client.<name token>.<id token>``."""
        address = f"{self.subject_prefix}.client.{encode_token(client_name)}"
        return self._open(endpoint_id, f"{address}.{encode_token(endpoint_id)}")

    @contextlib.asynccontextmanager
    async def _open(self, endpoint_id: str, address: str) -> AsyncIterator[NatsTransport]:
        if endpoint_id in self._endpoints:
            raise TransportError(f"endpoint {endpoint_id!r} is already open on this connection")
        try:
            sub = await self.nc.subscribe_payloads(
                address, max_pending=ENDPOINT_MAX_PENDING, slow_consumer="block"
            )
        except ConnectionClosedError as exc:
            raise TransportClosedError(f"cannot open endpoint {address!r}: {exc}") from exc
        transport = NatsTransport(self.nc, address, sub, self._endpoint_re)
        self._endpoints.add(endpoint_id)
        try:
            try:
                await self.nc.flush()  # the server knows the subscription: it receives now
            except ConnectionClosedError as exc:
                raise TransportClosedError(f"cannot open endpoint {address!r}: {exc}") from exc
            yield transport
        finally:
            self._endpoints.discard(endpoint_id)
            await transport._close()


# --- the provider -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NatsClusterConfig(ConnectOptions):
    """The ``nats`` clustering provider's options, validated (:func:`parse_cluster_options`)."""

    subject_prefix: str
    replicas: int = 1
    storage: StorageType = StorageType.FILE
    entry_ttl: float = DEFAULT_ENTRY_TTL


KNOWN_OPTIONS = frozenset({"subject_prefix", "replicas", "storage", "entry_ttl", *CONNECT_OPTIONS})


def parse_cluster_options(cluster_id: str, options: Mapping[str, Any]) -> NatsClusterConfig:
    """Validate the ``[clustering] options`` of the ``nats`` provider for *cluster_id*.

    Raises :class:`~trio_grains.ConfigError` naming an unknown key (and listing the valid
    ones) or a key whose value has the wrong type.
    """

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(
            f"[clustering] option {key!r} of the nats provider must be {what}, got {options[key]!r}"
        )

    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(
            f"[clustering] the nats clustering provider has no option "
            f"{', '.join(map(repr, unknown))}; options: {', '.join(sorted(KNOWN_OPTIONS))}"
        )
    directory_bucket_name(cluster_id)  # the cluster id names KV buckets
    kwargs = parse_connect_options(options, bad, allow_empty_servers=False)
    kwargs.setdefault("servers", DEFAULT_SERVERS)
    prefix = options.get("subject_prefix", f"grains.{cluster_id}")
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise bad("subject_prefix", "subject tokens of letters, digits, '-', '_' joined by '.'")
    kwargs["subject_prefix"] = prefix
    if "replicas" in options:
        value = options["replicas"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("replicas", "an integer >= 1")
        kwargs["replicas"] = value
    if "storage" in options:
        kwargs["storage"] = parse_storage_type_option(options["storage"], bad)
    if "entry_ttl" in options:
        value = options["entry_ttl"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise bad("entry_ttl", "a positive number of seconds")
        kwargs["entry_ttl"] = float(value)
    return NatsClusterConfig(**kwargs)


@contextlib.asynccontextmanager
async def open_nats_cluster(
    context: ProviderContext, options: Mapping[str, Any]
) -> AsyncIterator[NatsCluster]:
    """The ``nats`` clustering provider's factory (registered by the ``nats`` plugin)."""
    config = parse_cluster_options(context.cluster_id, options)
    async with contextlib.AsyncExitStack() as stack:
        try:
            nc = await stack.enter_async_context(
                config.connect(name=f"{context.silo_name} clustering")
            )
        except NatsConnectionError as exc:
            raise unreachable_error("[clustering]", config.servers, exc) from exc
        yield await NatsCluster.open(
            nc,
            context.cluster_id,
            subject_prefix=config.subject_prefix,
            replicas=config.replicas,
            storage=config.storage,
            entry_ttl=config.entry_ttl,
        )
