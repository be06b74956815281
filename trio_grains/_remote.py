"""Calls that cross the transport: sending requests, correlating replies, sending replies.

A :class:`Messenger` owns one transport endpoint (of a silo or a client). Its receive loop
hands replies to the callers waiting for them (a dict lookup and a reschedule; the
result is decoded in the caller's task) and requests to the silo's handler. Callers wait
the way local callers of a busy grain do (:func:`~trio_grains._messaging.wait_reply`,
response timeouts from the :class:`~trio_grains._messaging.TimeoutWheel`), so cancelling
a caller simply forgets its call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import outcome
import trio

from . import _envelope as env
from ._exceptions import SerializationError, SiloUnavailableError
from ._messaging import Call, TimeoutWheel, wait_reply
from ._tracing import SpanKind, Tracer, call_attributes
from ._transport import MessageTooLargeError, Transport, TransportClosedError

if TYPE_CHECKING:
    from ._grain import MethodInfo
    from ._ids import GrainId
    from ._serialization import Codec

__all__ = ["Messenger", "RerouteError"]

log = logging.getLogger("trio_grains.remote")


class RerouteError(Exception):
    """Internal: the silo answered "not here": locate the grain again."""


class Messenger:
    """Requests out and replies in (and, for a silo, requests in and replies out)."""

    def __init__(
        self,
        transport: Transport,
        codec: Codec,
        wheel: TimeoutWheel,
        endpoint_id: str,
        address_of: Callable[[str], str | None],
    ) -> None:
        self.transport = transport
        self.codec = codec
        self.wheel = wheel
        self.endpoint_id = endpoint_id
        self.address_of = address_of
        #: the tracing provider's tracer: calls out are spans and carry their context
        self.tracer: Tracer | None = None
        #: silo requests go here (a silo sets it; a client ignores requests)
        self.on_request: Callable[[env.Request], None] | None = None
        #: a caller cancelled its call: ``on_cancel(reply_to, call_id)`` (silos set it)
        self.on_cancel: Callable[[str, int], None] | None = None
        self._pending: dict[int, tuple[Call, str]] = {}
        self._next_id = 0
        self._backlog_send, self._backlog = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self.sent = 0
        self.received = 0
        self.malformed = 0

    def pending(self) -> int:
        return len(self._pending)

    # -- outgoing calls -----------------------------------------------------------------------

    async def call(
        self,
        silo_id: str,
        grain_id: GrainId,
        method: MethodInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        flags: int = 0,
    ) -> Any:
        """Call *method* of *grain_id* on silo *silo_id*; its result or exception.

        Raises :class:`RerouteError` if that silo does not have (and will not create) the
        activation: locate the grain again.
        """
        tracer = self.tracer
        if tracer is None:
            return await self._call(silo_id, grain_id, method, args, kwargs, flags, None)
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
        timeout = None if deadline == math.inf else max(0.0, deadline - trio.current_time())
        self._next_id += 1
        call_id = self._next_id
        reply_to = "" if method.one_way else self.transport.address
        data = env.encode_request(
            call_id, reply_to, str(grain_id), method.name, payload, timeout, 0, flags, trace
        )
        # The transport checks the size (and sends nothing if it is too large).
        if method.one_way:
            try:
                await self.transport.send(address, data)
            except MessageTooLargeError:
                raise self._too_large(data, grain_id, method) from None
            self.sent += 1
            return None
        call = Call(method, args, kwargs, target=grain_id)
        self._pending[call_id] = (call, silo_id)
        try:
            try:
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
        doomed = [call for call, silo in self._pending.values() if silo == silo_id]
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
        buffer queues the message for the backlog task instead."""
        try:
            self.transport.send_nowait(address, data)
            self.sent += 1
        except trio.WouldBlock:
            self._backlog_send.send_nowait((address, data))
        except TransportClosedError:
            pass  # the silo is stopping; the caller learns it from membership
        except MessageTooLargeError:
            log.error("dropped a %d-byte message to %s: too large", len(data), address)

    def reply(self, request: env.Request, status: int, payload: bytes) -> None:
        data = env.encode_reply(request.call_id, status, payload, self.endpoint_id)
        if len(data) > self.transport.max_message_size:
            error = MessageTooLargeError(
                f"the result of {request.grain_id}.{request.method}() is {len(data)} bytes, "
                f"more than the transport carries ({self.transport.max_message_size}): "
                "return a key to stored data instead"
            )
            data = env.encode_reply(
                request.call_id, env.ERROR, self.codec.encode_exception(error), self.endpoint_id
            )
        self.send_nowait(request.reply_to, data)

    def reply_error(self, request: env.Request, exc: BaseException) -> None:
        if request.reply_to:
            self.reply(request, env.ERROR, self.codec.encode_exception(exc))
        else:
            log.error("one-way call %s.%s() failed: %s", request.grain_id, request.method, exc)

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
        """One incoming message: a reply wakes its caller, a request goes to the silo."""
        self.received += 1
        try:
            fields = env.decode(data)
            if fields[0] == env.REPLY:
                entry = self._pending.get(fields[1])
                if entry is not None:
                    entry[0].finish(outcome.Value((fields[2], fields[3])))
                return
            if fields[0] == env.CANCEL:
                if self.on_cancel is not None:
                    self.on_cancel(fields[2], fields[1])
                return
            request = env.Request(fields)
        except (SerializationError, ValueError, TypeError) as exc:
            self.malformed += 1
            log.warning("dropped a malformed message of %d bytes: %s", len(data), exc)
            return
        if self.on_request is not None:
            try:
                self.on_request(request)
            except Exception:
                log.exception("a request to %s.%s() failed", request.grain_id, request.method)
