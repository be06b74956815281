"""What the KV-backed providers (``nats-kv`` storage and reminder table) share: opening
their bucket, the limits of a key, ETags as revisions, and the one error for a failed
open."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nats.js.api import StorageType

from trio_grains import ConfigError, StorageError

from ._exceptions import JetStreamAPIError
from ._kv import KeyValue, create_key_value

if TYPE_CHECKING:
    from ._jetstream import JetStream

__all__ = [
    "BUCKET_RE",
    "DEFAULT_SERVERS",
    "MAX_SUBJECT_LENGTH",
    "check_subject_length",
    "open_bucket",
    "open_failure",
    "revision_of",
]

DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)

MAX_SUBJECT_LENGTH = 3900
"""The longest ``$KV.<bucket>.<key>`` subject a record may have: a publish's control line
must fit nats-server's ``max_control_line`` (4 KiB by default)."""

BUCKET_RE = re.compile(r"[A-Za-z0-9_-]+")
_JS_ERR_STREAM_NAME_IN_USE = 10058  # the bucket exists with other settings


async def open_bucket(
    js: JetStream,
    bucket: str,
    *,
    replicas: int,
    storage: StorageType,
    max_bytes: int = -1,
    settings: str = "replicas and storage",
) -> KeyValue:
    """*bucket* with history 1, created unless it exists (then used as it is, whatever its
    settings). A bucket that cannot be created (more *replicas* than the NATS cluster has
    servers, say) is a :class:`ConfigError` naming the options to check (*settings*)."""
    if not BUCKET_RE.fullmatch(bucket):
        raise ConfigError(f"bucket name {bucket!r} must hold only A-Z a-z 0-9 _ -")
    try:
        return await create_key_value(
            js,
            bucket,
            history=1,
            max_bytes=max_bytes,
            storage=storage,
            replicas=replicas,
            allow_msg_ttl=False,
        )
    except JetStreamAPIError as exc:
        if exc.err_code != _JS_ERR_STREAM_NAME_IN_USE:
            raise ConfigError(
                f"cannot create the NATS KV bucket {bucket!r}: {exc.description}; check "
                f"the options {settings}, or create the bucket yourself "
                f"(nats kv add {bucket} --history 1)"
            ) from exc
        return await js.key_value(bucket)  # created by someone else, with other settings


def check_subject_length(bucket: str, key: str, what: str, fix: str) -> None:
    """A :class:`StorageError` if ``$KV.<bucket>.<key>`` is too long for a NATS subject;
    *what* names the record (``state 'cart' of cart/bob``), *fix* says what to shorten."""
    if len(bucket) + len(key) + 5 > MAX_SUBJECT_LENGTH:
        raise StorageError(
            f"the KV key of {what} is {len(key)} characters long: too long for a NATS "
            f"subject (at most {MAX_SUBJECT_LENGTH} with the bucket name; characters "
            f"outside A-Z a-z 0-9 - _ / take 3 per UTF-8 byte); {fix}"
        )


def revision_of(etag: str) -> int | None:
    """The revision an ETag names, or None if these providers never issue *etag*."""
    if etag.isascii() and etag.isdigit() and etag[0] != "0":
        return int(etag)
    return None


def open_failure(section: str, bucket: str, exc: Exception) -> Exception:
    """The one error for a provider that could not open: a ConfigError stays one (with the
    section), anything else is a StorageError naming the bucket."""
    failure: Exception
    if isinstance(exc, ConfigError):
        failure = ConfigError(f"{section} {exc}")
    else:
        failure = StorageError(f"{section} cannot open NATS KV bucket {bucket!r}: {exc}")
    failure.__cause__ = exc
    return failure
