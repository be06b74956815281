"""The silo's converter and codec: cattrs over msgpack. Never pickle.

One :class:`cattrs.Converter` per silo, made by :func:`make_converter` and extended by
plugins through the ``grains_configure_converter`` hook. It knows grain ids (as their text
form) and grain references (as their text id, rebuilt against the silo that decodes them).

Call arguments and results are encoded with the *annotations* of the grain method, so an
attrs class annotated as a parameter arrives as that class. Exceptions travel as their type
name, arguments, message and traceback text; the receiving side rebuilds the original type
only when that class is already imported there (no module is imported because a message
said so), and otherwise raises :class:`~trio_grains.RemoteGrainError`.
"""

from __future__ import annotations

import datetime
import inspect
import sys
import traceback
import typing
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import cattrs
import msgpack
from cattrs.preconf.msgpack import make_converter as _make_msgpack_converter

from ._exceptions import RemoteGrainError, SerializationError
from ._grain import GrainInterface, MethodInfo
from ._ids import GrainId, GrainType
from ._reference import GrainReference

__all__ = ["Codec", "make_converter"]

ReferenceFactory = Callable[[type, GrainId], GrainReference]


def _is_interface(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainInterface)


def _is_reference(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainReference)


def _structure_datetime(value: Any, _: type) -> datetime.datetime:
    """A datetime from its wire form (a POSIX timestamp) or from ISO 8601 text, which is
    what JSON callers (``Client.call``, ``trio-grains client``) can send."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return datetime.datetime.fromtimestamp(value, datetime.UTC)


def _structure_date(value: Any, _: type) -> datetime.date:
    if isinstance(value, str):
        return datetime.date.fromisoformat(value)
    return datetime.datetime.fromtimestamp(value, datetime.UTC).date()


def make_converter(make_reference: ReferenceFactory | None = None) -> cattrs.Converter:
    """A converter for msgpack-able data that also knows grain ids and references.

    *make_reference* rebuilds a reference from its interface and id; without it, references
    can be encoded but not decoded.
    """
    conv = _make_msgpack_converter()
    conv.register_structure_hook(datetime.datetime, _structure_datetime)
    conv.register_structure_hook(datetime.date, _structure_date)
    conv.register_unstructure_hook(GrainId, str)
    conv.register_structure_hook(GrainId, lambda v, _: GrainId.parse(v))
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_structure_hook(
        uuid.UUID, lambda v, _: v if isinstance(v, uuid.UUID) else uuid.UUID(v)
    )
    conv.register_unstructure_hook(GrainType, str)
    conv.register_structure_hook(GrainType, lambda v, _: GrainType(v))
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
        return make_reference(iface, GrainId.parse(value))

    conv.register_structure_hook_func(_is_interface, structure_ref)
    conv.register_structure_hook_func(_is_reference, structure_ref)
    # A field annotated with a grain interface holds a reference: encode it as its id.
    conv.register_unstructure_hook_func(_is_interface, lambda ref: str(ref.grain_id))
    return conv


class _Plan:
    """What encoding one grain method's calls needs, worked out once per method."""

    __slots__ = ("hints", "params", "result_hint", "sig")

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


@attrs.define(eq=False)
class Codec:
    """Bytes in and out through one converter and msgpack."""

    converter: cattrs.Converter
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
            raw = msgpack.unpackb(data, strict_map_key=False)
        except Exception as exc:
            raise SerializationError(f"cannot decode a {type_!r}: not msgpack: {exc}") from exc
        if mapping and not isinstance(raw, dict):
            raise SerializationError(
                f"cannot decode a {type_!r}: expected a map of fields, found {type(raw).__name__}"
            )
        try:
            return self.converter.structure(raw, type_)
        except Exception as exc:
            raise SerializationError(f"cannot decode a {type_!r}: {exc}") from exc

    def _plan(self, func: Callable[..., Any]) -> _Plan:
        plan = self._plans.get(func)
        if plan is None:
            plan = self._plans[func] = _Plan(func)
        return plan

    # The four methods below are on every remote call's path: they translate errors with
    # plain try/except (``_reraise``), not a context manager, and build no message text
    # unless something fails.

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
        hints = self._plan(method.func).hints
        try:
            raw = msgpack.unpackb(data, strict_map_key=False)
            items = raw.items()
        except Exception as exc:
            _reraise(exc, f"cannot decode the arguments of {method.name}()")
        structure = self.converter.structure
        decoded = {}
        for name, value in items:
            try:
                decoded[name] = structure(value, _hint(hints, name))
            except Exception as exc:
                _reraise(exc, f"cannot decode argument {name!r} of {method.name}()")
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
            return self.converter.structure(msgpack.unpackb(data, strict_map_key=False), hint)
        except Exception as exc:
            _reraise(exc, f"cannot decode the result of {method.name}()")

    def encode_exception(self, exc: BaseException) -> bytes:
        cls = type(exc)
        args: list[Any] = []
        for arg in exc.args:
            try:
                msgpack.packb(arg)
                args.append(arg)
            except Exception:
                args.append(repr(arg))
        return msgpack.packb(  # type: ignore[no-any-return]
            {
                "type": f"{cls.__module__}:{cls.__qualname__}",
                "args": args,
                "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc)),
            }
        )

    def decode_exception(self, data: bytes) -> BaseException:
        raw = msgpack.unpackb(data, strict_map_key=False)
        type_name, message, tb = raw["type"], raw["message"], raw.get("traceback", "")
        cls = _find_exception_class(type_name)
        if cls is not None:
            try:
                exc = cls(*raw.get("args", ()))
            except Exception:
                exc = None
            if exc is not None:
                if tb:
                    exc.add_note(f"raised by the grain; its traceback there:\n{tb}")
                return exc
        return RemoteGrainError(type_name.replace(":", "."), message, tb)

    def copy_call(
        self, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        return self.decode_call(method, self.encode_call(method, args, kwargs))


def _hint(hints: dict[str, Any], name: str) -> Any:
    """The annotation to encode *name* with: unannotated and ``None`` travel as they are."""
    hint = hints.get(name, Any)
    return Any if hint is None or hint is type(None) else hint


def _reraise(exc: Exception, what: str) -> NoReturn:
    """Raise the encoding failure *exc* (being handled) as a :class:`SerializationError`
    saying *what* failed; one that already is a SerializationError goes on as it is."""
    if isinstance(exc, SerializationError):
        raise exc
    raise SerializationError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _find_exception_class(type_name: str) -> type[BaseException] | None:
    """The exception class named *type_name*, only if its module is already imported."""
    module_name, _, qualname = type_name.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None
