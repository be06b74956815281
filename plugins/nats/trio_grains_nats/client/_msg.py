"""Messages: the :class:`Msg` value and the NATS header block (``NATS/1.0``) codec."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Msg"]

_HDR_LINE = b"NATS/1.0"
_CRLF = b"\r\n"
_HEADER_KEY_RE = re.compile(r"[!-9;-~]+")  # printable ASCII except ':' (RFC 7230 token-ish)


@attrs.define(eq=False, repr=False)
class Msg:
    """A message received on a subscription (or as the reply to a request).

    ``headers`` is ``None`` when the message carried none. ``status`` is the inline status
    of server-generated messages (``503`` no responders, ``404``/``408`` from JetStream
    pull requests, ``100`` heartbeats), else ``None``. Treat a ``Msg`` as read-only.
    """

    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None = None
    status: int | None = None
    description: str = ""
    _conn: Connection | None = None

    def __repr__(self) -> str:
        return (
            f"<Msg subject={self.subject!r} reply={self.reply!r} data={self.data[:32]!r}"
            f"{'...' if len(self.data) > 32 else ''} headers={self.headers!r}"
            f"{f' status={self.status}' if self.status is not None else ''}>"
        )

    async def respond(self, data: bytes = b"", *, headers: Mapping[str, str] | None = None) -> None:
        """Publish *data* to this message's reply subject (the answer to a request)."""
        if not self.reply:
            raise ValueError(
                f"message on {self.subject!r} has no reply subject: it was published with "
                "publish(), not request()"
            )
        if self._conn is None:
            raise ValueError("this message is not bound to a connection")
        await self._conn.publish(self.reply, data, headers=headers)


_encoded_keys: dict[str, bytes] = {}  # header name -> b"Name: " (validated once)


def _encode_key(key: str) -> bytes:
    name = key.strip()
    if not _HEADER_KEY_RE.fullmatch(name):
        raise ValueError(f"bad header name {name!r}: use printable ASCII without spaces or ':'")
    encoded = name.encode() + b": "
    if len(_encoded_keys) < 1024:
        _encoded_keys[key] = encoded
    return encoded


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The header block for *headers* (``NATS/1.0\\r\\nKey: Value\\r\\n...\\r\\n``)."""
    parts = [_HDR_LINE, _CRLF]
    for key, value in headers.items():
        encoded_key = _encoded_keys.get(key)
        if encoded_key is None:
            encoded_key = _encode_key(key)
        value = str(value)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {key.strip()!r}: a value cannot contain CR or LF")
        parts += [encoded_key, value.strip().encode(), _CRLF]
    parts.append(_CRLF)
    return b"".join(parts)


_WS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() strips more)


def decode_headers(raw: bytes) -> tuple[dict[str, str] | None, int | None, str]:
    """Parse a header block into ``(headers or None, status or None, description)``.

    Status lines look like ``NATS/1.0 404 No Messages``; header lines ``Key: Value``.
    """
    if not raw.isascii():
        return _decode_headers_bytes(raw)
    # The usual case: decode once, then work on str (the same result as below).
    lines = raw.decode("ascii").split("\r\n")
    first = lines[0]
    status: int | None = None
    description = ""
    if len(first) > 8:  # len("NATS/1.0")
        code, _, desc = first[8:].strip(_WS).partition(" ")
        if code.isdigit():
            status = int(code)
            description = desc.strip(_WS)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip(_WS)] = value.strip(_WS)
    return (headers or None), status, description


def _decode_headers_bytes(raw: bytes) -> tuple[dict[str, str] | None, int | None, str]:
    lines = raw.split(_CRLF)
    first = lines[0]
    status: int | None = None
    description = ""
    if len(first) > len(_HDR_LINE):
        rest = first[len(_HDR_LINE) :].strip()
        code, _, desc = rest.partition(b" ")
        if code.isdigit():
            status = int(code)
            description = desc.strip().decode("utf-8", "replace")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        headers[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return (headers or None), status, description
