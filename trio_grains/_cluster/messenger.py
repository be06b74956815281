"""Calls that cross the transport: sending requests, correlating replies, sending replies.

A :class:`Messenger` owns one transport endpoint (of a silo or a client). Its receive loop
hands replies to the callers waiting for them (a dict lookup and a reschedule; the
result is decoded in the caller's task) and requests to the silo's handler. Callers wait
the way local callers of a busy grain do (:func:`~trio_grains._calls.wait_reply`,
response timeouts from the :class:`~trio_grains._calls.TimeoutWheel`), so cancelling
a caller simply forgets its call.

The messenger is the silo's trust boundary for the transport: every message is decoded by
:func:`~trio_grains._cluster.envelope.decode` against the endpoint's limits before anything reads
it, and nothing a message carries can end the receive loop. Call ids are random 64-bit
numbers; a reply is accepted only for a pending call and only from the silo the call went
to (or, for a call that silo may forward, from a member of the cluster). Replies go only
to addresses the transport recognises as the cluster's endpoints, and so do calls to the
addresses of membership rows. What is dropped is counted by reason in :attr:`dropped`
(``statistics().dropped_messages``) and logged at most every few seconds.

May import: the core up to the catalog and the dispatcher, and the cluster's ``envelope``,
``membership``, ``directory`` and ``transport``. Not routing or the locator.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, cast

import outcome
import trio

from .._calls import Call, TimeoutWheel, wait_reply
from .._exceptions import (
    MessageTooLargeError,
    RerouteError,
    SerializationError,
    SiloUnavailableError,
    TransportClosedError,
)
from .._logging import LogThrottle
from .._tracing import SpanKind, Tracer, call_attributes
from . import envelope as env
from .transport import Transport

if TYPE_CHECKING:
    from .._ids import GrainId
    from .._methods import MethodInfo
    from .._serialization import Codec

__all__ = ["Messenger", "RerouteError"]

log = logging.getLogger("trio_grains.remote")

#: the reasons :attr:`Messenger.dropped` counts
DROP_REASONS = ("malformed", "reply_address", "unexpected_reply", "too_large", "send_failed")
_ID_BATCH = 512
_UNPACK_IDS = struct.Struct(f"<{_ID_BATCH}Q").unpack


class Messenger:
    """Requests out and replies in (and, for a silo, requests in and replies out)."""

    def __init__(
        self,
        transport: Transport,
        codec: Codec,
        wheel: TimeoutWheel,
        endpoint_id: str,
        address_of: Callable[[str], str | None],
        *,
        max_subject_length: int = 256,
        max_grain_id_length: int = 1024 + 256,
        tracer: Tracer | None = None,
        on_request: Callable[[env.Request], None] | None = None,
        on_cancel: Callable[[str, int], None] | None = None,
    ) -> None:
        self.transport = transport
        self.codec = codec
        self.wheel = wheel
        self.endpoint_id = endpoint_id
        self._address_of = address_of
        self.limits = env.Limits(
            transport.is_endpoint_address, max_subject_length, max_grain_id_length
        )
        #: the tracing provider's tracer: calls out are spans and carry their context
        self.tracer = tracer
        #: silo requests go here (a silo's; a client's endpoint ignores requests)
        self.on_request = on_request
        #: a caller cancelled its call: ``on_cancel(reply_to, call_id)`` (a silo's)
        self.on_cancel = on_cancel
        #: a call sent to be placed by its receiver was answered by silo ``silo_id``:
        #: ``on_located(grain_id, silo_id)`` (a client's: it caches where the grain is)
        self.on_located: Callable[[Any, str], None] | None = None
        #: call id -> (call, silo it went to, whether that silo may forward it)
        self._pending: dict[int, tuple[Call, str, bool]] = {}
        self._backlog_send, self._backlog = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self.sent = 0
        self.received = 0
        #: messages dropped, by reason (:data:`DROP_REASONS`)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._warn = LogThrottle(log)
        self._random_ids: Iterator[int] = iter(())

    def pending(self) -> int:
        return len(self._pending)

    def address_of(self, silo_id: str) -> str | None:
        """The address of silo *silo_id*, if it is known and is an endpoint address (a
        membership row is a message too: its address is checked before it is used)."""
        address = self._address_of(silo_id)
        if address is None or self.limits.reply_address_ok(address):  # (remembered: cheap)
            return address
        self._warn.warning(
            "ignored silo %s: its address %r is not an endpoint of this cluster",
            silo_id,
            address[:80],
        )
        return None

    def _drop(self, reason: str, data: bytes, why: object) -> None:
        self.dropped[reason] += 1
        self._warn.warning("dropped a message of %d bytes (%s): %s", len(data), reason, why)

    def _new_call_id(self) -> int:
        """A random call id (unguessable, so no one can answer or cancel another's call):
        64 bits from the OS's CSPRNG, read 512 ids at a time (a system call per call would
        cost a remote call a few per cent)."""
        while True:
            call_id = next(self._random_ids, 0)
            if not call_id:
                self._random_ids = iter(_UNPACK_IDS(os.urandom(_ID_BATCH * 8)))
            elif call_id not in self._pending:
                return call_id

    # -- outgoing calls -----------------------------------------------------------------------

    def call(
        self,
        silo_id: str,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        flags: int = 0,
    ) -> Coroutine[Any, Any, Any]:
        """Call *method* of *grain_id* on silo *silo_id*: ``await`` it for its result or
        exception.

        Raises :class:`RerouteError` if that silo does not have (and will not create) the
        activation: locate the grain again.
        """
        # A plain function handing out the coroutine: without tracing, a remote call
        # costs one coroutine frame here, not two (every frame is crossed again each
        # time the caller's task parks and wakes).
        if self.tracer is None:
            return self._call(silo_id, grain_id, method, args, kwargs, flags, None)
        return self._traced_call(silo_id, grain_id, method, args, kwargs, flags)

    async def _traced_call(
        self,
        silo_id: str,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flags: int,
    ) -> Any:
        tracer = self.tracer
        assert tracer is not None
        grain_type = str(grain_id.type)
        attributes = {
            **call_attributes(grain_type, method.name, grain_id),
            "trio_grains.target_silo": silo_id,
        }
        with tracer.span(f"{grain_type}/{method.name}", SpanKind.CLIENT, attributes):
            headers: dict[str, str] = {}
            tracer.inject(headers)
            return await self._call(silo_id, grain_id, method, args, kwargs, flags, headers or None)

    async def _call(
        self,
        silo_id: str,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        flags: int,
        trace: dict[str, str] | None,
    ) -> Any:
        address = self.address_of(silo_id)
        if address is None:
            raise RerouteError(silo_id)
        payload = self.codec.encode_call(method, args, kwargs)
        deadline = trio.current_effective_deadline()
        if deadline == math.inf:
            timeout = None
        else:
            if deadline == -math.inf:  # cancelled already: send nothing
                await trio.lowlevel.checkpoint()
            timeout = max(0.0, deadline - trio.current_time())
        call_id = self._new_call_id()
        one_way = method.one_way
        data = env.encode_request(
            call_id,
            "" if one_way else self.transport.address,
            str(grain_id),
            method.name,
            payload,
            timeout,
            0,
            flags,
            trace,
        )
        # The transport checks the size (and sends nothing if it is too large).
        if one_way:
            try:
                await self.transport.send(address, data)
            except MessageTooLargeError:
                raise self._too_large(data, grain_id, method) from None
            self.sent += 1
            return None
        call = Call(method, args, kwargs, target=grain_id)
        self._pending[call_id] = (call, silo_id, bool(flags & env.LOCATE))
        try:
            # Not a checkpoint unless the outgoing buffer is full: the wait for the reply
            # is one (and the deadline's check above stood for the cancellation point).
            try:
                try:
                    self.transport.send_nowait(address, data)
                except trio.WouldBlock:
                    await self.transport.send(address, data)
            except MessageTooLargeError:
                raise self._too_large(data, grain_id, method) from None
            self.sent += 1
            self.wheel.add(call)
            try:
                status, body = await wait_reply(call)
            except trio.Cancelled:
                # Tell the silo, so the turn is cancelled too (or skipped if still queued).
                self.send_nowait(address, env.encode_cancel(call_id, self.transport.address))
                raise
        finally:
            del self._pending[call_id]
        if status == env.OK:
            return self.codec.decode_result(method, body)
        if status == env.ERROR:
            raise self.codec.decode_exception(body)
        raise RerouteError(silo_id)

    def _too_large(self, data: bytes, grain_id: GrainId, method: MethodInfo) -> Exception:
        return MessageTooLargeError(
            f"the call {grain_id}.{method.name}() is {len(data)} bytes, more than the "
            f"transport carries ({self.transport.max_message_size}): pass large data "
            "through storage or a stream and send a key instead"
        )

    def fail_calls_to(self, silo_id: str, why: str) -> int:
        """Fail every call waiting for a reply from *silo_id* (it died or left); calls of
        ``@idempotent`` methods are sent again instead (to wherever the grain goes)."""
        doomed = [call for call, silo, _ in self._pending.values() if silo == silo_id]
        for call in doomed:
            if call.method is not None and call.method.idempotent:
                call.finish(outcome.Value((env.REROUTE, b"")))
                continue
            call.fail(
                SiloUnavailableError(
                    f"silo {silo_id!r} {why} before {call.describe()} replied; the call may "
                    "or may not have run there (retry it if it is idempotent)"
                )
            )
        return len(doomed)

    # -- replies and forwards -----------------------------------------------------------------

    def send_nowait(self, address: str, data: bytes) -> None:
        """Send without waiting (replies are sent from sync callbacks); a full outgoing
        buffer queues the message for the backlog task instead. Never raises: a message
        that cannot be sent costs that message, not the turn or task that sent it."""
        try:
            self.transport.send_nowait(address, data)
        except Exception as exc:
            self._not_sent(address, data, exc)
        else:
            self.sent += 1

    def _not_sent(self, address: str, data: bytes, exc: Exception) -> None:
        """What :meth:`send_nowait` does when the transport raised *exc*."""
        if isinstance(exc, trio.WouldBlock):
            self._backlog_send.send_nowait((address, data))
        elif isinstance(exc, TransportClosedError):
            pass  # the silo is stopping; the caller learns it from membership
        elif isinstance(exc, MessageTooLargeError):
            self._drop("too_large", data, f"to {address[:80]!r}: larger than the transport carries")
        else:
            self._drop("send_failed", data, f"to {address[:80]!r}: {exc!r}")

    def reply(self, request: env.Request, status: int, payload: bytes) -> None:
        data = env.encode_reply(request.call_id, status, payload, self.endpoint_id)
        try:
            # (the transport checks the size: it sends nothing too large)
            self.transport.send_nowait(request.reply_to, data)
        except MessageTooLargeError:
            error = MessageTooLargeError(
                f"the result of {request.grain_id}.{request.method}() is {len(data)} bytes, "
                f"more than the transport carries ({self.transport.max_message_size}): "
                "return a key to stored data instead"
            )
            self.send_nowait(
                request.reply_to,
                env.encode_reply(
                    request.call_id, env.ERROR, self.encode_exception(error), self.endpoint_id
                ),
            )
        except Exception as exc:
            self._not_sent(request.reply_to, data, exc)
        else:
            self.sent += 1

    def reply_error(self, request: env.Request, exc: BaseException) -> None:
        if request.reply_to:
            self.reply(request, env.ERROR, self.encode_exception(exc))
        else:
            log.error("one-way call %s.%s() failed: %s", request.grain_id, request.method, exc)

    def encode_exception(self, exc: BaseException) -> bytes:
        """*exc* for an error reply (never raises: a failing encoder sends its own error)."""
        try:
            return self.codec.encode_exception(exc)
        except Exception as error:
            return self.codec.encode_exception(
                SerializationError(f"cannot encode a {type(exc).__name__}: {error!r}")
            )

    def forward(self, request: env.Request, silo_id: str) -> bool:
        """Send *request* on to *silo_id* unchanged but for one more hop; the reply goes
        straight back to the caller. False if that silo's address is unknown."""
        address = self.address_of(silo_id)
        if address is None:
            return False
        request.hops += 1
        request.flags = 0
        self.send_nowait(address, request.encode())
        return True

    # -- the receive loop ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_backlog)
            task_status.started()
            await self._receive_loop()
            nursery.cancel_scope.cancel()

    async def _drain_backlog(self) -> None:
        async for address, data in self._backlog:
            try:
                await self.transport.send(address, data)
                self.sent += 1
            except TransportClosedError:
                return
            except Exception as exc:  # too large, or a transport's own error: this one only
                self._drop("send_failed", data, f"to {address[:80]!r}: {exc!r}")

    async def _receive_loop(self) -> None:
        receive_batch = self.transport.receive_batch
        on_message = self._on_message
        while True:
            try:
                batch = await receive_batch()
            except TransportClosedError:
                return
            for data in batch:
                on_message(data)

    def _on_message(self, data: bytes) -> None:
        """One incoming message: a reply wakes its caller, a request goes to the silo.
        Nothing in *data* can raise out of here."""
        self.received += 1
        try:
            message = env.decode(data, self.limits)
        except env.ReplyAddressError as exc:
            self._drop("reply_address", data, exc)
            return
        except Exception as exc:  # SerializationError; anything else is a bug, not fatal
            self._drop("malformed", data, exc)
            return
        kind = message.__class__
        if kind is env.Reply:
            reply = cast("env.Reply", message)
            entry = self._pending.get(reply.call_id)
            if entry is None or (
                reply.silo_id != entry[1] and not self._from_member(entry, reply.silo_id)
            ):
                self._drop("unexpected_reply", data, "not a reply to a pending call of ours")
                return
            call = entry[0]
            if entry[2] and self.on_located is not None and reply.status != env.REROUTE:
                # A call the receiver placed (LOCATE): the grain is where the answer came
                # from, so the next call can go there directly.
                self.on_located(call.target, reply.silo_id)
            call.finish(outcome.Value((reply.status, reply.payload)))
        elif kind is env.Cancel:
            cancel = cast("env.Cancel", message)
            if self.on_cancel is not None:
                self.on_cancel(cancel.reply_to, cancel.call_id)
        elif self.on_request is not None:
            request = cast("env.Request", message)
            try:
                self.on_request(request)
            except Exception:
                log.exception("a request to %s.%s() failed", request.grain_id, request.method)

    def _from_member(self, entry: tuple[Call, str, bool], silo_id: str) -> bool:
        """May a reply to *entry* come from *silo_id*, another silo than the call went to?
        Only if that silo could forward it, and *silo_id* is a member of the cluster."""
        return entry[2] and self._address_of(silo_id) is not None
