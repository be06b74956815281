"""Helpers shared by the conformance kits.

Tags that make a check's grain types and names its own, sample grain ids of every key
kind, short reprs for failure messages, ``expect_*`` wrappers turning a provider's
misbehaviour into an :class:`AssertionError` naming the rule, the loop that runs a kit's
checks, and the grain-storage read/write helpers used by the storage checks.

May import: every layer below and the ``trio_grains`` package. Not the kits, which import it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .._ids import GrainId, GrainType
from .._storage import GrainStorage, InconsistentStateError, StoredState

LARGE_STATE = 4 * 1024 * 1024

T = TypeVar("T")


# --- helpers shared by every kit ---------------------------------------------------------


def new_tag() -> str:
    """A random tag making a check's grain types and names its own."""
    return uuid.uuid4().hex[:12]


def sample_grain_ids(tag: str) -> list[GrainId]:
    """Grain ids of every key kind, under grain types unique to *tag*; all distinct."""
    kit = GrainType(f"kit{tag}")
    other = GrainType(f"kit{tag}other")
    generic = GrainType(f"kit{tag}`2")
    str_keys = [
        "plain",
        "Plain",  # differs only in case
        "plain ",  # trailing space
        " plain",
        "with spaces in it",
        "a/b/c",  # ids are parsed at the first '/'
        "/",
        "it's",
        'say "hi"',
        "back\\slash",
        "100%",
        "%41%2F",  # looks like an escaped token
        "a+b",
        "semi;colon -- and 'quotes'",
        "unicode ünïcødé 日本語 Ελληνικά",
        "caf\u00e9",  # NFC
        "cafe\u0301",  # NFD: a different key
        "emoji 🍕🧑‍🚀",
        "x" * 300,
        "default",
    ]
    ids = [GrainId.create(kit, key) for key in str_keys]
    ids += [GrainId.create(kit, n) for n in (0, 1, 42, -1, 2**63 - 1, -(2**63))]
    ids += [
        GrainId.create(kit, uuid.UUID(int=0)),
        GrainId.create(kit, uuid.UUID("6f1e4c1a-7b7e-4d8e-9a51-2f3c4d5e6f70")),
        GrainId.create(kit, 7, "eu"),
        GrainId.create(kit, 7, "EU"),
        GrainId.create(kit, -7, "ext/with 'odd' chars 🍕"),
        GrainId.create(kit, uuid.UUID(int=1), "ext"),
        GrainId.create(generic, "plain"),
        GrainId.create(generic, 42),
        GrainId.create(other, "plain"),
    ]
    assert len(set(ids)) == len(ids), "trio_grains.testing bug: sample grain ids collide"
    return ids


def show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def show_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {show(str(exc), 200)}"


async def expect_conflict(rule: str, op: Callable[[], Awaitable[Any]]) -> None:
    """*rule* must raise InconsistentStateError."""
    try:
        result = await op()
    except InconsistentStateError:
        return
    except Exception as exc:
        raise AssertionError(
            f"{rule} must raise InconsistentStateError; it raised {show_exc(exc)}"
        ) from exc
    raise AssertionError(f"{rule} must raise InconsistentStateError; it returned {show(result)}")


async def expect_success(rule: str, op: Callable[[], Awaitable[T]]) -> T:
    """*rule* must succeed; return what it returned."""
    try:
        return await op()
    except Exception as exc:
        raise AssertionError(f"{rule} must succeed; it raised {show_exc(exc)}") from exc


async def run_checks(
    kind: str,
    checks: Mapping[str, Callable[[Any], Awaitable[None]]],
    durability: frozenset[str],
    opener: Any,
    durable: bool,
) -> None:
    for name, check in checks.items():
        if not durable and name in durability:
            continue
        try:
            await check(opener)
        except AssertionError as exc:
            exc.add_note(f"(trio_grains.testing {kind} check {name!r})")
            raise


# --- storage helpers ---------------------------------------------------------------------


async def read_record(storage: GrainStorage, state: str, gid: GrainId) -> StoredState | None:
    record = await expect_success(
        f"read of state {state!r} of {gid}", lambda: storage.read(state, gid)
    )
    if record is not None:
        if not isinstance(record, StoredState):
            raise AssertionError(
                f"read must return a StoredState or None; it returned {show(record)}"
            )
        if not isinstance(record.data, bytes):
            raise AssertionError(
                f"read must return StoredState.data as bytes; it is a {type(record.data).__name__}"
            )
        if not isinstance(record.etag, str):
            raise AssertionError(
                f"read must return StoredState.etag as a str; it is {show(record.etag)}"
            )
    return record


async def write_record(
    storage: GrainStorage, state: str, gid: GrainId, data: bytes, etag: str | None
) -> str:
    new = await expect_success(
        f"write of state {state!r} of {gid} with the current etag {etag!r}",
        lambda: storage.write(state, gid, data, etag),
    )
    if not isinstance(new, str):
        raise AssertionError(f"write must return the new etag as a str; it returned {show(new)}")
    return new


async def expect_record(
    storage: GrainStorage, state: str, gid: GrainId, data: bytes, etag: str, rule: str
) -> None:
    record = await read_record(storage, state, gid)
    if record is None:
        raise AssertionError(f"{rule}; the record of state {state!r} of {gid} is missing")
    if record.data != data:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads back {show(record.data)}, "
            f"expected {show(data)}"
        )
    if record.etag != etag:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads back etag {record.etag!r}, expected {etag!r}"
        )


async def expect_missing(storage: GrainStorage, state: str, gid: GrainId, rule: str) -> None:
    record = await read_record(storage, state, gid)
    if record is not None:
        raise AssertionError(
            f"{rule}; state {state!r} of {gid} reads {show(record)}, expected None"
        )


def new_state_and_grain(tag: str | None = None) -> tuple[str, GrainId]:
    tag = tag or new_tag()
    return f"kit-{tag}", GrainId.create(f"kit{tag}", "grain")
