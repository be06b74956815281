"""The codec trusts no message: argument and item types are checked, never converted; call
names are checked; exceptions are rebuilt by allow-list; tracebacks travel only when asked
for; input is bounded."""

from __future__ import annotations

import datetime
import enum
import inspect
import subprocess
import sys
import types
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import msgpack
import pytest

from trio_grains import (
    GrainTypeError,
    RejectedItemError,
    RemoteGrainError,
    SerializationError,
    remotable,
)
from trio_grains._methods import MethodInfo
from trio_grains._serialization import Codec, make_converter

P = inspect.Parameter


class Color(enum.Enum):
    RED = 1
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.define
class Line:
    sku: str
    qty: int


@attrs.define
class Order:
    id: str
    lines: list[Line]
    at: datetime.datetime | None = None


@attrs.define
class Defaults:
    a: int = 0
    b: str = ""


def method(
    params: dict[str, Any], *, kwargs: Any = None, defaults: Sequence[str] = ()
) -> MethodInfo:
    """A grain method ``take(self, <name>: <hint>, ..., **kwargs)``; names in *defaults*
    have a default."""

    async def take(self: object, **kw: Any) -> None:
        raise NotImplementedError

    parameters = [P("self", P.POSITIONAL_OR_KEYWORD)]
    parameters += [
        P(name, P.POSITIONAL_OR_KEYWORD, default=0 if name in defaults else P.empty)
        for name in params
    ]
    if kwargs is not None:
        parameters.append(P("extra", P.VAR_KEYWORD))
    take.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    take.__annotations__ = {**params, "return": None}
    if kwargs is not None:
        take.__annotations__["extra"] = kwargs
    return MethodInfo(name="take", func=take)


def decode_one(hint: Any, value: Any) -> Any:
    """*value*, sent as the argument ``value: hint`` of ``take()``, as the grain gets it."""
    codec = Codec(make_converter())
    return codec.decode_call(method({"value": hint}), msgpack.packb({"value": value}))["value"]


# -- arguments: the wrong type is an error naming the parameter, never a conversion -------


REJECTED = [
    (str, 123),
    (str, b"ab"),
    (str, [1, 2]),
    (str, True),
    (str, None),
    (int, "5"),
    (int, True),
    (int, 1.9),
    (int, 5.0),
    (int, None),
    (float, "1.5"),
    (float, True),
    (float, 2**60 + 1),  # an int a float cannot hold exactly
    (bool, 1),
    (bool, "true"),
    (bytes, "ab"),
    (bytes, [1, 2]),
    (list[int], "12"),
    (list[int], ""),
    (list[int], {"a": 1}),
    (list[int], [1, "2"]),
    (list[int], [True]),
    (list[str], "ab"),
    (dict[str, int], [1]),
    (dict[str, int], [["a", 1]]),
    (dict[str, int], {"a": "1"}),
    (dict[str, int], {1: 1}),
    (dict, [["a", 1]]),
    (set[str], "ab"),
    (frozenset[int], "12"),
    (tuple[int, ...], "12"),
    (tuple[int, str], [1, "a", 3]),
    (tuple[int, str], [1]),
    (tuple[str, str], "ab"),
    (Sequence[str], "ab"),
    (Color, True),
    (Color, 1.0),
    (Color, "1"),
    (Color, 7),
    (Level, True),
    (Level, "1"),
    (Level, 3),
    (Literal[1], True),
    (Literal[1], 2),
    (Literal[1], "1"),
    (Literal["a", "b"], "c"),
    (Literal["a", "b"], b"a"),
    (Literal[Color.RED], True),
    (int | None, "5"),
    (int | None, True),
    (int | str, True),
    (int | str, 1.5),
    (str | Line, 5),
    (datetime.datetime, True),
    (datetime.datetime, [2026]),
    (datetime.datetime, "not a date"),
    (datetime.date, True),
    (datetime.date, "2026-13-01"),
    (uuid.UUID, 5),
    (uuid.UUID, b"x" * 16),
    (uuid.UUID, "not-a-uuid"),
    (Path, 5),
    (Line, [1, 2]),
    (Line, "abc"),
    (Line, {"sku": 1, "qty": 1}),
    (Line, {"sku": "a", "qty": "1"}),
    (Line, {"sku": "a"}),
    (Defaults, []),  # every field has a default: a list must not make a default object
    (Defaults, "ab"),
    (Order, {"id": "o", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "2"}]}),
    (Order, {"id": "o", "lines": "ab"}),
    (Order, {"id": "o", "lines": [], "at": True}),
]


@pytest.mark.parametrize(("hint", "value"), REJECTED, ids=repr)
def test_an_argument_of_the_wrong_type_is_an_error_naming_the_parameter(
    hint: Any, value: Any
) -> None:
    with pytest.raises(SerializationError, match=r"^cannot decode argument 'value' of take\(\): "):
        decode_one(hint, value)


def test_the_message_says_what_was_expected_and_where() -> None:
    with pytest.raises(SerializationError) as info:
        decode_one(int, "5")
    assert str(info.value) == "cannot decode argument 'value' of take(): expected int, found str"
    bad = {"id": "o", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "2"}]}
    with pytest.raises(SerializationError) as info:
        decode_one(Order, bad)
    assert "expected int, found str @ value.lines[1].qty" in str(info.value)
    # the found value's type, not its text (which is the sender's)
    with pytest.raises(SerializationError, match=r"found str$"):
        decode_one(bytes, "\x1b[31mred")


ACCEPTED = [
    (str, "x", "x"),
    (int, 5, 5),
    (int, -(2**63), -(2**63)),
    (float, 1.5, 1.5),
    (float, 3, 3.0),  # JSON callers: an int for a float, when it is exact
    (bool, False, False),
    (bytes, b"\x00", b"\x00"),
    (list[int], [1, 2], [1, 2]),
    (list[Any], ["a", 1], ["a", 1]),
    (dict[str, int], {"a": 1}, {"a": 1}),
    (dict[int, str], {1: "a"}, {1: "a"}),
    (set[str], ["a", "b", "a"], {"a", "b"}),
    (frozenset[int], [1], frozenset({1})),
    (tuple[int, ...], [1, 2], (1, 2)),
    (tuple[int, str], [1, "a"], (1, "a")),
    (Sequence[str], ["a"], ("a",)),
    (Color, 1, Color.RED),
    (Color, "blue", Color.BLUE),
    (Level, 2, Level.HIGH),
    (Literal[1, "a"], "a", "a"),
    (Literal[Color.RED], 1, Color.RED),
    (int | None, None, None),
    (int | None, 4, 4),
    (int | str, "4", "4"),
    (float | str, 3, 3.0),
    (int | Line, {"sku": "a", "qty": 1}, Line("a", 1)),
    (Literal["all"] | Line, "all", "all"),
    (Any, [1, {"a": b"x"}], [1, {"a": b"x"}]),
    (
        datetime.datetime,
        "2026-11-22T12:30:00+00:00",  # ISO text, as JSON callers send
        datetime.datetime(2026, 11, 22, 12, 30, tzinfo=datetime.UTC),
    ),
    (datetime.datetime, 0, datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)),
    (datetime.date, "2026-11-22", datetime.date(2026, 11, 22)),
    (
        uuid.UUID,
        "12345678-1234-5678-1234-567812345678",
        uuid.UUID(int=0x12345678123456781234567812345678),
    ),
    (Path, "/tmp/x", Path("/tmp/x")),
    (Defaults, {}, Defaults()),
    (Order, {"id": "o", "lines": [{"sku": "a", "qty": 1}]}, Order("o", [Line("a", 1)])),
]


@pytest.mark.parametrize(("hint", "value", "expected"), ACCEPTED, ids=repr)
def test_values_of_the_right_type_arrive(hint: Any, value: Any, expected: Any) -> None:
    got = decode_one(hint, value)
    assert got == expected
    assert type(got) is type(expected)


def test_round_trips_through_the_annotations_still_work() -> None:
    codec = Codec(make_converter())
    hints = {"order": Order, "when": datetime.datetime, "tags": set[str], "level": Level}
    m = method(hints)
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    args = (Order("o", [Line("a", 2)], when), when, {"x", "y"}, Level.LOW)
    assert codec.decode_call(m, codec.encode_call(m, args, {})) == dict(
        zip(hints, args, strict=True)
    )


def test_stream_items_and_stored_values_are_decoded_as_strictly() -> None:
    codec = Codec(make_converter())
    assert codec.loads(msgpack.packb(7), int) == 7
    with pytest.raises(SerializationError, match="expected int, found str"):
        codec.loads(msgpack.packb("7"), int)
    with pytest.raises(SerializationError, match="expected a map of Defaults fields"):
        codec.loads(msgpack.packb([]), Defaults)


# -- argument names --------------------------------------------------------------------------


def test_an_argument_that_is_not_a_parameter_is_an_error_naming_it() -> None:
    codec = Codec(make_converter())
    m = method({"value": int})
    for name in ("other", "self", "__class__"):
        with pytest.raises(SerializationError, match=f"take\\(\\) has no parameter '{name}'"):
            codec.decode_call(m, msgpack.packb({"value": 1, name: 2}))
    with pytest.raises(SerializationError, match="has no parameter 1"):
        codec.decode_call(m, msgpack.packb({"value": 1, 1: 2}))


def test_a_missing_required_argument_is_an_error_naming_it() -> None:
    codec = Codec(make_converter())
    m = method({"value": int, "maybe": int}, defaults=["maybe"])
    assert codec.decode_call(m, msgpack.packb({"value": 1})) == {"value": 1}
    with pytest.raises(SerializationError, match="missing argument 'value'"):
        codec.decode_call(m, msgpack.packb({"maybe": 1}))


def test_extra_keyword_arguments_are_checked_by_the_kwargs_annotation() -> None:
    codec = Codec(make_converter())
    m = method({"value": int}, kwargs=int)
    assert codec.decode_call(m, msgpack.packb({"value": 1, "x": 2})) == {"value": 1, "x": 2}
    with pytest.raises(SerializationError, match="argument 'x' of take"):
        codec.decode_call(m, msgpack.packb({"value": 1, "x": "2"}))


@pytest.mark.parametrize("payload", [[1], "value", 5, None, b"\xc1", b""])
def test_arguments_that_are_not_a_map_are_an_error(payload: Any) -> None:
    codec = Codec(make_converter())
    data = payload if isinstance(payload, bytes) else msgpack.packb(payload)
    with pytest.raises(SerializationError, match=r"^cannot decode the arguments of take\(\)"):
        codec.decode_call(method({"value": int}), data)


# -- unknown keys in attrs payloads ----------------------------------------------------------


@attrs.define
class Cash:
    amount: int


@attrs.define
class Card:
    amount: int
    number: str


@attrs.define
class Account:
    _balance: int = attrs.field(alias="balance")
    owner: str = ""
    audited: bool = attrs.field(default=False, init=False)


@attrs.define
class Tagged:
    kind: Literal[1, 2]
    value: int


def test_unknown_keys_are_dropped_and_reach_nothing() -> None:
    got = decode_one(Line, {"sku": "a", "qty": 1, "price": 9, "__class__": "os:system"})
    assert got == Line("a", 1)
    assert not hasattr(got, "price")
    assert type(got) is Line


def test_an_unknown_key_does_not_pick_a_member_of_a_union() -> None:
    # Card is told apart from Cash by its required field 'number': only that picks it.
    assert decode_one(Cash | Card, {"amount": 1, "type": "Card", "__class__": "Card"}) == Cash(1)
    assert decode_one(Cash | Card, {"amount": 1, "number": "4111"}) == Card(1, "4111")
    with pytest.raises(SerializationError):
        decode_one(Cash | Card, {"amount": 1, "number": 4111})  # still typed once picked
    with pytest.raises(SerializationError):
        decode_one(Cash | Card, [1])


def test_private_fields_travel_by_their_attribute_name_and_init_false_ones_not_at_all() -> None:
    converter = make_converter()
    assert converter.unstructure(Account(5, "ann")) == {"_balance": 5, "owner": "ann"}
    got = decode_one(Account, {"_balance": 5, "owner": "ann", "audited": True})
    assert got == Account(5, "ann")
    assert got.audited is False  # not settable from a message
    with pytest.raises(SerializationError, match=r"required field missing @ value\._balance"):
        decode_one(Account, {"balance": 5})  # the alias is not a wire name


def test_a_literal_discriminator_is_typed_too() -> None:
    assert decode_one(Tagged, {"kind": 1, "value": 3}) == Tagged(1, 3)
    with pytest.raises(SerializationError):
        decode_one(Tagged, {"kind": True, "value": 3})


# -- exceptions ------------------------------------------------------------------------------


def reply(type_name: str, *args: Any, message: str = "forged", **more: Any) -> bytes:
    data: bytes = msgpack.packb({"type": type_name, "args": list(args), "message": message, **more})
    return data


class NotDeclared(Exception):
    pass


@remotable
class OutOfStock(Exception):
    pass


class SoldOut(OutOfStock):
    pass


class Quiet(OutOfStock):
    __grains_remotable__ = False


@remotable
class NeedsTwo(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class InvalidOrder(RejectedItemError):
    pass


@pytest.mark.parametrize(
    "type_name",
    [
        "builtins:KeyboardInterrupt",
        "builtins:SystemExit",
        "builtins:GeneratorExit",
        "builtins:BaseExceptionGroup",
        "builtins:StopIteration",
        "builtins:StopAsyncIteration",
        "subprocess:CalledProcessError",
        "trio:Cancelled",
        "trio:TooSlowError",
        "os:system",
        "builtins:print",
        "builtins:object",
        "sys:modules",
        f"{__name__}:NotDeclared",
        f"{__name__}:Quiet",
        "trio_grains._exceptions:ActivationRaceLostError",
        "trio_grains._cluster.messenger:RerouteError",
        "no_such_module_xyz:Error",
        "builtins",
        "builtins:",
        ":ValueError",
        "builtins:ValueError.__class__",
        "builtins:<locals>.ValueError",
    ],
)
def test_a_type_that_is_not_remotable_arrives_as_remote_grain_error(type_name: str) -> None:
    assert subprocess  # imported (trio is, by trio_grains): their classes can be named
    codec = Codec(make_converter())
    exc = codec.decode_exception(reply(type_name, 1, "x", message="forged"))
    assert type(exc) is RemoteGrainError
    assert exc.type_name == type_name.replace(":", ".")
    assert exc.message == "forged"
    assert "no_such_module_xyz" not in sys.modules  # a message never makes an import


def test_a_named_module_runs_no_code_of_its_own() -> None:
    looked_up: list[str] = []
    lazy = types.ModuleType("lazy_grains_test_module")
    lazy.__getattr__ = lambda name: looked_up.append(name)  # type: ignore[method-assign]
    sys.modules[lazy.__name__] = lazy
    try:
        exc = Codec(make_converter()).decode_exception(reply(f"{lazy.__name__}:Error"))
    finally:
        del sys.modules[lazy.__name__]
    assert type(exc) is RemoteGrainError
    assert looked_up == []


def round_trip(exc: BaseException, codec: Codec | None = None) -> Exception:
    codec = codec or Codec(make_converter())
    return codec.decode_exception(codec.encode_exception(exc))


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad", 3),
        KeyError("k"),
        FileNotFoundError(2, "nope"),
        TimeoutError(),
        GrainTypeError("no such type"),
        SerializationError("x"),
        RejectedItemError("invalid"),
        InvalidOrder("an application's subclass of the tree"),
        OutOfStock("declared"),
        SoldOut("a subclass of a declared one"),
    ],
    ids=repr,
)
def test_remotable_exceptions_round_trip_as_their_type(exc: Exception) -> None:
    back = round_trip(exc)
    assert type(back) is type(exc)
    assert back.args == exc.args


def test_an_exception_whose_constructor_refuses_the_args_arrives_as_remote_grain_error() -> None:
    back = round_trip(NeedsTwo("a", "b"))  # args are ("a/b",): the constructor wants two
    assert type(back) is RemoteGrainError
    assert back.type_name == f"{__name__}.NeedsTwo"
    assert back.message == "a/b"
    codec = Codec(make_converter())
    assert type(codec.decode_exception(reply(f"{__name__}:NeedsTwo", "a", "b"))) is NeedsTwo
    assert (
        type(codec.decode_exception(reply("builtins:UnicodeDecodeError", "x"))) is RemoteGrainError
    )


def test_remotable_refuses_what_must_not_cross() -> None:
    for cls in (KeyboardInterrupt, StopIteration, StopAsyncIteration, BaseException):
        with pytest.raises(TypeError):
            remotable(type("Sub", (cls,), {}))
    with pytest.raises(TypeError):
        remotable(len)  # type: ignore[type-var]


def test_tracebacks_travel_only_when_the_codec_is_told_to() -> None:
    def raise_it() -> None:
        raise NotDeclared("boom")

    try:
        raise_it()
    except NotDeclared as caught:
        exc = caught
    quiet = Codec(make_converter())
    assert quiet.remote_tracebacks is False
    assert "traceback" not in msgpack.unpackb(quiet.encode_exception(exc))
    remote = round_trip(exc, quiet)
    assert isinstance(remote, RemoteGrainError)
    assert remote.traceback_text == ""
    assert not getattr(round_trip(ValueError("v"), quiet), "__notes__", [])

    loud = Codec(make_converter(), remote_tracebacks=True)
    remote = round_trip(exc, loud)
    assert isinstance(remote, RemoteGrainError)
    assert "raise_it" in remote.traceback_text
    rebuilt = round_trip(OutOfStock("x").with_traceback(exc.__traceback__), loud)
    assert type(rebuilt) is OutOfStock
    assert any("raise_it" in note for note in rebuilt.__notes__)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_encoding_an_exception_never_fails() -> None:
    exc = round_trip(Unprintable(object()))
    assert isinstance(exc, RemoteGrainError)
    assert "cannot be shown" in exc.message


MALFORMED = [
    b"\xc1",
    b"",
    msgpack.packb([1, 2]),
    msgpack.packb("builtins:ValueError"),
    msgpack.packb({"message": "m", "args": []}),
    msgpack.packb({"type": "builtins:ValueError", "args": []}),
    msgpack.packb({"type": 5, "message": "m"}),
    msgpack.packb({"type": "", "message": "m"}),
    msgpack.packb({"type": "x" * 600, "message": "m"}),
    msgpack.packb({"type": "builtins:ValueError", "message": b"m"}),
    msgpack.packb({"type": "builtins:ValueError", "message": "m", "args": {"a": 1}}),
    msgpack.packb({"type": "builtins:ValueError", "message": "m", "args": "ab"}),
    msgpack.packb({"type": "builtins:ValueError", "message": "m", "traceback": 3}),
    msgpack.packb({"type": ["builtins", "ValueError"], "message": "m"}),
    b"\x91" * 5000 + b"\x00",
]


@pytest.mark.parametrize("data", MALFORMED, ids=lambda d: repr(d[:20]))
def test_a_malformed_error_reply_is_a_serialization_error(data: bytes) -> None:
    codec = Codec(make_converter())
    with pytest.raises(SerializationError, match=r"^cannot decode an error reply: "):
        codec.decode_exception(data)
    assert codec.decode_failures == 1


# -- bounds ----------------------------------------------------------------------------------


@attrs.define
class Tree:
    children: list[Tree] = attrs.Factory(list)


def nested(depth: int) -> bytes:
    return b"\x81\xa5value" + b"\x91" * depth + b"\x00"  # {"value": [[[...0...]]]}


def test_nesting_deeper_than_msgpack_allows_is_a_serialization_error() -> None:
    codec = Codec(make_converter())
    assert codec.decode_call(method({"value": Any}), nested(1000))  # within the limit
    with pytest.raises(SerializationError, match="arguments of take"):
        codec.decode_call(method({"value": Any}), nested(1100))


def test_a_deep_value_for_a_recursive_type_is_a_serialization_error() -> None:
    codec = Codec(make_converter())
    value: dict[str, Any] = {}
    for _ in range(500):  # 1000 levels of maps and arrays: more than Python's stack holds
        value = {"children": [value]}
    data = msgpack.packb({"value": value})
    with pytest.raises(SerializationError, match="argument 'value' of take"):
        codec.decode_call(method({"value": Tree}), data)
    shallow: dict[str, Any] = {"children": [{"children": []}]}
    got = codec.decode_call(method({"value": Tree}), msgpack.packb({"value": shallow}))
    assert got == {"value": Tree([Tree()])}


def test_input_larger_than_the_limit_is_refused_before_parsing() -> None:
    codec = Codec(make_converter(), max_size=100)
    data = msgpack.packb({"value": "x" * 200})
    with pytest.raises(SerializationError, match="more than this codec decodes"):
        codec.decode_call(method({"value": str}), data)
    for decode in (codec.loads, lambda d: codec.decode_result(method({}), d)):
        with pytest.raises(SerializationError, match="more than this codec decodes"):
            decode(data)
    with pytest.raises(SerializationError, match="more than this codec decodes"):
        codec.decode_exception(reply("builtins:ValueError", message="x" * 200))


@pytest.mark.parametrize(
    "value", [msgpack.ExtType(5, b"ab"), msgpack.ExtType(5, b""), msgpack.Timestamp(1, 0)]
)
def test_extension_types_are_refused(value: Any) -> None:
    codec = Codec(make_converter())
    with pytest.raises(SerializationError):
        codec.decode_call(method({"value": Any}), msgpack.packb({"value": value}))


def test_decode_failures_are_counted() -> None:
    codec = Codec(make_converter())
    m = method({"value": int})
    codec.decode_call(m, msgpack.packb({"value": 1}))
    for bad in ({"value": "1"}, {"other": 1}, {}, [1]):
        with pytest.raises(SerializationError):
            codec.decode_call(m, msgpack.packb(bad))
    with pytest.raises(SerializationError):
        codec.loads(b"\xc1")
    assert codec.decode_failures == 5
