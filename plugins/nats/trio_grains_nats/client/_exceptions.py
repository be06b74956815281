"""The exception tree of the NATS client (:mod:`trio_grains_nats.client`).

Every error raised on purpose derives from :class:`NatsError`, a plain :class:`Exception`:
the client knows nothing of trio-grains. The providers built on it translate these errors
into trio-grains' own at their boundary (a failed storage write is a ``StorageError``, an
unreachable server at start a ``ConfigError``, ...) and mark :class:`NatsError` remotable
(``trio_grains_nats._options``), so one raised in a grain reaches a caller on another silo
as itself::

    NatsError
    ├── NatsConnectionError            no server of the list could be reached (or the
    │   │                              connection was lost and reconnecting gave up)
    │   ├── AuthorizationError         the server refused the credentials
    │   └── StaleConnectionError       the server stopped answering PINGs
    ├── ConnectionClosedError          the connection is closed (or draining): open a new one
    ├── ProtocolViolationError         a `-ERR` the server sent that names a bad request
    │                                  (bad subject, payload too large, permissions, ...)
    ├── NoRespondersError              a request reached no subscriber of its subject
    ├── InvalidKeyError                a KV key (or watch filter) NATS KV does not allow
    │                                  (also a ValueError)
    └── JetStreamError                 JetStream-level failures
        ├── JetStreamAPIError          the JetStream API answered with an error
        │   │                          (``code``, ``err_code``, ``description``)
        │   ├── NotFoundError          a stream, consumer, bucket or key that does not exist
        │   │   └── KeyDeletedError    KV ``get`` of a key whose last entry is a delete
        │   └── WrongLastSequenceError a compare-and-set (KV create/update) lost the race
        │       └── KeyExistsError     KV ``create`` of a key that already holds a value

Errors from the transport (``OSError``, ``trio.BrokenResourceError``, TLS errors) are
translated at the boundary into :class:`NatsConnectionError` with the original as
``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationError",
    "ConnectionClosedError",
    "InvalidKeyError",
    "JetStreamAPIError",
    "JetStreamError",
    "KeyDeletedError",
    "KeyExistsError",
    "NatsConnectionError",
    "NatsError",
    "NoRespondersError",
    "NotFoundError",
    "ProtocolViolationError",
    "StaleConnectionError",
    "WrongLastSequenceError",
]


class NatsError(Exception):
    """The root of every error the NATS client raises on purpose."""


class NatsConnectionError(NatsError):
    """No server could be reached, or the connection was lost for good."""


class AuthorizationError(NatsConnectionError):
    """The server refused the credentials given to :func:`connect`."""


class StaleConnectionError(NatsConnectionError):
    """The server did not answer our keep-alive PINGs in time."""


class ConnectionClosedError(NatsError):
    """The connection is closed (or draining) and cannot be used any more."""


class ProtocolViolationError(NatsError):
    """The server answered ``-ERR`` to something this connection sent."""


class NoRespondersError(NatsError):
    """A request was published on a subject that no subscriber listens to."""


class InvalidKeyError(NatsError, ValueError):
    """A key-value key NATS KV does not allow: a wildcard (``*``, ``>``), an empty token,
    a character outside ``A-Z a-z 0-9 - _ / = . % @``, or too long a subject. Nothing is
    sent to the server."""


class JetStreamError(NatsError):
    """A JetStream operation failed."""


class JetStreamAPIError(JetStreamError):
    """The JetStream API returned an error.

    ``code`` is the HTTP-like status (400, 404, 503, ...), ``err_code`` JetStream's own
    error number (e.g. 10071 for "wrong last sequence"), ``description`` its text.
    """

    def __init__(
        self, description: str, *, code: int | None = None, err_code: int | None = None
    ) -> None:
        super().__init__(f"{description} (code={code}, err_code={err_code})")
        self.description = description
        self.code = code
        self.err_code = err_code


class NotFoundError(JetStreamAPIError):
    """A stream, consumer, KV bucket or key that does not exist."""


class WrongLastSequenceError(JetStreamAPIError):
    """An expected-last-sequence check failed (a KV ``update`` with a stale revision)."""


class KeyExistsError(WrongLastSequenceError):
    """KV ``create`` of a key that already has a value."""


class KeyDeletedError(NotFoundError):
    """KV ``get`` of a key whose latest entry is a delete or purge marker."""

    def __init__(self, key: str, revision: int) -> None:
        super().__init__(f"key {key!r} was deleted at revision {revision}", code=404)
        self.key = key
        self.revision = revision


# JetStream error codes (nats-server's errors.json) mapped to our types.
JS_ERR_WRONG_LAST_SEQUENCE = 10071
JS_ERR_STREAM_NOT_FOUND = 10059
JS_ERR_CONSUMER_NOT_FOUND = 10014
JS_ERR_MESSAGE_NOT_FOUND = 10037


def api_error(description: str, code: int | None, err_code: int | None) -> JetStreamAPIError:
    """The :class:`JetStreamAPIError` subclass for a JetStream API error body."""
    if err_code == JS_ERR_WRONG_LAST_SEQUENCE:
        return WrongLastSequenceError(description, code=code, err_code=err_code)
    if code == 404 or err_code in (
        JS_ERR_STREAM_NOT_FOUND,
        JS_ERR_CONSUMER_NOT_FOUND,
        JS_ERR_MESSAGE_NOT_FOUND,
    ):
        return NotFoundError(description, code=code, err_code=err_code)
    return JetStreamAPIError(description, code=code, err_code=err_code)
