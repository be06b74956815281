"""Property-based fuzzing of the codec's decoders: no input, whether arbitrary bytes or any
msgpack value, raises anything but the documented :class:`SerializationError`; what
decodes has the annotated types, and a decoded exception is always an allowed one."""

from __future__ import annotations

import datetime
import enum
import inspect
from typing import Any, Literal

import attrs
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_grains import RemoteGrainError, SerializationError
from trio_grains._methods import MethodInfo
from trio_grains._serialization import Codec, make_converter

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Kind(enum.Enum):
    A = "a"
    B = 2


@attrs.define
class Line:
    sku: str
    qty: int
    note: str | None = None


@attrs.define
class Order:
    id: str
    lines: list[Line]
    at: datetime.datetime
    tags: frozenset[str] = frozenset()


@attrs.define
class Refund:
    id: str
    amount: float


class Shop:
    """Grain methods whose annotations the fuzzed payloads are decoded by."""

    async def add(self, item: str, n: int = 1) -> int:
        raise NotImplementedError

    async def place(self, order: Order, kind: Kind, mode: Literal["fast", 1]) -> Order | Refund:
        raise NotImplementedError

    async def mixed(
        self, a: int | str | None, b: dict[str, list[float]], c: tuple[int, bytes], d: Any
    ) -> dict[int, Line]:
        raise NotImplementedError

    async def loose(self, **extra: bool) -> list[tuple[int, ...]]:
        raise NotImplementedError


METHODS = [MethodInfo(name=n, func=f) for n, f in inspect.getmembers(Shop, inspect.isfunction)]
TYPES: list[Any] = [Any, int, str, bytes, Order, list[Line], Order | Refund, Kind, datetime.date]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["a", "fast", "2026-11-22", "2026-11-22T12:30:00", "id", "sku", "qty"])
)
keys = (
    st.sampled_from(
        [
            "item",
            "n",
            "order",
            "kind",
            "mode",
            "a",
            "b",
            "c",
            "d",
            "id",
            "lines",
            "sku",
            "qty",
            "at",
            "amount",
            "tags",
            "note",
            "type",
            "args",
            "message",
            "traceback",
            "__class__",
        ]
    )
    | st.text(max_size=8)
    | st.integers(-3, 3)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
error_replies = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            [
                "builtins:ValueError",
                "builtins:KeyboardInterrupt",
                "builtins:StopIteration",
                "builtins:OSError",
                "builtins:ExceptionGroup",
                "trio_grains._exceptions:GrainsError",
                "trio_grains._exceptions:RemoteGrainError",
                "os:system",
                "builtins:UnicodeError",
            ]
        )
        | values,
        "args": st.lists(values, max_size=5) | values,
        "message": st.text(max_size=20) | values,
        "traceback": st.text(max_size=20) | values,
    },
)


# Near-valid calls of place(): the right shape, any value in any field.
lines = st.fixed_dictionaries(
    {"sku": st.text(max_size=5) | values, "qty": st.integers(-5, 5) | values},
    optional={"note": st.none() | st.text(max_size=5) | values, "extra": values},
)
orders = st.fixed_dictionaries(
    {
        "id": st.text(max_size=5) | values,
        "lines": st.lists(lines, max_size=3) | values,
        "at": st.floats() | st.integers(-(2**40), 2**40) | st.sampled_from(["2026-11-22"]) | values,
    },
    optional={"tags": st.lists(st.text(max_size=3), max_size=3) | values, "amount": values},
)
place_calls = st.fixed_dictionaries(
    {
        "order": orders | values,
        "kind": st.sampled_from(["a", 2, 2.0, True]) | values,
        "mode": st.sampled_from(["fast", 1, True, 1.0]) | values,
    },
    optional={"extra": values},
)


def refused_or(decode: Any, *args: Any) -> Any:
    try:
        return decode(*args)
    except SerializationError:
        return None


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_serialization_error(data: bytes) -> None:
    codec = Codec(make_converter())
    failures = 0
    for m in METHODS:
        failures += refused_or(codec.decode_call, m, data) is None
        failures += refused_or(codec.decode_result, m, data) is None
    for type_ in TYPES:
        refused_or(codec.loads, data, type_)
    exc = refused_or(codec.decode_exception, data)
    assert exc is None or isinstance(exc, Exception)
    assert codec.decode_failures >= failures


@FUZZ
@given(payload=st.dictionaries(keys, values, max_size=6))
def test_any_argument_map_decodes_to_the_parameters_or_is_refused(payload: dict[Any, Any]) -> None:
    codec = Codec(make_converter())
    data = msgpack.packb(payload)
    for m in METHODS:
        decoded = refused_or(codec.decode_call, m, data)
        if decoded is not None:
            names = inspect.signature(m.func).parameters
            assert set(decoded) <= set(names) or m.name == "loose"
            if m.name == "add":
                assert type(decoded["item"]) is str
                assert type(decoded.get("n", 1)) is int
            if m.name == "place":
                assert type(decoded["order"]) is Order
                assert all(type(line.qty) is int for line in decoded["order"].lines)
            if m.name == "loose":
                assert all(type(v) is bool for v in decoded.values())


@FUZZ
@given(value=values)
def test_any_value_decodes_as_its_type_or_is_refused(value: Any) -> None:
    codec = Codec(make_converter())
    data = msgpack.packb(value)
    for m in METHODS:
        refused_or(codec.decode_result, m, data)
    for type_ in TYPES:
        refused_or(codec.loads, data, type_)


@FUZZ
@given(reply=error_replies | values)
def test_any_error_reply_is_an_allowed_exception_or_refused(reply: Any) -> None:
    codec = Codec(make_converter())
    exc = refused_or(codec.decode_exception, msgpack.packb(reply))
    if exc is not None:
        assert isinstance(exc, Exception)
        assert not isinstance(exc, (StopIteration, StopAsyncIteration))
        if type(exc) is not RemoteGrainError:
            assert reply["type"] != "os:system"


@FUZZ
@given(call=place_calls)
def test_near_valid_calls_decode_with_every_field_typed_or_are_refused(call: Any) -> None:
    codec = Codec(make_converter())
    place = next(m for m in METHODS if m.name == "place")
    decoded = refused_or(codec.decode_call, place, msgpack.packb(call))
    if decoded is None:
        return
    assert set(decoded) == {"order", "kind", "mode"}
    order = decoded["order"]
    assert type(order) is Order
    assert type(order.id) is str
    assert type(order.at) is datetime.datetime
    assert type(order.tags) is frozenset
    assert all(type(t) is str for t in order.tags)
    for line in order.lines:
        assert (type(line.sku), type(line.qty)) == (str, int)
        assert line.note is None or type(line.note) is str
    assert type(decoded["kind"]) is Kind
    assert decoded["mode"] in ("fast", 1)
    assert type(decoded["mode"]) in (str, int)
