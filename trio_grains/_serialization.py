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

May import: values, ids, config, registries, placement, grains and references.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import sys
import traceback
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import cattrs
import msgpack
from cattrs.fns import identity
from cattrs.preconf.msgpack import make_converter as _make_msgpack_converter

from ._exceptions import RemoteGrainError, SerializationError
from ._grain import GrainInterface
from ._ids import GrainId, GrainType
from ._methods import MethodInfo
from ._reference import GrainReference
from ._strict import WrongValue, make_strict, structure_str, type_name, wrong_value

__all__ = ["Codec", "make_converter"]

ReferenceFactory = Callable[[type, GrainId], GrainReference]

#: what a decode refuses before parsing, unless the codec is given another limit
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: a message larger than this leaves the codec's packer with a buffer as large: a new
#: packer replaces it
_PACKER_KEEPS = 1024 * 1024


def _is_interface(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainInterface)


def _is_reference(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, GrainReference)


def make_converter(make_reference: ReferenceFactory | None = None) -> cattrs.Converter:
    """A converter for msgpack-able data that also knows grain ids and references, and
    whose structure hooks check types instead of converting values (module docstring).

    *make_reference* rebuilds a reference from its interface and id; without it, references
    can be encoded but not decoded.
    """
    conv = _make_msgpack_converter()
    make_strict(conv)
    conv.register_unstructure_hook(GrainId, str)
    conv.register_structure_hook(GrainId, lambda v, _: GrainId.parse(v))
    conv.register_unstructure_hook(uuid.UUID, str)
    conv.register_unstructure_hook(GrainType, str)
    conv.register_structure_hook(GrainType, lambda v, _: GrainType(structure_str(v, str)))
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
        return make_reference(iface, GrainId.parse(structure_str(value, str)))

    conv.register_structure_hook_func(_is_interface, structure_ref)
    conv.register_structure_hook_func(_is_reference, structure_ref)
    # A field annotated with a grain interface holds a reference: encode it as its id.
    conv.register_unstructure_hook_func(_is_interface, lambda ref: str(ref.grain_id))
    return conv


# -- the codec --------------------------------------------------------------------------------

_UNKNOWN = object()


class _Plan:
    """What encoding one grain method's calls needs, worked out once per method and codec.

    The converter's hooks for the method's annotations are looked up here, once: a
    converter is configured (``grains_configure_converter``) before its codec's first call.
    """

    __slots__ = (
        "decoders",
        "encoders",
        "extra",
        "hints",
        "named",
        "params",
        "required",
        "result_decoder",
        "result_encoder",
        "result_hint",
        "sig",
    )

    def __init__(self, func: Callable[..., Any], converter: cattrs.Converter) -> None:
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
        # The converter's hooks, looked up once (the converter's dispatch costs as much as
        # a hook per value); ``None`` for an unstructure hook that returns its argument.
        self.encoders: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None = (
            None
            if self.params is None
            else tuple((name, _unstructurer(converter, hint)) for name, hint in self.params)
        )
        self.decoders: dict[str, tuple[Callable[[Any, Any], Any], Any]] = {
            name: (_structurer(converter, hint), hint) for name, hint in self.named.items()
        }
        self.result_encoder = _unstructurer(converter, self.result_hint)
        self.result_decoder = _structurer(converter, self.result_hint)


def _unstructurer(converter: cattrs.Converter, hint: Any) -> Callable[[Any], Any] | None:
    """The unstructure hook for *hint*: ``None`` if it returns its argument; the
    converter itself if the hook cannot be made (the call that needs it then fails and
    says why, as a call without this plan would)."""
    try:
        hook: Callable[[Any], Any] = converter.get_unstructure_hook(hint)
    except Exception:
        return functools.partial(converter.unstructure, unstructure_as=hint)
    return None if hook is identity else hook


def _structurer(converter: cattrs.Converter, hint: Any) -> Callable[[Any, Any], Any]:
    """The structure hook for *hint* (or, as above, the converter)."""
    try:
        hook: Callable[[Any, Any], Any] = converter.get_structure_hook(hint)
    except Exception:
        return converter.structure
    return hook


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
    #: one packer, reused (``msgpack.packb`` makes one per call); the call path's only
    _packer: msgpack.Packer = attrs.field(factory=msgpack.Packer, init=False)

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
                raise wrong_value("a map of fields", raw)
            return self.converter.structure(raw, type_)
        except Exception as exc:
            self._failed(exc, f"cannot decode {type_name(type_)}", "$")

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
            plan = self._plans[func] = _Plan(func, self.converter)
        return plan

    def _pack(self, value: Any) -> bytes:
        data: bytes = self._packer.pack(value)
        if len(data) > _PACKER_KEEPS:
            self._packer = msgpack.Packer()
        return data

    # The four methods below are on every remote call's path: they translate errors with
    # plain try/except, not a context manager, and build no message text unless something
    # fails.

    def encode_call(
        self, method: MethodInfo, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes:
        """Encode arguments by the method's parameter annotations (unannotated: as they are)."""
        plan = self._plans.get(method.func) or self._plan(method.func)
        encoders = plan.encoders
        payload = {}
        if encoders is not None and not kwargs and len(args) == len(encoders):
            # All arguments positional, one per parameter: what sig.bind would give.
            name = ""
            try:
                for (name, encode), value in zip(encoders, args, strict=True):
                    payload[name] = value if encode is None else encode(value)
            except Exception as exc:
                _reraise(exc, f"cannot encode argument {name!r} of {method.name}()")
        else:
            try:
                bound = plan.sig.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{method.name}(): {exc}") from None
            hints = plan.hints
            unstructure = self.converter.unstructure
            for name, value in list(bound.arguments.items())[1:]:
                try:
                    payload[name] = unstructure(value, _hint(hints, name))
                except Exception as exc:
                    _reraise(exc, f"cannot encode argument {name!r} of {method.name}()")
        try:
            return self._pack(payload)
        except Exception as exc:
            _reraise(exc, f"cannot encode the arguments of {method.name}()")

    def decode_call(self, method: MethodInfo, data: bytes) -> dict[str, Any]:
        """The keyword arguments in *data*, each structured by its parameter's annotation.
        Every name must be a parameter of *method* and every required one must be there."""
        plan = self._plans.get(method.func) or self._plan(method.func)
        try:
            raw = self._unpack(data)
            if raw.__class__ is not dict:
                raise wrong_value("a map of arguments", raw)
        except Exception as exc:
            self._failed(exc, f"cannot decode the arguments of {method.name}()")
        decoders = plan.decoders
        decoded = {}
        for name, value in raw.items():
            decoder = decoders.get(name)
            if decoder is None:
                if plan.extra is None or name.__class__ is not str:
                    self._failed(
                        WrongValue(f"{method.name}() has no parameter {name!r:.60}"),
                        f"cannot decode the arguments of {method.name}()",
                    )
                decoder = (self.converter.structure, plan.extra)
            structure, hint = decoder
            try:
                decoded[name] = structure(value, hint)
            except Exception as exc:
                self._failed(exc, f"cannot decode argument {name!r} of {method.name}()", name)
        for name in plan.required:
            if name not in decoded:
                self._failed(
                    WrongValue(f"missing argument {name!r}"),
                    f"cannot decode the arguments of {method.name}()",
                )
        return decoded

    def encode_result(self, method: MethodInfo, value: Any) -> bytes:
        plan = self._plans.get(method.func) or self._plan(method.func)
        encode = plan.result_encoder
        try:
            return self._pack(value if encode is None else encode(value))
        except Exception as exc:
            _reraise(exc, f"cannot encode the result of {method.name}()")

    def decode_result(self, method: MethodInfo, data: bytes) -> Any:
        plan = self._plans.get(method.func) or self._plan(method.func)
        try:
            return plan.result_decoder(self._unpack(data), plan.result_hint)
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
    if isinstance(exc, (WrongValue, SerializationError)):
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
        raise wrong_value("a map", raw)
    type_name, message = raw.get("type"), raw.get("message")
    args, tb = raw.get("args", []), raw.get("traceback", "")
    if type_name.__class__ is not str or not 0 < len(type_name) <= _MAX_TYPE_NAME:
        raise WrongValue(f"'type' must be text of 1 to {_MAX_TYPE_NAME} characters")
    if message.__class__ is not str:
        raise wrong_value("text for 'message'", message)
    if args.__class__ is not list:
        raise wrong_value("an array for 'args'", args)
    if tb.__class__ is not str:
        raise wrong_value("text for 'traceback'", tb)
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
