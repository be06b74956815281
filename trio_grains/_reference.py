"""Grain references: the caller's handle on a grain.

``get_grain(CartGrain, "bob65")`` returns an instance of a reference class generated once
per interface, with one ``async def`` per grain method. Creating a reference does no I/O;
awaiting a method sends the call. A reference is portable: it is identified by its
:class:`GrainId` and its interface, stored as the text id (``"cart/bob65"``) by the silo's
converter, and resolves to the same grain in any process.

May import: values, ids, config, registries, placement, grains and calls. Not serialization,
which builds on references. Type names only from: activations (``GrainReference._act``,
the dispatcher's cache of the activation a reference last called).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol

from ._exceptions import GrainMethodError
from ._grain import GrainClassInfo, class_info
from ._methods import MethodInfo

if TYPE_CHECKING:
    from ._activation import Activation
    from ._ids import GrainId

__all__ = ["GrainReference", "GrainRuntime", "reference_class"]


class GrainRuntime(Protocol):
    """What references need from the runtime that created them (a silo or a client)."""

    async def invoke(
        self, ref: GrainReference, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...


class GrainReference:
    """Base of generated reference classes. Compare and hash by grain id."""

    __slots__ = ("_act", "_grain_id", "_runtime")
    _info: ClassVar[GrainClassInfo]  # set on each generated class

    def __init__(self, runtime: GrainRuntime, grain_id: GrainId) -> None:
        self._runtime = runtime
        self._grain_id = grain_id
        self._act: Activation | None = None  # cached local activation, checked on each call

    @property
    def grain_id(self) -> GrainId:
        return self._grain_id

    @property
    def interface(self) -> type:
        """The grain class or interface this reference was created for."""
        return self._info.cls

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GrainReference):
            return self._grain_id == other._grain_id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._grain_id)

    def __repr__(self) -> str:
        return f"<{self._info.cls.__qualname__} reference {self._grain_id}>"

    def __str__(self) -> str:
        return str(self._grain_id)

    def __getattr__(self, name: str) -> NoReturn:
        info = type(self)._info
        callable_names = ", ".join(sorted(info.methods)) or "(none)"
        if name.startswith("_"):
            why = "private names are not callable through a reference"
        else:
            why = "it is not a public 'async def' method of the interface"
        raise GrainMethodError(
            f"{info.cls.__qualname__} ({self._grain_id}) has no grain method {name!r}: {why}; "
            f"callable methods: {callable_names}"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "grain references are not picklable (pickle is never used by trio-grains); "
            "store str(ref.grain_id) or let the silo's converter encode the reference"
        )


def _make_method(name: str, method: MethodInfo) -> Any:
    async def call(self: GrainReference, *args: Any, **kwargs: Any) -> Any:
        return await self._runtime.invoke(self, name, args, kwargs)

    functools.update_wrapper(call, method.func)
    delattr(call, "__wrapped__")  # keep inspect.signature from showing ``self`` of the grain
    return call


def reference_class(iface: type) -> type[GrainReference]:
    """The reference class for a grain class or interface, made once and cached."""
    cached = iface.__dict__.get("__grain_reference_class__")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    info = class_info(iface)
    namespace: dict[str, Any] = {"__slots__": (), "_info": info}
    for name, method in info.methods.items():
        namespace[name] = _make_method(name, method)
    ref_cls = type(f"{iface.__name__}Reference", (GrainReference,), namespace)
    ref_cls.__module__ = iface.__module__
    ref_cls.__qualname__ = f"{iface.__qualname__}Reference"
    iface.__grain_reference_class__ = ref_cls  # type: ignore[attr-defined]
    return ref_cls
