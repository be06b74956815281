"""The silo's converter and codec: cattrs over msgpack. Never pickle.

One :class:`cattrs.Converter` per silo, made by :func:`make_converter` and extended by
plugins through the ``grains_configure_converter`` hook. It knows grain ids (as their text
form) and grain references (as their text id, rebuilt against the silo that decodes them).

Call arguments and results are encoded with the *annotations* of the grain method, so an
attrs class annotated as a parameter arrives as that class. Exceptions travel as their type
name, arguments and message (and their traceback text when ``remote_tracebacks`` is on).

Decoding trusts no message: the bytes come from the network, from other silos, from
clients, from storage. Four rules follow.

* **Strict types.** cattrs' default hooks *convert*: ``str(value)``, ``int(value)``,
  ``list(value)``, so a ``str`` parameter given ``[1, 2]`` receives ``'[1, 2]'`` and a
  ``list[str]`` given ``"ab"`` receives ``['a', 'b']``. :func:`make_converter` replaces
  them with hooks that check the wire type and never convert: ``bool`` is not an ``int``,
  a float is not truncated, bytes come only from bytes, arrays only from arrays, attrs
  classes only from maps. The widenings that remain are deliberate and lossless: an int
  for a ``float`` (JSON has one number type) when the float holds it exactly, ISO 8601
  text for ``datetime``/``date`` and text for ``UUID`` (what JSON callers send).
* **Unknown keys.** A map decoded as an attrs class may carry keys the class does not
  have: they are dropped (Orleans' serializer skips unknown fields likewise, so a rolling
  upgrade can add a field with a default). They never reach an attribute and never pick
  a type: there is no type tag, and a union of attrs classes is told apart by the
  classes' own required fields. Call arguments are stricter: a name that is not a
  parameter of the method, or a missing required one, is an error.
* **Exceptions by allow-list.** An error reply names its exception type; the receiver
  rebuilds it only when the class is already imported (a message never causes an import)
  and is *remotable*: an ``Exception`` (never a ``BaseException``: a forged
  ``KeyboardInterrupt`` would stop a silo) from trio-grains' tree, a standard one from
  ``builtins`` (but ``StopIteration`` and ``StopAsyncIteration``, which steer loops), or a
  class marked with :func:`~trio_grains.remotable` and its subclasses. Anything else, or
  a class whose constructor refuses the arguments, arrives as
  :class:`~trio_grains.RemoteGrainError`.
* **Bounds.** Every decode refuses input larger than ``Codec.max_size`` before parsing;
  msgpack then limits each string, array and map to the input's size, refuses extension
  types (the codec never writes them) and nesting deeper than 1024 levels. Every failure
  is a :class:`~trio_grains.SerializationError` naming what failed (and counted in
  ``Codec.decode_failures``), never a ``KeyError``, ``TypeError`` or ``RecursionError``.
"""

from __future__ import annotations

import builtins
import collections
import collections.abc as cabc
import dataclasses
import datetime
import enum
import inspect
import pathlib
import sys
import traceback
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import attrs
import cattrs
import msgpack
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    list_structure_factory,
    namedtuple_structure_factory,
)
from cattrs.preconf.msgpack import make_converter as _make_msgpack_converter

from ._exceptions import RemoteGrainError, SerializationError
from ._grain import GrainInterface, MethodInfo
from ._ids import GrainId, GrainType
from ._reference import GrainReference

__all__ = ["Codec", "make_converter"]

ReferenceFactory = Callable[[type, GrainId], GrainReference]
Hook = Callable[[Any, Any], Any]

#: what a decode refuses before parsing, unless the codec is given another limit
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


def _is_interface(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainInterface)


def _is_reference(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainReference)


# -- strict structure hooks -------------------------------------------------------------------
#
# Each hook checks the class of the wire value with ``value.__class__ is ...`` (one compare
# on the happy path, and exact: ``True.__class__`` is ``bool``, not ``int``) and raises
# _WrongValue otherwise. cattrs collects nested failures into exception groups whose notes
# give the path; Codec turns them into one SerializationError message.


class _WrongValue(TypeError):
    """A value that is not what its annotation asks for (the message says what it is)."""


def _name(t: Any) -> str:
    """``int``, ``list[int]``, ``Order``, ``None``: a type as an error message shows it."""
    if t is type(None):
        return "None"
    if isinstance(t, type) and not typing.get_args(t):
        return t.__qualname__
    return repr(t).replace("typing.", "")


def _found(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _wrong(expected: str, value: Any) -> _WrongValue:
    return _WrongValue(f"expected {expected}, found {_found(value)}")


def _enum_member(value: Any, cl: Any) -> Any:
    """The member of the enum *cl* whose value is *value*, of the same class."""
    try:
        member = cl(value)
    except (ValueError, TypeError):
        raise _WrongValue(f"{value!r:.60} is not a value of {_name(cl)}") from None
    if member.value.__class__ is not value.__class__:
        raise _wrong(f"a value of {_name(cl)}", value)
    return member


def _as_subclass(value: Any, cl: Any) -> Any:
    """*value*, already of the right wire class, as *cl*: an ``IntEnum``, a ``StrEnum``,
    or another subclass of ``int``/``str``/``float``/``bytes`` (which singledispatch
    routes to the base class's hook)."""
    if issubclass(cl, enum.Enum):
        return _enum_member(value, cl)
    return cl(value)


def _structure_str(value: Any, cl: Any) -> Any:
    if value.__class__ is str:
        return value if cl is str else _as_subclass(value, cl)
    raise _wrong(_name(cl), value)


def _structure_int(value: Any, cl: Any) -> Any:
    if value.__class__ is int:
        return value if cl is int else _as_subclass(value, cl)
    raise _wrong(_name(cl), value)


def _structure_float(value: Any, cl: Any) -> Any:
    kind = value.__class__
    if kind is float:
        return value if cl is float else _as_subclass(value, cl)
    if kind is int:  # JSON callers: 3 for 3.0, when the float holds it exactly
        number = float(value)
        if number == value:
            return number if cl is float else _as_subclass(number, cl)
        raise _WrongValue(f"expected {_name(cl)}, found an int a float cannot hold exactly")
    raise _wrong(_name(cl), value)


def _structure_bool(value: Any, _: Any) -> bool:
    if value.__class__ is bool:
        return value
    raise _wrong("bool", value)


def _structure_bytes(value: Any, cl: Any) -> Any:
    if value.__class__ is bytes:
        return value if cl is bytes else _as_subclass(value, cl)
    raise _wrong(_name(cl), value)


def _structure_path(value: Any, cl: Any) -> Any:
    if value.__class__ is str:
        return cl(value)
    raise _wrong(f"{_name(cl)} text", value)


def _structure_datetime(value: Any, _: Any) -> datetime.datetime:
    """A datetime from its wire form (a POSIX timestamp) or from ISO 8601 text, which is
    what JSON callers (``Client.call``, ``trio-grains client``) can send."""
    kind = value.__class__
    if kind is str:
        return datetime.datetime.fromisoformat(value)
    if kind is float or kind is int:
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    raise _wrong("a timestamp or ISO 8601 text", value)


def _structure_date(value: Any, _: Any) -> datetime.date:
    kind = value.__class__
    if kind is str:
        return datetime.date.fromisoformat(value)
    if kind is float or kind is int:
        return datetime.datetime.fromtimestamp(value, datetime.UTC).date()
    raise _wrong("a timestamp or ISO 8601 text", value)


def _structure_uuid(value: Any, _: Any) -> uuid.UUID:
    if value.__class__ is str:
        return uuid.UUID(value)
    if value.__class__ is uuid.UUID:
        return value
    raise _wrong("UUID text", value)


def _is_enum(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, enum.Enum)


def _enum_hook(cl: Any) -> Hook:
    classes = frozenset(type(member.value) for member in cl)

    def structure_enum(value: Any, _: Any) -> Any:
        if value.__class__ in classes:
            return _enum_member(value, cl)
        raise _wrong(f"a value of {_name(cl)}", value)

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
            raise _WrongValue(f"expected one of {shown}, found {value!r:.60}")
        raise _wrong(f"one of {shown}", value)

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
    expected = " | ".join(_name(m) for m in members)

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
        raise _wrong(expected, value)

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
        raise _wrong(f"an array for {_name(t)}", value)

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
        raise _wrong(expected, value)

    return structure_map


def _record_hook(t: Any, conv: cattrs.Converter) -> Hook:
    """cattrs' hook for the class *t*, behind a check that the value is a map: with a
    list or a string, fields that have defaults would take them silently."""
    origin = typing.get_origin(t) or t
    if typing.is_typeddict(origin):
        inner = conv.gen_structure_typeddict(t)
    else:
        inner = conv.gen_structure_attrs_fromdict(t)
    return _map_guard(t, inner, f"a map of {_name(origin)} fields")


def _make_strict(conv: cattrs.Converter) -> None:
    """Replace *conv*'s converting structure hooks with checking ones (module docstring)."""
    for cl, hook in (
        (str, _structure_str),
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


def make_converter(make_reference: ReferenceFactory | None = None) -> cattrs.Converter:
    """A converter for msgpack-able data that also knows grain ids and references, and
    whose structure hooks check types instead of converting values (module docstring).

    *make_reference* rebuilds a reference from its interface and id; without it, references
    can be encoded but not decoded.
    """
    conv = _make_msgpack_converter()
    _make_strict(conv)
    conv.register_unstructure_hook(GrainId, str)
    conv.register_structure_hook(GrainId, lambda v, _: GrainId.parse(v))
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_unstructure_hook(GrainType, str)
    conv.register_structure_hook(GrainType, lambda v, _: GrainType(_structure_str(v, str)))
    conv.register_unstructure_hook_func(_is_reference, lambda ref: str(ref.grain_id))

    def structure_ref(value: Any, t: type) -> Any:
        if make_reference is None:
            raise SerializationError(
                "this converter cannot rebuild grain references: use the silo's converter"
            )
        iface = t._info.cls if _is_reference(t) and t is not GrainReference else t  # type: ignore[attr-defined]
        if iface is GrainReference:
            raise SerializationError(
                "annotate reference fields with the grain class or interface "
                "(e.g. friend: CartGrain), not GrainReference, so they can be rebuilt"
            )
        return make_reference(iface, GrainId.parse(_structure_str(value, str)))

    conv.register_structure_hook_func(_is_interface, structure_ref)
    conv.register_structure_hook_func(_is_reference, structure_ref)
    # A field annotated with a grain interface holds a reference: encode it as its id.
    conv.register_unstructure_hook_func(_is_interface, lambda ref: str(ref.grain_id))
    return conv


# -- the codec --------------------------------------------------------------------------------

_UNKNOWN = object()


class _Plan:
    """What encoding one grain method's calls needs, worked out once per method."""

    __slots__ = ("extra", "hints", "named", "params", "required", "result_hint", "sig")

    def __init__(self, func: Callable[..., Any]) -> None:
        func = inspect.unwrap(func)  # a silo's metrics wrapper: the grain's own annotations
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = {}
        self.sig = inspect.signature(func)
        self.hints = hints
        self.result_hint = _hint(hints, "return")
        # The fast path of encode_call: the parameters after ``self`` when all are plain
        # positional-or-keyword ones, each with its annotation to encode by.
        params = list(self.sig.parameters.values())[1:]
        self.params: tuple[tuple[str, Any], ...] | None = (
            tuple((p.name, _hint(hints, p.name)) for p in params)
            if all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
            else None
        )
        # What decode_call accepts: the names a caller may pass, each with its annotation;
        # those without a default; the annotation of other names if there is ``**kwargs``.
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.named = {p.name: _hint(hints, p.name) for p in params if p.kind in named}
        self.required = tuple(
            p.name for p in params if p.kind in named and p.default is inspect.Parameter.empty
        )
        self.extra = next(
            (_hint(hints, p.name) for p in params if p.kind is inspect.Parameter.VAR_KEYWORD),
            None,
        )


@attrs.define(eq=False)
class Codec:
    """Bytes in and out through one converter and msgpack.

    *remote_tracebacks*: put the formatted traceback into encoded exceptions (the caller
    sees it as a note, or in ``RemoteGrainError.traceback_text``). Off by default: a
    traceback shows file paths, code and values to whoever called. *max_size*: decodes
    refuse larger input before parsing it.
    """

    converter: cattrs.Converter
    remote_tracebacks: bool = attrs.field(default=False, kw_only=True)
    max_size: int = attrs.field(default=DEFAULT_MAX_SIZE, kw_only=True)
    #: decodes that failed (each raised SerializationError), for the silo's statistics
    decode_failures: int = attrs.field(default=0, init=False)
    _plans: dict[Callable[..., Any], _Plan] = attrs.field(factory=dict, init=False)

    def dumps(self, value: Any, type_: Any = Any) -> bytes:
        try:
            return msgpack.packb(self.converter.unstructure(value, type_))  # type: ignore[no-any-return]
        except Exception as exc:
            raise SerializationError(f"cannot encode {type(value).__qualname__}: {exc}") from exc

    def loads(self, data: bytes, type_: Any = Any, *, mapping: bool = False) -> Any:
        """Decode *data* as *type_*; ``mapping=True``: the encoded value must be a map (as
        an attrs instance is), so a list or a string is an error, not a default object."""
        try:
            raw = self._unpack(data)
            if mapping and raw.__class__ is not dict:
                raise _wrong("a map of fields", raw)
            return self.converter.structure(raw, type_)
        except Exception as exc:
            self._failed(exc, f"cannot decode {_name(type_)}", "$")

    def _unpack(self, data: bytes) -> Any:
        if len(data) > self.max_size:
            raise SerializationError(
                f"{len(data)} bytes, more than this codec decodes ({self.max_size})"
            )
        return msgpack.unpackb(data, strict_map_key=False, max_ext_len=0, ext_hook=_no_ext)

    def _failed(self, exc: Exception, what: str, path: str = "") -> NoReturn:
        """Count the failed decode and raise *exc* (being handled) as a SerializationError
        saying *what* failed and why."""
        self.decode_failures += 1
        _reraise(exc, what, path)

    def _plan(self, func: Callable[..., Any]) -> _Plan:
        plan = self._plans.get(func)
        if plan is None:
            plan = self._plans[func] = _Plan(func)
        return plan

    # The four methods below are on every remote call's path: they translate errors with
    # plain try/except, not a context manager, and build no message text unless something
    # fails.

    def encode_call(
        self, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes:
        """Encode arguments by the method's parameter annotations (unannotated: as they are)."""
        plan = self._plan(method.func)
        params = plan.params
        unstructure = self.converter.unstructure
        payload = {}
        if params is not None and not kwargs and len(args) == len(params):
            # All arguments positional, one per parameter: what sig.bind would give.
            for (name, hint), value in zip(params, args, strict=True):
                try:
                    payload[name] = unstructure(value, hint)
                except Exception as exc:
                    _reraise(exc, f"cannot encode argument {name!r} of {method.name}()")
        else:
            try:
                bound = plan.sig.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{method.name}(): {exc}") from None
            hints = plan.hints
            for name, value in list(bound.arguments.items())[1:]:
                try:
                    payload[name] = unstructure(value, _hint(hints, name))
                except Exception as exc:
                    _reraise(exc, f"cannot encode argument {name!r} of {method.name}()")
        try:
            return msgpack.packb(payload)  # type: ignore[no-any-return]
        except Exception as exc:
            _reraise(exc, f"cannot encode the arguments of {method.name}()")

    def decode_call(self, method: MethodInfo, data: bytes) -> dict[str, Any]:
        """The keyword arguments in *data*, each structured by its parameter's annotation.
        Every name must be a parameter of *method* and every required one must be there."""
        plan = self._plan(method.func)
        try:
            raw = self._unpack(data)
            if raw.__class__ is not dict:
                raise _wrong("a map of arguments", raw)
        except Exception as exc:
            self._failed(exc, f"cannot decode the arguments of {method.name}()")
        named = plan.named
        structure = self.converter.structure
        decoded = {}
        for name, value in raw.items():
            hint = named.get(name, _UNKNOWN)
            if hint is _UNKNOWN:
                if plan.extra is None or name.__class__ is not str:
                    self._failed(
                        _WrongValue(f"{method.name}() has no parameter {name!r:.60}"),
                        f"cannot decode the arguments of {method.name}()",
                    )
                hint = plan.extra
            try:
                decoded[name] = structure(value, hint)
            except Exception as exc:
                self._failed(exc, f"cannot decode argument {name!r} of {method.name}()", name)
        for name in plan.required:
            if name not in decoded:
                self._failed(
                    _WrongValue(f"missing argument {name!r}"),
                    f"cannot decode the arguments of {method.name}()",
                )
        return decoded

    def encode_result(self, method: MethodInfo, value: Any) -> bytes:
        hint = self._plan(method.func).result_hint
        try:
            return msgpack.packb(self.converter.unstructure(value, hint))  # type: ignore[no-any-return]
        except Exception as exc:
            _reraise(exc, f"cannot encode the result of {method.name}()")

    def decode_result(self, method: MethodInfo, data: bytes) -> Any:
        hint = self._plan(method.func).result_hint
        try:
            return self.converter.structure(self._unpack(data), hint)
        except Exception as exc:
            self._failed(exc, f"cannot decode the result of {method.name}()", "result")

    def encode_exception(self, exc: BaseException) -> bytes:
        """The exception's type name, its msgpack-able ``args`` (others as their repr),
        its message, and its traceback when ``remote_tracebacks`` is on. Never raises."""
        cls = type(exc)
        args: list[Any] = []
        for arg in exc.args:
            try:
                msgpack.packb(arg)
                args.append(arg)
            except Exception:
                args.append(_safe_text(repr, arg))
        payload = {
            "type": f"{cls.__module__}:{cls.__qualname__}",
            "args": args,
            "message": _safe_text(str, exc),
        }
        if self.remote_tracebacks:
            payload["traceback"] = _safe_text(lambda e: "".join(traceback.format_exception(e)), exc)
        return msgpack.packb(payload)  # type: ignore[no-any-return]

    def decode_exception(self, data: bytes) -> Exception:
        """The exception an error reply describes: its own type if that is remotable here
        and accepts the arguments, else a :class:`RemoteGrainError` (module docstring)."""
        try:
            type_name, args, message, tb = _error_fields(self._unpack(data))
        except Exception as exc:
            self._failed(exc, "cannot decode an error reply")
        cls = _remotable_class(type_name)
        if cls is not None:
            try:
                rebuilt = cls(*args)
            except Exception:
                rebuilt = None
            if isinstance(rebuilt, cls):
                if tb:
                    rebuilt.add_note(f"raised by the grain; its traceback there:\n{tb}")
                return rebuilt
        return RemoteGrainError(type_name.replace(":", "."), message, tb)

    def copy_call(
        self, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        return self.decode_call(method, self.encode_call(method, args, kwargs))


def _hint(hints: dict[str, Any], name: str) -> Any:
    """The annotation to encode *name* with: unannotated and ``None`` travel as they are."""
    hint = hints.get(name, Any)
    return Any if hint is None or hint is type(None) else hint


def _no_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"msgpack extension type {code}: the codec never writes one")


# -- error messages ---------------------------------------------------------------------------

_MAX_PROBLEMS = 3  # listed in one message; the rest are counted
_MAX_PROBLEM_TEXT = 200


def _problem(exc: BaseException, _type: Any) -> str:
    """One failure inside a structured value, for :func:`cattrs.transform_error`."""
    if isinstance(exc, (_WrongValue, SerializationError)):
        text = str(exc)
    elif isinstance(exc, KeyError):
        text = "required field missing"
    elif isinstance(exc, (RecursionError, msgpack.StackError)):
        text = "nested too deeply"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_PROBLEM_TEXT]


def _describe(exc: Exception, path: str) -> str:
    """Why a decode failed: for a cattrs validation group, its first few failures, each
    with its path below *path* (``items[2].qty``)."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return _problem(exc, None)
    try:
        problems = cattrs.transform_error(exc, path=path or "$", format_exception=_problem)
    except RecursionError:  # a group as deep as the value that made it
        return "nested too deeply"
    shown = [p if len(p) <= _MAX_PROBLEM_TEXT else p[:_MAX_PROBLEM_TEXT] + "..." for p in problems]
    more = len(shown) - _MAX_PROBLEMS
    text = "; ".join(shown[:_MAX_PROBLEMS])
    return f"{text} (and {more} more)" if more > 0 else text


def _reraise(exc: Exception, what: str, path: str = "") -> NoReturn:
    """Raise the failure *exc* (being handled) as a :class:`SerializationError` saying
    *what* failed and why."""
    raise SerializationError(f"{what}: {_describe(exc, path)}") from exc


def _safe_text(show: Callable[[Any], str], value: Any) -> str:
    try:
        return show(value)
    except Exception:
        return f"<{type(value).__qualname__} that cannot be shown>"


# -- exceptions by allow-list -----------------------------------------------------------------

_MAX_TYPE_NAME = 512


def _error_fields(raw: Any) -> tuple[str, list[Any], str, str]:
    """``(type name, args, message, traceback)`` of a decoded error reply, checked."""
    if raw.__class__ is not dict:
        raise _wrong("a map", raw)
    type_name, message = raw.get("type"), raw.get("message")
    args, tb = raw.get("args", []), raw.get("traceback", "")
    if type_name.__class__ is not str or not 0 < len(type_name) <= _MAX_TYPE_NAME:
        raise _WrongValue(f"'type' must be text of 1 to {_MAX_TYPE_NAME} characters")
    if message.__class__ is not str:
        raise _wrong("text for 'message'", message)
    if args.__class__ is not list:
        raise _wrong("an array for 'args'", args)
    if tb.__class__ is not str:
        raise _wrong("text for 'traceback'", tb)
    return type_name, args, message, tb


def _remotable_class(type_name: str) -> type[Exception] | None:
    """The class ``module:QualName`` names, if its module is already imported and the class
    is remotable. Looks in namespaces only (``__dict__``), so no module ``__getattr__`` or
    lazy import runs because a message named something."""
    module_name, colon, qualname = type_name.partition(":")
    module = sys.modules.get(module_name) if colon else None
    if not isinstance(module, types.ModuleType):
        return None
    namespace: Any = object.__getattribute__(module, "__dict__")
    obj: Any = None
    for part in qualname.split("."):
        obj = namespace.get(part)
        if not isinstance(obj, type):
            return None
        namespace = obj.__dict__
    return obj if _is_remotable(obj) else None


def _is_remotable(cls: type) -> bool:
    """An Exception class this side rebuilds from a reply (module docstring)."""
    if not issubclass(cls, Exception) or issubclass(cls, (StopIteration, StopAsyncIteration)):
        return False
    if vars(builtins).get(cls.__name__) is cls:
        return True
    for klass in cls.__mro__:  # the nearest class that says decides
        flag = klass.__dict__.get("__grains_remotable__")
        if flag is not None:
            return flag is True
    return False
