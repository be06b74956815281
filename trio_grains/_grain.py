"""Grain classes: the ``Grain`` base, interfaces, decorators, method tables, what grains reach.

A *grain interface* is a class deriving from :class:`GrainInterface` whose public
``async def`` methods are the calls a grain accepts. A *grain class* derives from
:class:`Grain` (itself an interface) and implements them. Callers that only have the
interface can call the grain as long as both carry the same grain type name. A grain
reaches its activation through a :class:`GrainContext` and the silo's services (other
grains, reminders, stream providers) through :class:`GrainServices`.

May import: values, ids, config, registries, placement, storage and timers. Not references
or serialization, which build on grains. Type names only from: reminders and
``_streams.provider`` (public methods name them; at run time, through ``GrainServices``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import attrs

from ._exceptions import ConfigError, GrainKeyKindError, GrainTypeError, SiloUnavailableError
from ._ids import GrainId, GrainKey, GrainType
from ._methods import EXCLUSIVE, INTERLEAVE, READ_ONLY, MethodInfo
from ._storage import PersistentState, StateDeclaration, declarations

if TYPE_CHECKING:
    import uuid

    from ._placement import PlacementStrategy
    from ._reminders import GrainReminder, ReminderService
    from ._streams.provider import StreamProvider
    from ._timers import GrainTimer

__all__ = [
    "Grain",
    "GrainContext",
    "GrainServices",
    "GrainClassInfo",
    "GrainClassRegistry",
    "GrainInterface",
    "always_interleave",
    "class_info",
    "collection_age",
    "grain_type",
    "mark_runtime_called",
    "runtime_called",
    "one_way",
    "read_only",
    "reentrant",
    "stateless_worker",
]

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
G = TypeVar("G", bound="GrainInterface")


# --- decorators ---------------------------------------------------------------------------


def grain_type(name: str) -> Callable[[C], C]:
    """Give a grain class or interface an explicit type name instead of the derived one."""
    GrainType(name)  # validate now, at the decorator, with a clear message

    def decorate(cls: C) -> C:
        cls.__grain_type_name__ = name  # type: ignore[attr-defined]
        return cls

    return decorate


def reentrant(cls: C) -> C:
    """Let every call to this grain interleave with every other (Orleans' ``[Reentrant]``)."""
    cls.__grain_reentrant__ = True  # type: ignore[attr-defined]
    return cls


def stateless_worker(max_local: int | None = None) -> Callable[[C], C]:
    """Allow up to *max_local* activations of one grain id per silo (default: 1 per CPU).

    Calls go to an idle activation, or to a new one while fewer than *max_local* exist;
    each activation still runs one turn at a time.
    """
    if max_local is not None and max_local < 1:
        raise ValueError(f"stateless_worker(max_local=...) must be >= 1, got {max_local}")

    def decorate(cls: C) -> C:
        import os

        cls.__grain_stateless_worker__ = max_local or os.cpu_count() or 1  # type: ignore[attr-defined]
        return cls

    return decorate


def collection_age(seconds: float) -> Callable[[C], C]:
    """Deactivate activations of this class after *seconds* without calls."""
    if not seconds > 0:
        raise ValueError(f"collection_age must be a positive number of seconds, got {seconds}")

    def decorate(cls: C) -> C:
        cls.__grain_collection_age__ = float(seconds)  # type: ignore[attr-defined]
        return cls

    return decorate


def always_interleave(fn: F) -> F:
    """This method may run while any other turn of the grain is running."""
    fn.__grain_always_interleave__ = True  # type: ignore[attr-defined]
    return fn


def read_only(fn: F) -> F:
    """This method does not change the grain: it may interleave with other read-only calls."""
    fn.__grain_read_only__ = True  # type: ignore[attr-defined]
    return fn


def idempotent(fn: F) -> F:
    """Running this method twice has the effect of running it once. In a cluster, a call
    in flight to a silo that dies is then sent again (to the grain's next activation)
    instead of failing with ``SiloUnavailableError``. Declare it on the interface too."""
    fn.__grain_idempotent__ = True  # type: ignore[attr-defined]
    return fn


def one_way(fn: F) -> F:
    """Callers do not wait for this method: it returns ``None`` at once, errors are logged."""
    fn.__grain_one_way__ = True  # type: ignore[attr-defined]
    return fn


# --- method tables ------------------------------------------------------------------------


@attrs.frozen(eq=False)
class GrainClassInfo:
    """What the runtime knows about a grain class or interface, computed once per class."""

    cls: type
    grain_type: GrainType
    is_implementation: bool
    methods: dict[str, MethodInfo]
    reentrant: bool = False
    max_local_workers: int | None = None
    collection_age: float | None = None
    placement: PlacementStrategy | None = None
    #: the ``persistent_state(...)`` declarations of the class, read at activation
    states: tuple[StateDeclaration[Any], ...] = ()
    #: the methods its grain interfaces declare (``None``: it implements none, so every
    #: grain method is its interface): what other processes may call
    declared: frozenset[str] | None = None

    @property
    def class_name(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    def describe(self) -> str:
        return f"grain type '{self.grain_type}' ({self.cls.__qualname__})"


def _reserved_names() -> frozenset[str]:
    return frozenset(name for name in dir(Grain) if not name.startswith("_"))


def _flag(name: str, attr: str, mro: Iterable[type]) -> bool:
    return any(getattr(klass.__dict__.get(name), attr, False) for klass in mro)


def _build_info(cls: type) -> GrainClassInfo:
    if not (isinstance(cls, type) and issubclass(cls, GrainInterface)):
        raise GrainTypeError(
            f"{cls!r} is not a grain class: derive it from trio_grains.Grain "
            "(or trio_grains.GrainInterface for an interface)"
        )
    if cls is Grain or cls is GrainInterface:
        raise GrainTypeError(f"{cls.__name__} itself is not a grain: derive a class from it")
    explicit = cls.__dict__.get("__grain_type_name__")
    gtype = GrainType.for_class(cls, explicit)
    reserved = _reserved_names()
    mro = [
        k for k in cls.__mro__ if issubclass(k, GrainInterface) and k not in (Grain, GrainInterface)
    ]
    methods: dict[str, MethodInfo] = {}
    is_reentrant = bool(getattr(cls, "__grain_reentrant__", False))
    for klass in mro:
        for name, value in vars(klass).items():
            if name.startswith("_") or name in methods or name in reserved:
                continue
            func = getattr(cls, name)
            if not inspect.iscoroutinefunction(func):
                if callable(value) and not isinstance(value, (type, staticmethod, classmethod)):
                    if issubclass(cls, Grain):
                        continue  # a plain helper method: callable locally, not by callers
                    raise GrainTypeError(
                        f"{cls.__qualname__}.{name} must be 'async def': grain methods are "
                        "awaited by callers (prefix the name with _ to keep it private)"
                    )
                continue
            interleave = _flag(name, "__grain_always_interleave__", mro)
            ro = _flag(name, "__grain_read_only__", mro)
            methods[name] = MethodInfo(
                name=name,
                func=func,
                always_interleave=interleave,
                read_only=ro,
                one_way=_flag(name, "__grain_one_way__", mro),
                idempotent=_flag(name, "__grain_idempotent__", mro),
                kind=INTERLEAVE if interleave or is_reentrant else READ_ONLY if ro else EXCLUSIVE,
            )
    interfaces = [k for k in mro if not issubclass(k, Grain)]
    declared = (
        frozenset(name for name in methods if any(name in vars(k) for k in interfaces))
        if interfaces and issubclass(cls, Grain)
        else None
    )
    if issubclass(cls, Grain):
        for name in reserved & set(vars(cls)):
            if name not in Grain._overridable:
                raise GrainTypeError(
                    f"{cls.__qualname__}.{name} hides Grain.{name}, which the runtime uses: "
                    "rename the method"
                )
        _check_hook_signature(cls, "on_activate", "(self)", 0)
        _check_hook_signature(cls, "on_deactivate", "(self, reason: str)", 1)
    return GrainClassInfo(
        cls=cls,
        grain_type=gtype,
        is_implementation=issubclass(cls, Grain),
        methods=methods,
        reentrant=is_reentrant,
        max_local_workers=getattr(cls, "__grain_stateless_worker__", None),
        collection_age=getattr(cls, "__grain_collection_age__", None),
        placement=getattr(cls, "__grain_placement__", None),
        states=tuple(declarations(cls)) if issubclass(cls, Grain) else (),
        declared=declared,
    )


def _check_hook_signature(cls: type, name: str, expected: str, args: int) -> None:
    """An overridden on_activate / on_deactivate must be ``async def`` and accept what the
    runtime passes: found when the class is registered, not when a silo stops."""
    func = vars(cls).get(name)
    if func is None:
        return
    if not inspect.iscoroutinefunction(func):
        raise GrainTypeError(f"{cls.__qualname__}.{name} must be 'async def {name}{expected}'")
    try:
        inspect.signature(func).bind(None, *(["reason"] * args))
    except TypeError:
        raise GrainTypeError(
            f"{cls.__qualname__}.{name} must accept {expected}, as the runtime calls it: "
            f"'async def {name}{expected}'"
        ) from None


def class_info(cls: type) -> GrainClassInfo:
    """The (cached) :class:`GrainClassInfo` of a grain class or interface."""
    info: GrainClassInfo | None = cls.__dict__.get("__grain_info__")
    if info is None:
        info = _build_info(cls)
        cls.__grain_info__ = info  # type: ignore[attr-defined]
    return info


@attrs.define(eq=False)
class GrainClassRegistry:
    """The grain classes one silo hosts, by grain type name.

    Passed to the ``grains_register_grain_classes`` hook; ``open_silo(grains=[...])`` and
    ``SiloConfig.grains`` fill it too.
    """

    _by_type: dict[GrainType, GrainClassInfo] = attrs.field(factory=dict, init=False)

    def register(self, cls: type) -> None:
        """Host *cls*. A second class claiming the same type name is an error."""
        info = class_info(cls)
        if not info.is_implementation:
            raise GrainTypeError(
                f"{cls.__qualname__} is an interface (no implementation): register the grain "
                "class that derives from trio_grains.Grain and implements it"
            )
        other = self._by_type.get(info.grain_type)
        if other is not None and other.cls is not cls:
            raise GrainTypeError(
                f"grain type '{info.grain_type}' is claimed by both {other.class_name} and "
                f'{info.class_name}: give one of them another name with @grain_type("...")'
            )
        self._by_type[info.grain_type] = info

    def get(self, grain_type: GrainType) -> GrainClassInfo | None:
        return self._by_type.get(grain_type)

    def types(self) -> list[GrainType]:
        return sorted(self._by_type)

    def __contains__(self, grain_type: object) -> bool:
        return grain_type in self._by_type

    def __len__(self) -> int:
        return len(self._by_type)


# --- the base classes ---------------------------------------------------------------------


class GrainInterface:
    """Base of grain interfaces: public ``async def`` methods are the calls a grain accepts.

    An interface may carry only signatures (bodies of ``...``); callers that have only the
    interface can call the grain with ``get_grain(Interface, key)`` when the interface and
    the grain class share the grain type name (by convention or ``@grain_type``).
    """

    __slots__ = ()


def mark_runtime_called(cls: type, name: str) -> None:
    """Mark grain method *name* of *cls* as one the runtime calls from any silo (a stream
    handler, say): other processes may call it even if no grain interface declares it."""
    names = frozenset(cls.__dict__.get("__grain_runtime_called__", runtime_called(cls)))
    cls.__grain_runtime_called__ = names | {name}  # type: ignore[attr-defined]


def runtime_called(cls: type) -> frozenset[str]:
    """The methods of *cls* marked by :func:`mark_runtime_called` (its bases' included),
    and ``receive_reminder``, which reminders call."""
    return frozenset(getattr(cls, "__grain_runtime_called__", ())) | {"receive_reminder"}


def _not_running(*_args: Any, **_kwargs: Any) -> Any:
    raise SiloUnavailableError("the silo is not running: use 'async with open_silo()'")


@attrs.define(eq=False)
class GrainServices:
    """The silo's services that grains reach: other grains, reminders, stream providers.

    The silo's composition root (:func:`~trio_grains.open_silo`) makes one, hands it to the
    catalog (every activation reaches it), and fills it in as it builds each service;
    nothing else writes it.
    """

    #: ``get_grain(grain_class, key, *, key_ext=None)`` of the silo's dispatcher
    get_grain: Callable[..., Any] = _not_running
    reminders: ReminderService | None = None
    #: stream provider name -> running provider
    streams: dict[str, StreamProvider] = attrs.Factory(dict)

    def reminder_service(self) -> ReminderService:
        if self.reminders is None:
            raise SiloUnavailableError("the silo's reminder service is not running")
        return self.reminders


class GrainContext(Protocol):
    """What a grain object reaches of its activation (``Grain._activation``)."""

    grain_id: GrainId
    states: dict[str, PersistentState[Any]] | None

    @property
    def services(self) -> GrainServices: ...

    @property
    def silo_id(self) -> str: ...

    def request_deactivation(self, reason: str) -> None: ...

    def delay_deactivation(self, seconds: float) -> None: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    def start_timer(
        self,
        callback: Callable[[], Awaitable[Any]],
        *,
        due: float,
        period: float,
        interleave: bool,
        keep_alive: bool,
        name: str | None,
    ) -> GrainTimer: ...


class Grain(GrainInterface):
    """Base class of grains: virtual actors addressed by a :class:`GrainId`.

    Subclass it and write ``async def`` methods. The runtime creates the object when the
    grain is activated; ``__init__`` must take no arguments besides ``self`` and may already
    use ``self.grain_id``. Override :meth:`on_activate` / :meth:`on_deactivate` for set-up
    and tear-down that awaits.
    """

    _overridable: ClassVar[frozenset[str]] = frozenset({"on_activate", "on_deactivate"})
    _activation: GrainContext

    # -- identity -------------------------------------------------------------------------

    @property
    def runtime_identity(self) -> str:
        """The id of the silo this activation runs in (as in its membership row and in
        ``Silo.silo_id``): for logs and diagnostics, as Orleans' ``RuntimeIdentity``."""
        return self._activation.silo_id

    @property
    def grain_id(self) -> GrainId:
        """This grain's id (``type/key``)."""
        return self._activation.grain_id

    @property
    def primary_key(self) -> str:
        """The key as a string, whatever kind it was created from (with any extension)."""
        return self._activation.grain_id.key

    @property
    def primary_key_int(self) -> int:
        """The integer key; :class:`GrainKeyKindError` if the key is not an integer key."""
        return self._activation.grain_id.key_as_int()[0]

    @property
    def primary_key_uuid(self) -> uuid.UUID:
        """The UUID key, or for an integer key the Guid Orleans' ``GetPrimaryKey()`` gives
        it (``42`` -> ``00000000-0000-0000-2a00-000000000000``); :class:`GrainKeyKindError`
        for a string key."""
        return self._activation.grain_id.primary_key_uuid()[0]

    @property
    def key_extension(self) -> str | None:
        """The extension of a compound (int or UUID + string) key, or ``None``."""
        gid = self._activation.grain_id
        try:
            return gid.key_as_int()[1]
        except GrainKeyKindError:
            pass
        try:
            return gid.key_as_uuid()[1]
        except GrainKeyKindError:
            raise GrainKeyKindError(
                f"grain '{gid}' has a string key: only integer and UUID keys carry an "
                "extension (get_grain(cls, 7, key_ext='eu'))"
            ) from None

    # -- lifecycle ------------------------------------------------------------------------

    async def on_activate(self) -> None:
        """Called before the first call of an activation. Raising fails that call."""

    async def on_deactivate(self, reason: str) -> None:
        """Called once when the activation is deactivated (idle, requested, or shutdown)."""

    def deactivate_on_idle(self) -> None:
        """Deactivate this activation as soon as the current turn ends."""
        self._activation.request_deactivation("requested by the grain")

    def delay_deactivation(self, seconds: float) -> None:
        """Keep this activation alive for at least *seconds* (negative: cancel the delay)."""
        self._activation.delay_deactivation(seconds)

    def register_timer(
        self,
        callback: Callable[[], Awaitable[Any]],
        *,
        due: float,
        period: float = math.inf,
        interleave: bool = False,
        keep_alive: bool = False,
        name: str | None = None,
    ) -> GrainTimer:
        """Call *callback* as a turn after *due* seconds, then every *period* seconds.

        Ticks never overlap: the next period starts when the callback has finished. An
        exception from the callback is logged and the timer goes on. Timers die with the
        activation; ``keep_alive=True`` makes ticks count as activity for idle collection.
        Returns a handle whose ``cancel()`` stops the timer.
        """
        return self._activation.start_timer(
            callback,
            due=due,
            period=period,
            interleave=interleave,
            keep_alive=keep_alive,
            name=name,
        )

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task in this activation's nursery.

        The task is not a turn: it must not touch grain state without care. It is cancelled
        when the activation is deactivated.
        """
        self._activation.start_soon(fn, *args)

    # -- reminders --------------------------------------------------------------------------

    async def register_reminder(self, name: str, *, due: float, period: float) -> GrainReminder:
        """Register (or replace) the durable reminder *name*: first tick after *due* seconds,
        then every *period* seconds (at least ``SiloConfig.minimum_reminder_period``).

        Ticks call ``async def receive_reminder(self, name: str, status: TickStatus)`` as a
        turn, activating the grain when it is not active; they survive deactivation and
        silo restarts. A tick may be late, and (rarely, around a restart) repeated.
        """
        act = self._activation
        return await act.services.reminder_service().register(
            act.grain_id, type(self), name, due, period
        )

    async def unregister_reminder(self, reminder: GrainReminder | str) -> bool:
        """Stop and delete a reminder (by handle or name); False if there was none."""
        name = reminder if isinstance(reminder, str) else reminder.name
        act = self._activation
        return await act.services.reminder_service().unregister(act.grain_id, name)

    async def get_reminders(self) -> list[GrainReminder]:
        """This grain's reminders, by name."""
        act = self._activation
        return await act.services.reminder_service().list(act.grain_id)

    # -- streams ----------------------------------------------------------------------------

    def get_stream_provider(self, name: str = "default") -> StreamProvider:
        """The silo's stream provider *name* (``[streams.<name>]``): ``get_stream(namespace,
        key)`` on it gives a stream to publish to or to ``subscribe(self.method)`` to."""
        providers = self._activation.services.streams
        try:
            return providers[name]
        except KeyError:
            raise ConfigError(
                f"no stream provider named {name!r} is running; running: "
                f"{', '.join(sorted(providers)) or '(none)'}. Add it under [streams.{name}] "
                "in the silo config"
            ) from None

    # -- calling other grains --------------------------------------------------------------

    def get_grain(self, grain_class: type[G], key: GrainKey, *, key_ext: str | None = None) -> G:
        """A reference to another grain, as ``Silo.get_grain`` gives."""
        return self._activation.services.get_grain(grain_class, key, key_ext=key_ext)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__qualname__} {self._activation.grain_id}>"
        except AttributeError:
            return f"<{type(self).__qualname__} (not activated)>"
