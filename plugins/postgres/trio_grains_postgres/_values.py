"""What goes over the wire: statements, parameters, results, and errors as psycopg's.

Parameters and results:

* ``str`` parameters are sent as text in binary format (the server checks the encoding,
  so a NUL is an error, not a truncated value); ``bytes`` as binary (``bytea``); ``int``
  and ``float`` as their decimal text (``repr``: exact); ``None`` as NULL. The server
  infers every parameter's type from the statement.
* Results come in binary format and are decoded by column type (:data:`_DECODERS`): text
  types to ``str``, ``bytea`` to ``bytes``, integers to ``int``, floating point to
  ``float`` (exact, whatever the server's ``extra_float_digits``); other types stay
  ``bytes``. The connection's ``client_encoding`` is always UTF8.

Errors are psycopg's exception classes (:func:`psycopg.errors.lookup` of the SQLSTATE,
with the ``PGresult`` as their ``diag``), so callers handle them as they would psycopg's.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs
import psycopg
from psycopg import pq, sql

__all__ = [
    "new_etag",
    "table_statements",
    "BINARY",
    "COMMAND_OK",
    "EMPTY_QUERY",
    "TUPLES_OK",
    "Param",
    "Result",
    "Statement",
    "decode_result",
    "encode_params",
    "ends_session",
    "error_from",
]

Param: TypeAlias = str | bytes | int | float | None

COMMAND_OK = pq.ExecStatus.COMMAND_OK
TUPLES_OK = pq.ExecStatus.TUPLES_OK
EMPTY_QUERY = pq.ExecStatus.EMPTY_QUERY
TEXT = pq.Format.TEXT
BINARY = pq.Format.BINARY
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_SEVERITY = pq.DiagnosticField.SEVERITY_NONLOCALIZED


@attrs.frozen
class Statement:
    """A statement prepared on each connection the first time it runs there.

    *name* must be unique among the statements used with one pool; *text* uses ``$1``,
    ``$2``... placeholders.
    """

    name: bytes
    text: bytes


def table_statements(
    prefix: str, schema: str, table: str, texts: Mapping[str, str]
) -> dict[str, Statement]:
    """*texts* with ``{table}`` set to ``schema.table``, named ``tg_<prefix>_<key>``."""
    identifier = sql.Identifier(schema, table)
    return {
        name: Statement(
            f"tg_{prefix}_{name}".encode(), sql.SQL(text).format(table=identifier).as_bytes()
        )
        for name, text in texts.items()
    }


def new_etag() -> str:
    """A fresh ETag: random, so a stale writer can never match a re-created record."""
    return uuid.uuid4().hex


@attrs.frozen
class Result:
    """The rows of a statement (decoded) and the rows it returned or changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int


def _text(value: bytes) -> str:
    return value.decode()


def _unpacker(fmt: str) -> Callable[[bytes], Any]:
    unpack = struct.Struct(fmt).unpack

    def decode(value: bytes) -> Any:
        return unpack(value)[0]

    return decode


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    **dict.fromkeys((25, 1043, 1042, 19, 705), _text),  # text, varchar, bpchar, name, unknown
    17: bytes,  # bytea
    16: lambda value: value == b"\x01",  # bool
    21: _unpacker(">h"),  # int2
    23: _unpacker(">i"),  # int4
    20: _unpacker(">q"),  # int8
    26: _unpacker(">I"),  # oid
    2205: _unpacker(">I"),  # regclass
    700: _unpacker(">f"),  # float4
    701: _unpacker(">d"),  # float8
}


def _decoder(oid: int) -> Callable[[bytes], Any]:
    return _DECODERS.get(oid, bytes)


def encode_params(params: Sequence[Param]) -> tuple[list[bytes | None], list[int]]:
    values: list[bytes | None] = []
    formats: list[int] = []
    for param in params:
        if isinstance(param, str):
            values.append(param.encode())
            formats.append(BINARY)
        elif isinstance(param, bytes | bytearray | memoryview):
            values.append(bytes(param))
            formats.append(BINARY)
        elif param is None:
            values.append(None)
            formats.append(TEXT)
        elif isinstance(param, int | float) and not isinstance(param, bool):
            values.append(repr(param).encode())
            formats.append(TEXT)
        else:
            raise TypeError(f"cannot send a {type(param).__name__} as a statement parameter")
    return values, formats


def error_from(result: pq.abc.PGresult) -> psycopg.Error:
    """psycopg's exception for a failed result (its class from the SQLSTATE)."""
    state = (result.error_field(_SQLSTATE) or b"").decode("ascii", "replace")
    cls: type[psycopg.Error] = psycopg.OperationalError
    for code in (state, state[:2] + "000"):
        with contextlib.suppress(KeyError):
            if code.strip("0"):
                cls = psycopg.errors.lookup(code)
                break
    else:
        if state:
            cls = psycopg.DatabaseError
    message = result.get_error_message("utf-8").strip() or "unknown error"
    return cls(message, info=result)


def ends_session(result: pq.abc.PGresult) -> bool:
    """Whether a failed result means the session is over (the connection must go)."""
    state = result.error_field(_SQLSTATE)
    return not state or state.startswith(b"08") or result.error_field(_SEVERITY) == b"FATAL"


def decode_result(result: pq.abc.PGresult) -> Result:
    """The rows of a successful *result* (binary format), decoded by column type."""
    if result.status != TUPLES_OK:
        return Result([], result.command_tuples or 0)
    ntuples = result.ntuples
    decoders = [_decoder(result.ftype(column)) for column in range(result.nfields)]
    get = result.get_value
    rows = []
    for row in range(ntuples):
        values = []
        for column, decode in enumerate(decoders):
            value = get(row, column)
            values.append(None if value is None else decode(value))
        rows.append(tuple(values))
    return Result(rows, ntuples)
