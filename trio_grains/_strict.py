"""Strict structure hooks for the silo's converter: check the wire type, never convert.

cattrs' default hooks *convert*: ``str(value)``, ``int(value)``, ``list(value)``, so a
``str`` parameter given ``[1, 2]`` would receive ``'[1, 2]'``. :func:`make_strict`
replaces them on a converter with hooks that check the class of the wire value and raise
:class:`WrongValue` otherwise (see ``_serialization``'s docstring for the rules and the
deliberate widenings). The codec turns the failures into one
:class:`~trio_grains.SerializationError` naming where in the value it failed.

May import: nothing of trio-grains.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import dataclasses
import datetime
import enum
import pathlib
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Literal

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    list_structure_factory,
    namedtuple_structure_factory,
)

__all__ = ["Hook", "WrongValue", "make_strict", "structure_str", "type_name", "wrong_value"]

Hook = Callable[[Any, Any], Any]


# -- strict structure hooks -------------------------------------------------------------------
#
# Each hook checks the class of the wire value with ``value.__class__ is ...`` (one compare
# on the happy path, and exact: ``True.__class__`` is ``bool``, not ``int``) and raises
# WrongValue otherwise. cattrs collects nested failures into exception groups whose notes
# give the path; Codec turns them into one SerializationError message.


class WrongValue(TypeError):
    """A value that is not what its annotation asks for (the message says what it is)."""


def type_name(t: Any) -> str:
    """``int``, ``list[int]``, ``Order``, ``None``: a type as an error message shows it."""
    if t is type(None):
        return "None"
    if isinstance(t, type) and not typing.get_args(t):
        return t.__qualname__
    return repr(t).replace("typing.", "")


def _found(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def wrong_value(expected: str, value: Any) -> WrongValue:
    return WrongValue(f"expected {expected}, found {_found(value)}")


def _enum_member(value: Any, cl: Any) -> Any:
    """The member of the enum *cl* whose value is *value*, of the same class."""
    try:
        member = cl(value)
    except (ValueError, TypeError):
        raise WrongValue(f"{value!r:.60} is not a value of {type_name(cl)}") from None
    if member.value.__class__ is not value.__class__:
        raise wrong_value(f"a value of {type_name(cl)}", value)
    return member


def _as_subclass(value: Any, cl: Any) -> Any:
    """*value*, already of the right wire class, as *cl*: an ``IntEnum``, a ``StrEnum``,
    or another subclass of ``int``/``str``/``float``/``bytes`` (which singledispatch
    routes to the base class's hook)."""
    if issubclass(cl, enum.Enum):
        return _enum_member(value, cl)
    return cl(value)


def structure_str(value: Any, cl: Any) -> Any:
    if value.__class__ is str:
        return value if cl is str else _as_subclass(value, cl)
    raise wrong_value(type_name(cl), value)


def _structure_int(value: Any, cl: Any) -> Any:
    if value.__class__ is int:
        return value if cl is int else _as_subclass(value, cl)
    raise wrong_value(type_name(cl), value)


def _structure_float(value: Any, cl: Any) -> Any:
    kind = value.__class__
    if kind is float:
        return value if cl is float else _as_subclass(value, cl)
    if kind is int:  # JSON callers: 3 for 3.0, when the float holds it exactly
        number = float(value)
        if number == value:
            return number if cl is float else _as_subclass(number, cl)
        raise WrongValue(f"expected {type_name(cl)}, found an int a float cannot hold exactly")
    raise wrong_value(type_name(cl), value)


def _structure_bool(value: Any, _: Any) -> bool:
    if value.__class__ is bool:
        return value
    raise wrong_value("bool", value)


def _structure_bytes(value: Any, cl: Any) -> Any:
    if value.__class__ is bytes:
        return value if cl is bytes else _as_subclass(value, cl)
    raise wrong_value(type_name(cl), value)


def _structure_path(value: Any, cl: Any) -> Any:
    if value.__class__ is str:
        return cl(value)
    raise wrong_value(f"{type_name(cl)} text", value)


def _structure_datetime(value: Any, _: Any) -> datetime.datetime:
    """A datetime from its wire form (a POSIX timestamp) or from ISO 8601 text, which is
    what JSON callers (``Client.call``, ``trio-grains client``) can send."""
    kind = value.__class__
    if kind is str:
        return datetime.datetime.fromisoformat(value)
    if kind is float or kind is int:
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    raise wrong_value("a timestamp or ISO 8601 text", value)


def _structure_date(value: Any, _: Any) -> datetime.date:
    kind = value.__class__
    if kind is str:
        return datetime.date.fromisoformat(value)
    if kind is float or kind is int:
        return datetime.datetime.fromtimestamp(value, datetime.UTC).date()
    raise wrong_value("a timestamp or ISO 8601 text", value)


def _structure_uuid(value: Any, _: Any) -> uuid.UUID:
    if value.__class__ is str:
        return uuid.UUID(value)
    if value.__class__ is uuid.UUID:
        return value
    raise wrong_value("UUID text", value)


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _enum_hook(cl: Any) -> Hook:
    classes = frozenset(type(member.value) for member in cl)

    def structure_enum(value: Any, _: Any) -> Any:
        if value.__class__ in classes:
            return _enum_member(value, cl)
        raise wrong_value(f"a value of {type_name(cl)}", value)

    return structure_enum


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is Literal


_MISSING = object()


def _literal_table(args: tuple[Any, ...]) -> dict[tuple[type, Any], Any]:
    """``(wire class, wire value) -> literal`` for the values of ``Literal[...]`` types (an
    enum member travels as its value): a dict lookup that tells ``1`` from ``True``."""
    table: dict[tuple[type, Any], Any] = {}
    for arg in args:
        wire = arg.value if isinstance(arg, enum.Enum) else arg
        table[(wire.__class__, wire)] = arg
    return table


def _literal_hook(t: Any) -> Hook:
    table = _literal_table(typing.get_args(t))
    classes = frozenset(kind for kind, _ in table)
    shown = ", ".join(repr(wire) for _, wire in table)

    def structure_literal(value: Any, _: Any) -> Any:
        if value.__class__ in classes:
            found = table.get((value.__class__, value), _MISSING)
            if found is not _MISSING:
                return found
            raise WrongValue(f"expected one of {shown}, found {value!r:.60}")
        raise wrong_value(f"one of {shown}", value)

    return structure_literal


_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _is_scalar_union(t: Any) -> bool:
    """A union with a scalar type or a literal among its members (``int | str``,
    ``int | None``, ``Literal["a"] | Order``). Unions of attrs classes alone are left to
    cattrs, which tells them apart by their required fields."""
    return _is_union(t) and any(
        (m in _SCALARS and m is not type(None)) or _is_literal(m) for m in typing.get_args(t)
    )


def _union_hook(t: Any, conv: cattrs.Converter) -> Hook:
    """Scalars pass when their class is exactly a member (so ``True`` is not an ``int``
    member); an int widens to a float member when no int member exists; any other value
    goes to the union of the remaining members, if there are any."""
    members = typing.get_args(t)
    plain = frozenset(m for m in members if m in _SCALARS)
    table = _literal_table(tuple(v for m in members if _is_literal(m) for v in typing.get_args(m)))
    literal_classes = frozenset(kind for kind, _ in table)
    widen = float in plain and int not in plain
    rest = [m for m in members if m not in plain and not _is_literal(m)]
    spill: Any = None
    if rest:
        spill = rest[0] if len(rest) == 1 else typing.Union.__getitem__(tuple(rest))
    expected = " | ".join(type_name(m) for m in members)

    def structure_union(value: Any, _: Any) -> Any:
        kind = value.__class__
        if kind in plain:
            return value
        if kind in literal_classes:
            found = table.get((kind, value), _MISSING)
            if found is not _MISSING:
                return found
        if widen and kind is int:
            return _structure_float(value, float)
        if spill is not None:
            return conv.structure(value, spill)
        raise wrong_value(expected, value)

    return structure_union


_ARRAY_ORIGINS = frozenset(
    {
        list,
        tuple,
        set,
        frozenset,
        collections.deque,
        cabc.Sequence,
        cabc.MutableSequence,
        cabc.Set,
        cabc.MutableSet,
    }
)
_SET_KINDS: dict[Any, Callable[[list[Any]], Any]] = {
    set: set,
    cabc.MutableSet: set,
    frozenset: frozenset,
    cabc.Set: frozenset,
    collections.deque: collections.deque,
}


def _is_array_type(t: Any) -> bool:
    origin = typing.get_origin(t) or t
    if origin in _ARRAY_ORIGINS:
        return True
    return isinstance(origin, type) and issubclass(origin, tuple) and hasattr(origin, "_fields")


def _array_hook(t: Any, conv: cattrs.Converter) -> Hook:
    """cattrs' own hook for the collection type *t*, behind a check that the value is an
    array: cattrs' hooks take any iterable, so a string would become its characters and a
    map its keys."""
    origin = typing.get_origin(t) or t
    args = typing.get_args(t)
    inner: Hook
    if origin is list or origin is cabc.MutableSequence:
        inner = list_structure_factory(t, conv)
    elif origin is cabc.Sequence or (origin is tuple and (not args or args[-1] is ...)):
        inner = homogenous_tuple_structure_factory(t, conv)
    elif origin is tuple:
        inner = conv.gen_structure_hetero_tuple(t)
    elif origin in _SET_KINDS:
        make, as_list = _SET_KINDS[origin], list[args[0] if args else Any]  # type: ignore[misc]
        list_hook = list_structure_factory(as_list, conv)  # type: ignore[arg-type]

        def inner(value: Any, _: Any) -> Any:
            return make(list_hook(value, as_list))

    else:
        inner = namedtuple_structure_factory(origin, conv)

    def structure_array(value: Any, _: Any) -> Any:
        if value.__class__ is list or value.__class__ is tuple:
            return inner(value, t)
        raise wrong_value(f"an array for {type_name(t)}", value)

    return structure_array


_MAP_ORIGINS = frozenset({dict, cabc.Mapping, cabc.MutableMapping})


def _is_map_type(t: Any) -> bool:
    return (typing.get_origin(t) or t) in _MAP_ORIGINS


def _is_record_type(t: Any) -> bool:
    """attrs classes, dataclasses and TypedDicts (possibly generic)."""
    origin = typing.get_origin(t) or t
    return isinstance(origin, type) and (
        attrs.has(origin) or dataclasses.is_dataclass(origin) or typing.is_typeddict(origin)
    )


def _map_guard(t: Any, inner: Hook, expected: str) -> Hook:
    def structure_map(value: Any, _: Any) -> Any:
        if value.__class__ is dict:
            return inner(value, t)
        raise wrong_value(expected, value)

    return structure_map


def _record_hook(t: Any, conv: cattrs.Converter) -> Hook:
    """cattrs' hook for the class *t*, behind a check that the value is a map: with a
    list or a string, fields that have defaults would take them silently."""
    origin = typing.get_origin(t) or t
    if typing.is_typeddict(origin):
        inner = conv.gen_structure_typeddict(t)
    else:
        inner = conv.gen_structure_attrs_fromdict(t)
    return _map_guard(t, inner, f"a map of {type_name(origin)} fields")


def make_strict(conv: cattrs.Converter) -> None:
    """Replace *conv*'s converting structure hooks with checking ones (module docstring)."""
    for cl, hook in (
        (str, structure_str),
        (int, _structure_int),
        (float, _structure_float),
        (bool, _structure_bool),
        (bytes, _structure_bytes),
        (pathlib.PurePath, _structure_path),
        (datetime.datetime, _structure_datetime),
        (datetime.date, _structure_date),
        (uuid.UUID, _structure_uuid),
    ):
        conv.register_structure_hook(cl, hook)
    # Factories registered later win over earlier ones (and over cattrs' own).
    conv.register_structure_hook_factory(_is_enum, _enum_hook)
    conv.register_structure_hook_factory(_is_literal, _literal_hook)
    conv.register_structure_hook_factory(_is_array_type, lambda t: _array_hook(t, conv))
    conv.register_structure_hook_factory(
        _is_map_type, lambda t: _map_guard(t, conv.gen_structure_mapping(t), "a map")
    )
    conv.register_structure_hook_factory(_is_record_type, lambda t: _record_hook(t, conv))
    conv.register_structure_hook_factory(_is_scalar_union, lambda t: _union_hook(t, conv))
