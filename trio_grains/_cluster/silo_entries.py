"""Silo entries: a silo's membership row, the view of all rows, and their encoding.

A :class:`SiloEntry` is what a silo says of itself in the membership table (status,
address, roles, grain types, load, a version); a :class:`MembershipView` is every entry a
silo has seen; :func:`encode_silo_row` / :func:`decode_silo_row` turn an entry into the
bytes a table stores and back, decoding rows as untrusted input.

May import: values (``_exceptions``, ``_rows``). Not the other cluster modules: these are
the bottom of the cluster.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping

import attrs

from .._exceptions import MembershipError
from .._rows import (
    MAX_ROW_BYTES,
    count_field,
    load_json_object,
    number_field,
    text_field,
    texts_field,
)

__all__ = [
    "MembershipRow",
    "MembershipRows",
    "MembershipView",
    "SiloEntry",
    "SiloStatus",
    "decode_silo_row",
    "encode_silo_row",
]


# --- values ---------------------------------------------------------------------------------


class SiloStatus(enum.Enum):
    """The life cycle of a silo in the table; ``DEAD`` is final."""

    JOINING = "joining"
    ACTIVE = "active"
    SHUTTING_DOWN = "shutting_down"
    DEAD = "dead"


def _to_roles(roles: Iterable[str]) -> frozenset[str]:
    return frozenset(roles)


@attrs.frozen
class SiloEntry:
    """One silo's row in the membership table.

    ``address``: where other silos reach it (its transport address); ``grain_types``: the
    grain type names it hosts (placement only picks silos that host the type);
    ``started_at`` and ``heartbeat_at``: wall-clock seconds (informational; failure
    detection does not compare clocks); ``load``: its activation count at the last
    heartbeat (for activation-count placement); ``version``: the version of its stored
    row (:attr:`MembershipRow.version`), strictly larger after every write of the row, and
    comparable with :attr:`MembershipView.version`.
    """

    silo_id: str
    address: str
    status: SiloStatus = SiloStatus.JOINING
    roles: frozenset[str] = attrs.field(default=frozenset(), converter=_to_roles)
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    version: int = 0
    grain_types: frozenset[str] = attrs.field(default=frozenset(), converter=_to_roles)
    load: int = 0
    #: where other silos reach it for the in-cluster directory ("": no peer endpoint)
    peer_address: str = ""

    @property
    def alive(self) -> bool:
        """Not ``DEAD``."""
        return self.status is not SiloStatus.DEAD


def _freeze_entries(entries: Mapping[str, SiloEntry]) -> Mapping[str, SiloEntry]:
    return dict(sorted(entries.items()))


@attrs.frozen(hash=False)
class MembershipView:
    """A snapshot of the table: ``entries`` by silo id (``DEAD`` rows included).

    ``version`` increases strictly from one view to the next of a watch (it is the
    version of the table's latest write that the view includes).
    """

    entries: Mapping[str, SiloEntry] = attrs.field(factory=dict, converter=_freeze_entries)
    version: int = 0

    def active(self) -> list[SiloEntry]:
        """The ``ACTIVE`` silos, sorted by silo id."""
        return [e for e in self.entries.values() if e.status is SiloStatus.ACTIVE]

    def alive(self) -> list[SiloEntry]:
        """Every silo that is not ``DEAD`` (joining and shutting down too), by silo id."""
        return [e for e in self.entries.values() if e.alive]

    def get(self, silo_id: str) -> SiloEntry | None:
        return self.entries.get(silo_id)

    def status_of(self, silo_id: str) -> SiloStatus | None:
        """The silo's status, ``None`` if it is not in the view."""
        entry = self.entries.get(silo_id)
        return None if entry is None else entry.status


@attrs.frozen
class MembershipRow:
    """One stored row of a :class:`MembershipTable`, as the table keeps it.

    ``key``: the table's key (:meth:`MembershipTable.key_of` of a silo id, or any key a
    foreign writer used); ``data``: the bytes exactly as written (never empty; the table
    does not look inside); ``version``: a positive integer the table gave this write.
    """

    key: str
    data: bytes
    version: int


def _freeze_rows(rows: Mapping[str, MembershipRow]) -> Mapping[str, MembershipRow]:
    return dict(rows)


@attrs.frozen(hash=False)
class MembershipRows:
    """Every row of a table at one moment, by key; ``version``: the version of the latest
    write (deletes included) these rows reflect (0 for a table never written)."""

    rows: Mapping[str, MembershipRow] = attrs.field(factory=dict, converter=_freeze_rows)
    version: int = 0


# --- the row codec --------------------------------------------------------------------------


def _same(silo_id: str) -> str:
    return silo_id


def encode_silo_row(entry: SiloEntry, key_of: Callable[[str], str] = _same) -> bytes:
    """The stored bytes of *entry*: JSON, ``version`` left out (it is the row's version).

    Raises :class:`MembershipError` for a row that :func:`decode_silo_row` would refuse
    (larger than 64 KiB, say), rather than store one no silo can read.
    """
    data = json.dumps(
        {
            "silo_id": entry.silo_id,
            "address": entry.address,
            "status": entry.status.value,
            "roles": sorted(entry.roles),
            "started_at": entry.started_at,
            "heartbeat_at": entry.heartbeat_at,
            "grain_types": sorted(entry.grain_types),
            "load": entry.load,
            **({"peer_address": entry.peer_address} if entry.peer_address else {}),
        },
        separators=(",", ":"),
    ).encode()
    try:
        decode_silo_row(key_of(entry.silo_id), data, entry.version, key_of)
    except (MembershipError, ValueError) as exc:
        raise MembershipError(
            f"the membership row of silo {entry.silo_id!r} could not be read back ({exc}): "
            f"keep it under {MAX_ROW_BYTES} bytes (fewer or shorter grain type and role "
            "names) and its texts valid UTF-8"
        ) from None
    return data


def decode_silo_row(
    key: str, data: bytes, version: int, key_of: Callable[[str], str] = _same
) -> SiloEntry:
    """The row stored as *data* under the table key *key* at *version*.

    Raises :class:`MembershipError`, and nothing else, if *data* is not a row of the silo
    that *key* names (``key_of(silo_id) == key``): more than 64 KiB, not a JSON object, a
    field missing or of the wrong type (no coercion), an unknown status, a number that is
    not finite, a load below 0, an address with spaces or control characters. Fields
    unknown here are ignored; ``grain_types`` and ``load`` default to none and 0 (rows
    written before they existed).
    """
    try:
        obj = load_json_object(data)
        silo_id = text_field(obj, "silo_id")
        address = text_field(obj, "address")
        peer_address = text_field(obj, "peer_address", default="", empty=True)
        for name, text in (("address", address), ("peer_address", peer_address)):
            if not text.isprintable() or any(ch.isspace() for ch in text):
                raise ValueError(f"field {name!r} holds spaces or control characters")
        status = text_field(obj, "status")
        try:
            silo_status = SiloStatus(status)
        except ValueError:
            raise ValueError(f"field 'status' is not a silo status: {status[:40]!r}") from None
        entry = SiloEntry(
            silo_id=silo_id,
            address=address,
            status=silo_status,
            roles=texts_field(obj, "roles"),
            started_at=number_field(obj, "started_at"),
            heartbeat_at=number_field(obj, "heartbeat_at"),
            version=version,
            grain_types=texts_field(obj, "grain_types", default=[]),
            load=count_field(obj, "load", default=0),
            peer_address=peer_address,
        )
        if key_of(silo_id) != key:
            raise ValueError(f"it names silo {silo_id[:80]!r}, whose key is not {key[:80]!r}")
    except Exception as exc:  # ValueError from the checks; anything else is malformed too
        raise MembershipError(f"malformed membership row {key[:200]!r}: {exc}") from None
    return entry
