"""The envelopes of messages between silos and clients: requests and replies.

A message is a msgpack array; the call's arguments and its result are already encoded by
the :class:`~trio_grains._serialization.Codec` (by the method's annotations) and travel
as opaque bytes inside it::

    request: [0, call_id, reply_to, grain_id, method, args, timeout, hops, flags, trace]
    reply:   [1, call_id, status, payload, silo_id]
    cancel:  [2, call_id, reply_to]     (the caller was cancelled: cancel the turn)

``reply_to`` is the caller's transport address (``""`` for one-way calls, which get no
reply); ``timeout`` the seconds left of the caller's deadline (``None``: none), so a
deadline travels with the call without comparing clocks; ``hops`` counts forwards, and
``flags`` holds :data:`LOCATE` when the receiver must find the activation itself (the
caller does not host the grain class, so it cannot apply its placement strategy).
``trace`` is ``None``, or with tracing on the caller's trace context as string headers (W3C
``traceparent`` / ``tracestate``), which the receiving silo continues.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from ._exceptions import SerializationError

__all__ = [
    "CANCEL",
    "ERROR",
    "LOCATE",
    "OK",
    "REPLY",
    "REQUEST",
    "REROUTE",
    "Request",
    "decode",
    "encode_cancel",
    "encode_reply",
    "encode_request",
]

REQUEST, REPLY, CANCEL = 0, 1, 2
OK, ERROR, REROUTE = 0, 1, 2  # reply statuses; REROUTE: "not here, locate it again"
LOCATE = 1  # request flag

_pack = msgpack.Packer(use_bin_type=True).pack


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
        if not (
            isinstance(self.call_id, int)
            and isinstance(self.reply_to, str)
            and isinstance(self.grain_id, str)
            and isinstance(self.method, str)
            and isinstance(self.args, bytes)
            and (
                self.timeout is None
                or (isinstance(self.timeout, (int, float)) and not math.isnan(self.timeout))
            )
            and isinstance(self.hops, int)
            and isinstance(self.flags, int)
            and (self.trace is None or _is_headers(self.trace))
        ):
            raise SerializationError("malformed request envelope")

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


def _is_headers(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


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


def decode(data: bytes) -> list[Any]:
    """The fields of a message; :class:`SerializationError` if it is not an envelope."""
    try:
        fields = msgpack.unpackb(data, use_list=True, raw=False)
    except Exception as exc:
        raise SerializationError(f"not a trio-grains message: {exc}") from None
    if not isinstance(fields, list) or not fields:
        raise SerializationError("not a trio-grains message: expected an array")
    kind = fields[0]
    if kind == REQUEST and len(fields) == 10:
        return fields
    if (
        kind == REPLY
        and len(fields) == 5
        and isinstance(fields[1], int)
        and isinstance(fields[2], int)
        and isinstance(fields[3], bytes)
    ):
        return fields
    if (
        kind == CANCEL
        and len(fields) == 3
        and isinstance(fields[1], int)
        and isinstance(fields[2], str)
    ):
        return fields
    raise SerializationError(f"not a trio-grains message: kind {kind!r}, {len(fields)} fields")
