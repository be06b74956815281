"""Rows of the cluster's shared tables as untrusted input: bounds, strict fields, skip-and-count.

Membership rows, grain directory entries and reminder rows live in tables that every silo
of a cluster reads (a NATS KV bucket, a database). Anything that can write there (a silo of
another version, an operator's script, a client holding the bucket's credentials) can put
any bytes under any key. A row that crashes its reader would crash every silo that reads
it, at every restart, until someone deletes it; so each decoder here follows four rules:

* the size is checked before parsing: at most :data:`MAX_ROW_BYTES`;
* JSON is parsed by the standard library's C parser; nesting too deep for it
  (``RecursionError``), ``NaN`` and ``Infinity``, a top level that is not an object, are
  malformed rows like any other;
* every field is checked for its exact type and nothing is coerced: ``"1"`` is not a
  number, ``true`` is not ``1``, a number is not a string; unknown fields are ignored (so a
  newer version may add some);
* a decoder raises only its documented error (each table says which one; the helpers here
  raise :class:`ValueError`), and the table reading rows in bulk skips the row, counts it
  and logs it once (:class:`MalformedRows`), so one bad row never stops a silo.

Membership rows and directory entries are decoded by the core for every provider
(:func:`~trio_grains._cluster.membership.decode_silo_row` in the membership protocol, which
also does the skipping and counting; :func:`~trio_grains._cluster.directory.decode_directory_entry`
for directories that store bytes): a provider stores bytes and never parses them itself.

May import: nothing of trio-grains.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn, TypeVar

import attrs

R = TypeVar("R")
T = TypeVar("T")

__all__ = [
    "MAX_ROW_BYTES",
    "MalformedRows",
    "load_json_object",
    "number_field",
    "count_field",
    "text_field",
    "texts_field",
]

MAX_ROW_BYTES = 64 * 1024
"""The largest row a table decodes (bytes of its stored value); a larger one is malformed.

Rows written by trio-grains are far smaller: a membership row is a few hundred bytes plus
the names of the grain types the silo hosts, a directory entry or a reminder row is one
grain id and a few short fields."""

_REMEMBERED = 1024  # malformed rows remembered per table, so re-reads neither count nor log
_SHOWN = 200  # characters of a key quoted in a message (twice that of a whole message)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number a row may hold")


def load_json_object(data: bytes, *, max_bytes: int = MAX_ROW_BYTES) -> dict[str, Any]:
    """The JSON object *data* holds; :class:`ValueError` (only) if it holds anything else.

    *data* longer than *max_bytes* is refused before parsing. Nesting deeper than the
    parser can go, invalid UTF-8, ``NaN``, ``Infinity``, and a value that is not an object
    are ValueErrors too.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes, more than the {max_bytes} a row may have")
    try:
        value = json.loads(bytes(data), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int() digit limits
        raise ValueError(f"not JSON: {exc}") from None
    except Exception as exc:  # nothing else is expected; still not the caller's problem
        raise ValueError(f"not JSON: {exc!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got a {type(value).__name__}")
    return value


_MISSING: Any = object()


def _field(obj: Mapping[str, Any], name: str, default: Any) -> Any:
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"field {name!r} is missing")
        return default
    return value


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} holds a lone surrogate") from None
    return value


def text_field(
    obj: Mapping[str, Any], name: str, *, default: Any = _MISSING, empty: bool = False
) -> str:
    """Field *name* of *obj*: a string (valid UTF-8 text), non-empty unless *empty*."""
    value = _check_text(_field(obj, name, default), f"field {name!r}")
    if not value and not empty:
        raise ValueError(f"field {name!r} must not be empty")
    return value


def texts_field(obj: Mapping[str, Any], name: str, *, default: Any = _MISSING) -> list[str]:
    """Field *name* of *obj*: a list of strings (each valid UTF-8 text)."""
    value = _field(obj, name, default)
    if not isinstance(value, list | tuple):
        raise ValueError(f"field {name!r} must be a list of strings, got {type(value).__name__}")
    return [_check_text(item, f"an item of field {name!r}") for item in value]


def number_field(obj: Mapping[str, Any], name: str, *, default: Any = _MISSING) -> float:
    """Field *name* of *obj*: a finite number (an int or a float, not a bool), as a float."""
    value = _field(obj, name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"field {name!r} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"field {name!r} is too large") from None
    if not math.isfinite(number):
        raise ValueError(f"field {name!r} must be finite, got {number!r}")
    return number


def count_field(obj: Mapping[str, Any], name: str, *, default: Any = _MISSING) -> int:
    """Field *name* of *obj*: an integer from 0 to 2**63 - 1 (not a bool, not a float)."""
    value = _field(obj, name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be an integer, got {type(value).__name__}")
    if not 0 <= value < 2**63:
        raise ValueError(f"field {name!r} must be from 0 to 2**63 - 1")
    return value


@attrs.define(eq=False)
class MalformedRows:
    """The malformed rows one table met: counted, and each logged once.

    A row is a key at one revision (or ETag): reading it again neither counts nor logs it
    again, writing another bad value under the key does. The last 1024 rows are remembered
    (a table flooded with bad rows logs no more than it counts). *where* names the table in
    log records (``"membership bucket 'grains-membership-c1'"``).
    """

    where: str
    logger: logging.Logger
    count: int = attrs.field(default=0, init=False)
    _seen: dict[tuple[str, str], None] = attrs.field(factory=dict, init=False)

    def report(self, key: str, revision: object, error: object) -> bool:
        """Count and log the malformed row *key* at *revision*, unless it was reported
        already; True if it was new. *error*: why it is malformed, naming the row (the
        decoder's exception, say)."""
        mark = (key, str(revision))
        if mark in self._seen:
            return False
        self._seen[mark] = None
        if len(self._seen) > _REMEMBERED:
            del self._seen[next(iter(self._seen))]
        self.count += 1
        self.logger.warning(
            "%s: %s (skipped; counted in malformed_rows, logged once)",
            self.where,
            _printable(str(error)),
        )
        return True

    def decode_all(
        self,
        rows: Iterable[R],
        decode: Callable[[R], T],
        errors: type[Exception] | tuple[type[Exception], ...],
        key: Callable[[R], str],
        revision: Callable[[R], object],
    ) -> list[T]:
        """``decode(row)`` of each of *rows* that decodes; the others (raising *errors*)
        skipped and reported under ``key(row)`` at ``revision(row)``."""
        decoded = []
        for row in rows:
            try:
                decoded.append(decode(row))
            except errors as exc:
                self.report(key(row), revision(row), exc)
        return decoded


def _printable(text: str) -> str:
    """*text* cut to a few hundred characters, control characters escaped: it comes from
    a table anyone with write access can fill, and must not forge log lines."""
    if len(text) > 2 * _SHOWN:
        text = f"{text[: 2 * _SHOWN]}... ({len(text)} characters)"
    return text if text.isprintable() else repr(text)[1:-1]
