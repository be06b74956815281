"""The envelopes of messages between silos and clients: requests, replies and cancels.

A message is a msgpack array; the call's arguments and its result are already encoded by
the :class:`~trio_grains._serialization.Codec` (by the method's annotations) and travel
as opaque bytes inside it::

    request: [0, call_id, reply_to, grain_id, method, args, timeout, hops, flags, trace]
    reply:   [1, call_id, status, payload, silo_id]
    cancel:  [2, call_id, reply_to]     (the caller was cancelled: cancel the turn)

``call_id`` is a random 64-bit number chosen by the caller (unguessable: a reply or a
cancel must name it); ``reply_to`` is the caller's transport address (``""`` for one-way
calls, which get no reply); ``timeout`` the seconds left of the caller's deadline
(``None``: none), so a deadline travels with the call without comparing clocks; ``hops``
counts forwards, and ``flags`` holds :data:`LOCATE` when the receiver must find the
activation itself (the caller does not host the grain class, so it cannot apply its
placement strategy). ``trace`` is ``None``, or with tracing on the caller's trace context
as string headers (W3C ``traceparent`` / ``tracestate``), which the receiving silo continues.

Every message is hostile until checked: :func:`decode` checks each field's type, range and
length against :class:`Limits` (``bool`` is not an ``int``, a timeout is finite and not
negative, a reply address is an endpoint of the cluster) and raises
:class:`~trio_grains.SerializationError` for anything else, which the receiver counts and
drops. Nothing in a message is used before it passed here.

May import: the core up to the catalog and the dispatcher. Not the other cluster modules:
the messenger, the locator and routing build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack

from .._exceptions import SerializationError

__all__ = [
    "CANCEL",
    "ERROR",
    "LOCATE",
    "OK",
    "REPLY",
    "REQUEST",
    "REROUTE",
    "Cancel",
    "Limits",
    "Reply",
    "Request",
    "decode",
    "encode_cancel",
    "encode_reply",
    "encode_request",
]

REQUEST, REPLY, CANCEL = 0, 1, 2
OK, ERROR, REROUTE = 0, 1, 2  # reply statuses; REROUTE: "not here, locate it again"
LOCATE = 1  # request flag
_FLAGS = LOCATE  # every flag a request may carry

MAX_CALL_ID = 2**64 - 1
MAX_HOPS = 64  # forwards; the runtime gives up long before (``routing.MAX_ATTEMPTS``)
MAX_METHOD_LENGTH = 200
MAX_TRACE_HEADERS = 8
MAX_TRACE_HEADER_LENGTH = 1024
MAX_SILO_ID_LENGTH = 512

_KNOWN_ADDRESSES = 10_000  # reply addresses found good, remembered (cleared when full)

_pack = msgpack.Packer(use_bin_type=True).pack
_unpack = msgpack.unpackb


class Limits:
    """What a receiver accepts in an envelope.

    *is_endpoint_address* says whether a reply address belongs to the cluster's reply
    namespace (:meth:`~trio_grains.Transport.is_endpoint_address`); its yes answers are
    remembered (a caller's address recurs in every request it sends).
    """

    __slots__ = ("_known", "is_endpoint_address", "max_grain_id_length", "max_subject_length")

    def __init__(
        self,
        is_endpoint_address: Callable[[str], bool],
        max_subject_length: int = 256,
        max_grain_id_length: int = 1024 + 256,  # a key of max_key_length and its type name
    ) -> None:
        self.is_endpoint_address = is_endpoint_address
        self.max_subject_length = max_subject_length
        self.max_grain_id_length = max_grain_id_length
        self._known: set[str] = set()

    def reply_address_ok(self, address: str) -> bool:
        """Is *address* (a str) an endpoint address of at most ``max_subject_length``?
        (Also asked of membership rows' addresses before a call is sent there.)"""
        if address in self._known:
            return True
        if len(address) > self.max_subject_length or not self.is_endpoint_address(address):
            return False
        if len(self._known) >= _KNOWN_ADDRESSES:
            self._known.clear()
        self._known.add(address)
        return True


class Request:
    """A decoded request (plain slots: one is built per incoming call)."""

    __slots__ = (
        "args",
        "call_id",
        "flags",
        "grain_id",
        "hops",
        "method",
        "reply_to",
        "timeout",
        "trace",
    )

    def __init__(self, fields: list[Any]) -> None:
        (
            _,
            self.call_id,
            self.reply_to,
            self.grain_id,
            self.method,
            self.args,
            self.timeout,
            self.hops,
            self.flags,
            self.trace,
        ) = fields

    def encode(self) -> bytes:
        """This request as a message (e.g. to forward it with ``hops`` changed)."""
        return encode_request(
            self.call_id,
            self.reply_to,
            self.grain_id,
            self.method,
            self.args,
            self.timeout,
            self.hops,
            self.flags,
            self.trace,
        )


class Reply:
    """A decoded reply."""

    __slots__ = ("call_id", "payload", "silo_id", "status")

    def __init__(self, fields: list[Any]) -> None:
        _, self.call_id, self.status, self.payload, self.silo_id = fields


class Cancel:
    """A decoded cancel: the caller at *reply_to* gave up its call *call_id*."""

    __slots__ = ("call_id", "reply_to")

    def __init__(self, fields: list[Any]) -> None:
        _, self.call_id, self.reply_to = fields


def encode_request(
    call_id: int,
    reply_to: str,
    grain_id: str,
    method: str,
    args: bytes,
    timeout: float | None,
    hops: int,
    flags: int,
    trace: dict[str, str] | None = None,
) -> bytes:
    return _pack([REQUEST, call_id, reply_to, grain_id, method, args, timeout, hops, flags, trace])  # type: ignore[no-any-return]


def encode_reply(call_id: int, status: int, payload: bytes, silo_id: str) -> bytes:
    return _pack([REPLY, call_id, status, payload, silo_id])  # type: ignore[no-any-return]


def encode_cancel(call_id: int, reply_to: str) -> bytes:
    return _pack([CANCEL, call_id, reply_to])  # type: ignore[no-any-return]


class ReplyAddressError(SerializationError):
    """A message's reply address is not an endpoint of this cluster (counted apart)."""


def decode(data: bytes, limits: Limits) -> Request | Reply | Cancel:
    """The message *data*, checked against *limits*.

    Raises :class:`ReplyAddressError` for a reply address outside the cluster's reply
    namespace and :class:`SerializationError` for anything else that is not an envelope.
    Every message goes through here: each kind is checked by one expression, and the
    reason for a refusal is worked out only when there is one.
    """
    try:
        fields = _unpack(data, use_list=True, raw=False)
    except Exception as exc:
        raise SerializationError(f"not a trio-grains message: {type(exc).__name__}") from None
    if fields.__class__ is not list or not fields:
        raise SerializationError("not a trio-grains message: expected an array")
    kind = fields[0]
    n = len(fields)
    if kind.__class__ is not int:  # not True, not 0.0
        raise SerializationError(f"not a trio-grains message: kind {kind!r}")
    if kind == REPLY and n == 5:
        _, call_id, status, payload, silo_id = fields
        if (
            call_id.__class__ is int
            and 0 < call_id <= MAX_CALL_ID
            and status.__class__ is int
            and OK <= status <= REROUTE
            and payload.__class__ is bytes
            and silo_id.__class__ is str
            and 0 < len(silo_id) <= MAX_SILO_ID_LENGTH
        ):
            return Reply(fields)
        _check_call_id(call_id)
        if status.__class__ is not int or status not in (OK, ERROR, REROUTE):
            raise SerializationError(f"malformed reply: status {status!r}")
        if payload.__class__ is not bytes:
            raise SerializationError("malformed reply: payload is not bytes")
        _check_str("silo id", silo_id, MAX_SILO_ID_LENGTH)
    if kind == REQUEST and n == 10:
        _, call_id, reply_to, grain_id, method, args, timeout, hops, flags, trace = fields
        if (
            call_id.__class__ is int
            and 0 < call_id <= MAX_CALL_ID
            and reply_to.__class__ is str
            and (not reply_to or limits.reply_address_ok(reply_to))
            and grain_id.__class__ is str
            and 0 < len(grain_id) <= limits.max_grain_id_length
            and method.__class__ is str
            and 0 < len(method) <= MAX_METHOD_LENGTH
            and args.__class__ is bytes
            and (timeout is None or (timeout.__class__ in (int, float) and 0 <= timeout < math.inf))
            and hops.__class__ is int
            and 0 <= hops <= MAX_HOPS
            and flags.__class__ is int
            and not flags & ~_FLAGS
            and flags >= 0
            and (trace is None or _is_headers(trace))
        ):
            return Request(fields)
        _check_request(fields, limits)  # raises, saying what is wrong
    if kind == CANCEL and n == 3:
        _, call_id, reply_to = fields
        if (
            call_id.__class__ is int
            and 0 < call_id <= MAX_CALL_ID
            and reply_to.__class__ is str
            and reply_to
            and limits.reply_address_ok(reply_to)
        ):
            return Cancel(fields)
        _check_call_id(call_id)
        _check_reply_to(reply_to, limits, one_way=False)
    raise SerializationError(f"not a trio-grains message: kind {kind!r}, {n} fields")


def _check_request(fields: list[Any], limits: Limits) -> None:
    """Raise the error that says why the request *fields* were refused."""
    _, call_id, reply_to, grain_id, method, args, timeout, hops, flags, _trace = fields
    _check_call_id(call_id)
    _check_reply_to(reply_to, limits, one_way=True)
    _check_str("grain id", grain_id, limits.max_grain_id_length)
    _check_str("method", method, MAX_METHOD_LENGTH)
    if not isinstance(args, bytes):
        raise SerializationError("malformed request: arguments are not bytes")
    if timeout is not None and (
        type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout < 0
    ):
        raise SerializationError(f"malformed request: timeout {timeout!r}")
    if type(hops) is not int or not 0 <= hops <= MAX_HOPS:
        raise SerializationError(f"malformed request: hops {hops!r}")
    if type(flags) is not int or flags & ~_FLAGS or flags < 0:
        raise SerializationError(f"malformed request: flags {flags!r}")
    raise SerializationError("malformed request: trace is not a small map of strings")


def _check_call_id(call_id: object) -> None:
    if type(call_id) is not int or not 0 < call_id <= MAX_CALL_ID:
        raise SerializationError(f"malformed message: call id {call_id!r}")


def _check_str(what: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or not value or len(value) > limit:
        shown = value if not isinstance(value, str) else f"of {len(value)} characters"
        raise SerializationError(f"malformed message: {what} {shown!r}")


def _check_reply_to(reply_to: object, limits: Limits, *, one_way: bool) -> None:
    if not isinstance(reply_to, str):
        raise SerializationError(f"malformed message: reply address {reply_to!r}")
    if not reply_to and one_way:
        return  # a one-way call: no reply
    if not reply_to or not limits.reply_address_ok(reply_to):
        raise ReplyAddressError(
            f"reply address {reply_to[:80]!r}{'...' if len(reply_to) > 80 else ''} is not an "
            "endpoint of this cluster"
        )


def _is_headers(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= MAX_TRACE_HEADERS
        and all(
            isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= MAX_TRACE_HEADER_LENGTH
            for k, v in value.items()
        )
    )
