"""What the KV-backed providers (``nats-kv`` storage and reminder table) share: opening
their bucket, the limits of a key, ETags as revisions, and the one error for a failed
open."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Set
from typing import TYPE_CHECKING, Any, TypeVar

from nats.js.api import StorageType

from trio_grains import ConfigError, StorageError

from ._options import (
    BadOption,
    ConnectOptions,
    parse_connect_options,
    parse_storage_type_option,
    unreachable_error,
)
from .client import MAX_SUBJECT_LENGTH as KV_MAX_SUBJECT_LENGTH
from .client import (
    Connection,
    JetStreamAPIError,
    KeyValue,
    NatsConnectionError,
    NatsError,
    create_key_value,
)

if TYPE_CHECKING:
    from .client import JetStream

__all__ = [
    "BUCKET_RE",
    "DEFAULT_SERVERS",
    "MAX_SUBJECT_LENGTH",
    "check_subject_length",
    "open_bucket",
    "open_failure",
    "open_on_connection",
    "parse_bucket_options",
    "revision_of",
]

DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)

MAX_SUBJECT_LENGTH = KV_MAX_SUBJECT_LENGTH
"""The longest ``$KV.<bucket>.<key>`` subject a record may have (the connection's subject
limit: a publish's control line must fit nats-server's ``max_control_line``, 4 KiB)."""

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


def parse_bucket_options(
    options: Mapping[str, Any], known: Set[str], section: str, provider: str
) -> tuple[dict[str, Any], BadOption]:
    """The connection options and ``bucket`` / ``replicas`` / ``storage`` of a KV-backed
    *provider* (``"nats-kv storage provider"``), checked, as keyword arguments of its
    config class; and the ``bad(key, what)`` error maker for the options it adds itself.
    An unknown key is a :class:`ConfigError` listing the *known* ones."""

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(
            f"{section} option {key!r} of the {provider} must be {what}, got {options[key]!r}"
        )

    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"{section} the {provider} has no option "
            f"{', '.join(map(repr, unknown))}; options: {', '.join(sorted(known))}"
        )
    kwargs = parse_connect_options(options, bad, allow_empty_servers=False)
    kwargs.setdefault("servers", DEFAULT_SERVERS)
    if "bucket" in options:
        value = options["bucket"]
        if not isinstance(value, str) or not BUCKET_RE.fullmatch(value):
            raise bad("bucket", "a bucket name of ASCII letters, digits, '-' and '_'")
        kwargs["bucket"] = value
    if "replicas" in options:
        value = options["replicas"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise bad("replicas", "an integer from 1 to 5 (JetStream's limit)")
        kwargs["replicas"] = value
    if "storage" in options:
        kwargs["storage"] = parse_storage_type_option(options["storage"], bad)
    return kwargs, bad


T = TypeVar("T")


@contextlib.asynccontextmanager
async def open_on_connection(
    config: ConnectOptions,
    section: str,
    connection_name: str,
    bucket: str,
    open_provider: Callable[[Connection], Awaitable[T]],
) -> AsyncIterator[T]:
    """Connect as *config* says, open a provider on that connection with *open_provider*,
    and yield it; close the connection on exit. An unreachable server or a provider that
    cannot open is one plain error (not an exception group from the connection's
    nursery), and so is what the block itself raises."""
    failure: Exception | None = None
    body_error: BaseException | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                nc = await stack.enter_async_context(config.connect(name=connection_name))
            except NatsConnectionError as exc:
                raise unreachable_error(section, config.servers, exc) from exc
            try:
                provider = await open_provider(nc)
            except (ConfigError, NatsError) as exc:
                failure = open_failure(section, bucket, exc)
            else:
                try:
                    yield provider
                except BaseException as exc:
                    body_error = exc
                    raise
                return
    except BaseExceptionGroup as group:
        # The connection's nursery wraps what the block raised: hand it back as it was.
        if body_error is not None and list(group.exceptions) == [body_error]:
            raise body_error from None
        raise
    # Raised here, once the connection (and its nursery) is closed: one plain error.
    assert failure is not None
    raise failure
