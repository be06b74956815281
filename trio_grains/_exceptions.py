"""The exception tree of trio-grains.

Every error the runtime raises on purpose derives from :class:`GrainsError`::

    GrainsError
    ├── GrainIdError (ValueError)          a type name or key that cannot name a grain
    ├── GrainKeyKindError (TypeError)      asked for an int key of a string-keyed grain, ...
    ├── GrainTypeError (TypeError)         a class that cannot be a grain, duplicate type names,
    │                                      a type the silo does not host
    ├── GrainMethodError (AttributeError)  calling something that is not a grain method
    ├── GrainCallError                     a call did not produce the grain's own result
    │   ├── GrainCallTimeoutError (TimeoutError)   no reply within the response timeout
    │   ├── RemoteGrainError               the grain raised an exception whose type could not
    │   │                                  be rebuilt here: carries type name, message, traceback
    │   ├── SiloUnavailableError           the silo is shutting down or is not running
    │   └── ActivationOverloadedError      the activation's queue is full (max_queued_calls)
    ├── ConfigError (ValueError)           bad configuration: says which key and how to fix it
    ├── PluginError                        duplicate or unknown provider names, bad plugins
    ├── SerializationError                 a value the silo's converter cannot encode or decode
    │   └── ReplyAddressError              internal (_cluster.envelope): a message's reply
    │                                      address is outside the cluster; counted, dropped
    ├── StorageError                       a storage provider failed (backend down, bad record)
    │   └── InconsistentStateError         a write against a stale ETag: nothing was written
    ├── StreamError                        a stream provider or subscription failed
    │   └── RejectedItemError              a handler refuses an item: dead-letter it now
    ├── DirectoryError                     the grain directory's backend failed
    ├── MembershipError                    cluster membership
    │   ├── MembershipUnavailableError     the membership table is unreachable (retried)
    │   ├── SiloAlreadyJoinedError         a live silo already uses this silo id
    │   └── SiloDeclaredDeadError          this silo was declared dead: it must stop serving
    ├── TransportError                     the cluster transport failed
    │   ├── TransportClosedError           the endpoint is closed, or its connection lost
    │   └── MessageTooLargeError           a request or reply larger than the transport carries
    ├── ActivationRaceLostError            internal: another activation registered first
    ├── RerouteError                       internal: a silo answered "not here": locate again
    └── InternalError                      a bug in trio-grains: please report it

The *internal* ones never reach callers: the runtime handles them where they are raised.
``ActivationRaceLostError`` and ``RerouteError`` steer the call path, so they opt out of
:func:`remotable`: a forged reply naming one arrives as :class:`RemoteGrainError` instead of
making the runtime forward or re-locate a call. ``ReplyAddressError`` is caught and counted
by the messenger's receive loop. One more internal class lives outside the tree, as cattrs
must see a ``TypeError``::

    TypeError
    └── WrongValue                         internal (_strict): a wire value of the wrong type,
                                           inside a cattrs error group; the codec reports it
                                           as a SerializationError

An exception raised by a grain method reaches the caller as itself (same type), not
wrapped: ``except KeyError`` around a grain call works as it would around a plain call,
when its class is *remotable*: the tree above (and an application's subclasses of it), the
standard ``Exception`` subclasses of ``builtins`` (but ``StopIteration`` and
``StopAsyncIteration``), and classes marked with :func:`remotable` (and their subclasses).
Any other type arrives as :class:`RemoteGrainError`; ``BaseException`` never crosses.

May import: nothing of trio-grains.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "first_leaf",
    "remotable",
    "ActivationOverloadedError",
    "ActivationRaceLostError",
    "MessageTooLargeError",
    "RerouteError",
    "TransportClosedError",
    "TransportError",
    "StreamError",
    "RejectedItemError",
    "StorageError",
    "SiloDeclaredDeadError",
    "SiloAlreadyJoinedError",
    "MembershipUnavailableError",
    "MembershipError",
    "InconsistentStateError",
    "ConfigError",
    "DirectoryError",
    "GrainCallError",
    "GrainCallTimeoutError",
    "GrainIdError",
    "GrainKeyKindError",
    "GrainMethodError",
    "GrainTypeError",
    "GrainsError",
    "InternalError",
    "PluginError",
    "RemoteGrainError",
    "SerializationError",
    "SiloUnavailableError",
]


_E = TypeVar("_E", bound=type[Exception])


def remotable(cls: _E) -> _E:
    """Class decorator: let the exception class *cls* (and its subclasses) be rebuilt as
    itself when a grain on another silo raises it; otherwise the caller gets
    :class:`RemoteGrainError`. The receiving side must have imported the class, and it is
    built from the exception's ``args`` (a class whose constructor cannot take them
    arrives as ``RemoteGrainError`` too). Applications and plugins mark their own::

        @trio_grains.remotable
        class OutOfStock(Exception): ...

    A subclass can opt out again with ``__grains_remotable__ = False`` in its body.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"@remotable marks Exception subclasses, not {cls!r}")
    if issubclass(cls, (StopIteration, StopAsyncIteration)):
        raise TypeError(f"{cls.__qualname__} changes control flow: it cannot be remotable")
    cls.__grains_remotable__ = True  # type: ignore[attr-defined]
    return cls


class GrainsError(Exception):
    """Root of every error trio-grains raises on purpose."""

    #: rebuilt as itself on the caller's side (see :func:`remotable`), subclasses too
    __grains_remotable__ = True


class GrainIdError(GrainsError, ValueError):
    """A grain type name or key that cannot name a grain."""


class GrainKeyKindError(GrainsError, TypeError):
    """A key was read as a kind it is not (e.g. ``primary_key_int`` of a string key)."""


class GrainTypeError(GrainsError, TypeError):
    """A class cannot serve as a grain, or a grain type is unknown or claimed twice."""


class GrainMethodError(GrainsError, AttributeError):
    """The name called on a grain reference is not a callable grain method."""


class GrainCallError(GrainsError):
    """A grain call ended without the grain's own result or exception."""


class GrainCallTimeoutError(GrainCallError, TimeoutError):
    """No reply arrived within the silo's response timeout.

    Raise the limit with ``SiloConfig(response_timeout=...)``, or wrap the call in your own
    ``trio.move_on_after`` / ``trio.fail_after`` to choose per call.
    """


class RemoteGrainError(GrainCallError):
    """A grain raised an exception whose type cannot be rebuilt in this process.

    Attributes:
        type_name: ``module.QualName`` of the original exception type.
        message: ``str()`` of the original exception.
        traceback_text: the formatted traceback where it was raised.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[RemoteGrainError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class SiloUnavailableError(GrainCallError):
    """The silo is not running (not yet started, shutting down, or closed)."""


class ActivationOverloadedError(GrainCallError):
    """The activation already has ``SiloConfig.max_queued_calls`` calls waiting: the call
    was refused, not run (Orleans' request-queue limit). Retry later with backoff, or
    spread the load over more grains (a ``@stateless_worker`` or keys that shard it).
    """


class ConfigError(GrainsError, ValueError):
    """Configuration that cannot be used. The message names the key and the fix."""


class PluginError(GrainsError):
    """A plugin or provider problem: duplicate names, unknown names, broken plugins."""


class SerializationError(GrainsError):
    """A value the silo's converter cannot encode or decode."""


class InternalError(GrainsError):
    """A bug in trio-grains itself.

    Please report it at the project's issue tracker with the traceback.
    """


class StorageError(GrainsError):
    """A storage provider failed (backend down, unreadable record, ...).

    Providers raise it (or a subclass) from their backend's errors, chained with
    ``raise StorageError(...) from exc``. The activation that called stays healthy.
    """


class InconsistentStateError(StorageError):
    """The record changed since this activation read it (its ETag is stale).

    Nothing was overwritten and the grain's in-memory state is as it was. Typically another
    activation of the grain wrote first: ``await state.read()`` to take its version, then
    apply the change again.
    """


class StreamError(GrainsError):
    """A stream operation failed: a provider error, or a feature the provider lacks.

    Adapters raise it (or a subclass) from their backend's errors, chained with
    ``raise StreamError(...) from exc``.
    """


class RejectedItemError(StreamError):
    """Raise it from a stream handler for an item that can never be processed (an invalid
    order, say): the item goes to the dead letters at once, with this message as the
    reason, instead of being retried ``max_deliveries`` times. It works across silos: a
    grain on another silo raising it rejects the item as well.
    """


class DirectoryError(GrainsError):
    """A grain directory provider failed (backend down, an unreadable entry, ...).

    Providers raise it from their backend's errors (``raise DirectoryError(...) from exc``).
    """


class MembershipError(GrainsError):
    """A membership-table operation failed."""


class MembershipUnavailableError(MembershipError):
    """The membership table cannot be reached right now (a transient backend failure).

    Table providers translate their backend's transport errors into this one; the
    :class:`MembershipService` retries on it until ``dead_after`` runs out.
    """


class SiloAlreadyJoinedError(MembershipError):
    """A silo id that is already in the table (and not ``DEAD``) tried to join.

    Give every silo incarnation its own id (e.g. append a start time or a random suffix).
    """


class SiloDeclaredDeadError(MembershipError):
    """This silo was declared dead by the cluster (or presumes so): it must stop serving.

    Its activations may already be running on other silos. Restart it under a new silo id.
    """


class TransportError(GrainsError):
    """The cluster transport failed (base class).

    Transport providers raise it (or a subclass) from their backend's errors, chained with
    ``raise TransportError(...) from exc``.
    """


class TransportClosedError(TransportError):
    """The endpoint is closed, or its connection was lost for good."""


class MessageTooLargeError(TransportError):
    """A message is larger than the transport carries (``Transport.max_message_size``)."""


# -- internal: raised and handled inside the runtime, never delivered to callers ----------


class ActivationRaceLostError(GrainsError):
    """Internal: another activation of the grain registered first; calls go to it.

    Never reaches callers: the runtime forwards their calls to the winner.
    """

    # Never rebuilt from a reply: the runtime would take a forged one as a lost race.
    __grains_remotable__ = False

    def __init__(self, grain_id: object, silo_id: str) -> None:
        super().__init__(f"{grain_id} is already activated on silo {silo_id!r}")
        self.silo_id = silo_id


class RerouteError(GrainsError):
    """Internal: the silo answered "not here": locate the grain again.

    Raised by the messenger, handled by the cluster's call path, which retries elsewhere.
    """

    # Never rebuilt from a reply: a forged one would send the caller's call round again.
    __grains_remotable__ = False


def first_leaf(group: BaseException) -> BaseException:
    """The first exception inside (possibly nested) exception groups, to re-raise alone."""
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group
