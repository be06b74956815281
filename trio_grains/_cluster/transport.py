"""The cluster transport contract, the clustering backend contract, and their in-memory forms.

A cluster's silos and clients exchange messages (grain calls and their replies) through a
:class:`Transport`: one *endpoint* per silo or client, reachable at its ``address`` (over
NATS, the subject ``<prefix>.silo.<endpoint id>``). Messages are opaque ``bytes`` to the
transport; the runtime correlates calls and replies itself. Delivery is best effort, as
with NATS core: a message for an address nobody listens on is dropped, and the runtime
learns of dead silos from membership.

A *clustering provider* (``grains_register_clustering``) yields a :class:`ClusterBackend`:
the cluster's shared :class:`~trio_grains.MembershipTable` and
:class:`~trio_grains.GrainDirectory`, and a way to open transport endpoints.
:class:`MemoryCluster` is the in-process backend (several silos in one Trio run); the
``nats`` plugin provides one over NATS and JetStream KV.

May import: the core up to the catalog and the dispatcher, and the cluster's ``envelope``,
``membership`` and ``directory``. Not the messenger, which builds on it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from .._exceptions import MessageTooLargeError, TransportClosedError, TransportError
from .directory import GrainDirectory, MemoryGrainDirectory
from .membership import MembershipTable, MemoryMembershipTable

__all__ = [
    "ClusterBackend",
    "MemoryCluster",
    "MemoryTransport",
    "MessageTooLargeError",
    "Transport",
    "TransportClosedError",
    "TransportError",
]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024  # NATS' default max_payload
RECEIVE_BATCH = 64  # the most messages MemoryTransport.receive_batch returns at once


class Transport(abc.ABC):
    """One endpoint of a cluster transport: send to any address, receive at :attr:`address`.

    Providers must not take timeout parameters (callers use cancel scopes) and must be safe
    to cancel. Sending to an address no endpoint listens on is not an error (the message
    is dropped).
    """

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where other endpoints send messages for this one."""

    @property
    @abc.abstractmethod
    def max_message_size(self) -> int:
        """The largest message, in bytes, :meth:`send` accepts."""

    @abc.abstractmethod
    def is_endpoint_address(self, address: str) -> bool:
        """Is *address* where an endpoint of this cluster (a silo's or a client's) receives?

        The runtime sends replies only to such addresses: a request names its reply address,
        and a silo must never publish, with its own credentials, where a message told it to
        (a stream's or a key-value bucket's subject, say). Answer from the address's shape
        (no I/O; called for every request), and say no to anything the backend itself uses
        for other purposes. The runtime bounds the length before it asks.
        """

    @abc.abstractmethod
    async def send(self, address: str, message: bytes) -> None:
        """Send *message* to *address*.

        Returns once the message is queued for sending; waits only while the outgoing
        buffer is full. Raises :class:`MessageTooLargeError` (nothing is sent) or
        :class:`TransportClosedError`.
        """

    @abc.abstractmethod
    def send_nowait(self, address: str, message: bytes) -> None:
        """:meth:`send` without waiting: raises :class:`trio.WouldBlock` when the outgoing
        buffer is full (and the errors :meth:`send` raises)."""

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """The next message sent to this endpoint, in the order it arrived.

        Raises :class:`TransportClosedError` once the endpoint is closed or lost.
        """

    async def receive_batch(self) -> list[bytes]:
        """The next messages sent to this endpoint, in the order they arrived: those
        already received (a bounded number), or else the next one.

        Optional: the default returns ``[await self.receive()]``. A provider that can take
        buffered messages without a checkpoint each should override it (the runtime's
        receive loop uses this). Like :meth:`receive`, a cancellation point that loses no
        message, and it raises :class:`TransportClosedError` once the endpoint is closed
        or lost (after the messages that arrived before).
        """
        return [await self.receive()]


class ClusterBackend(abc.ABC):
    """What a clustering provider gives silos and clients of one cluster.

    The backend is opened once per silo (or client) by its factory and lives as long as
    the silo; the tables it returns are used concurrently by the silo's tasks.
    """

    @property
    @abc.abstractmethod
    def membership(self) -> MembershipTable:
        """The cluster's membership table."""

    @property
    @abc.abstractmethod
    def directory(self) -> GrainDirectory:
        """The cluster's grain directory."""

    @abc.abstractmethod
    def open_endpoint(self, endpoint_id: str) -> AbstractAsyncContextManager[Transport]:
        """``async with backend.open_endpoint(silo_id) as transport``: an endpoint
        receiving at an address derived from *endpoint_id* until the block is left."""

    def open_peer_endpoint(self, endpoint_id: str) -> AbstractAsyncContextManager[Transport]:
        """A silo's *peer* endpoint, where only other silos send (the in-cluster grain
        directory's requests). A backend should put it where clients cannot publish (the
        ``nats`` backend uses ``<prefix>.peer.<id>``, which the client user of
        ``docs/security.md`` may not publish to). The default is :meth:`open_endpoint` of
        ``<endpoint_id>.peer``.
        """
        return self.open_endpoint(f"{endpoint_id}.peer")

    def open_client_endpoint(
        self, client_name: str, endpoint_id: str
    ) -> AbstractAsyncContextManager[Transport]:
        """The endpoint of a client named *client_name* (many clients may share a name;
        *endpoint_id* is unique). Silos never send requests to clients, only replies.

        A backend may put clients' endpoints apart from silos' (the ``nats`` backend uses
        ``<prefix>.client.<name>.<id>``, so that server permissions can let a client user
        receive on its own addresses only). The default is :meth:`open_endpoint`.
        """
        return self.open_endpoint(endpoint_id)


# --- in memory ------------------------------------------------------------------------------


@attrs.define(eq=False)
class MemoryTransport(Transport):
    """An endpoint of a :class:`MemoryCluster`; get one from ``open_endpoint``."""

    cluster: MemoryCluster
    _address: str
    _send_channel: trio.MemorySendChannel[bytes]
    _receive_channel: trio.MemoryReceiveChannel[bytes]
    _closed: bool = False
    _full_batch: bool = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def max_message_size(self) -> int:
        return self.cluster.max_message_size

    def is_endpoint_address(self, address: str) -> bool:
        return self.cluster.is_endpoint(address)

    async def send(self, address: str, message: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(address, message)

    def send_nowait(self, address: str, message: bytes) -> None:
        if self._closed:
            raise TransportClosedError(f"endpoint {self._address!r} is closed")
        if len(message) > self.cluster.max_message_size:
            raise MessageTooLargeError(
                f"a message of {len(message)} bytes is larger than the transport's maximum "
                f"of {self.cluster.max_message_size} bytes"
            )
        if address in self.cluster.cut_off or self._address in self.cluster.cut_off:
            return
        target = self.cluster._endpoints.get(address)
        if target is not None:
            target.send_nowait(bytes(message))

    async def receive(self) -> bytes:
        try:
            return await self._receive_channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosedError(f"endpoint {self._address!r} is closed") from None

    async def receive_batch(self) -> list[bytes]:
        if self._full_batch:  # the last batch was full: let other tasks run first
            self._full_batch = False
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        receive_nowait = self._receive_channel.receive_nowait
        batch: list[bytes] = []
        try:
            while len(batch) < RECEIVE_BATCH:
                batch.append(receive_nowait())
        except trio.WouldBlock:
            pass
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if not batch:
                raise TransportClosedError(f"endpoint {self._address!r} is closed") from None
        if batch:
            self._full_batch = len(batch) == RECEIVE_BATCH
            return batch
        return [await self.receive()]


@attrs.define(eq=False)
class MemoryCluster(ClusterBackend):
    """Membership, directory and transport of a cluster whose silos share one Trio run.

    Pass the same instance to every silo and client of the cluster, as the options of the
    built-in ``memory`` clustering provider (``trio_grains.testing.open_test_cluster``
    does this). ``cut_off`` holds addresses whose messages are dropped both ways (a
    network partition, for tests).
    """

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    _membership: MemoryMembershipTable = attrs.field(factory=MemoryMembershipTable)
    _directory: MemoryGrainDirectory = attrs.field(factory=MemoryGrainDirectory)
    cut_off: set[str] = attrs.field(factory=set, init=False)
    _endpoints: dict[str, trio.MemorySendChannel[bytes]] = attrs.field(factory=dict, init=False)

    @property
    def membership(self) -> MemoryMembershipTable:
        return self._membership

    @property
    def directory(self) -> MemoryGrainDirectory:
        return self._directory

    def is_endpoint(self, address: str) -> bool:
        """Is *address* an endpoint that is open in this cluster?"""
        return address in self._endpoints

    @asynccontextmanager
    async def open_endpoint(self, endpoint_id: str) -> AsyncIterator[Transport]:
        if endpoint_id in self._endpoints:
            raise TransportError(f"endpoint {endpoint_id!r} is already open in this cluster")
        send, receive = trio.open_memory_channel[bytes](math.inf)
        self._endpoints[endpoint_id] = send
        transport = MemoryTransport(self, endpoint_id, send, receive)
        try:
            yield transport
        finally:
            transport._closed = True
            del self._endpoints[endpoint_id]
            send.close()
