"""Persistent grain state: the storage contract, and the state object grains use.

A grain declares named states as class attributes::

    class CartGrain(Grain):
        cart = persistent_state(CartState, storage="default")   # name: "cart"

        async def add(self, item: str) -> None:
            self.cart.state.items.append(item)
            await self.cart.write()

The states are read before ``on_activate``. Every write carries the ETag the grain last
read or wrote; a write against a newer record raises :class:`InconsistentStateError` and
overwrites nothing, so two activations of one grain can never silently lose each other's
writes.

A storage provider implements :class:`GrainStorage`: three methods over opaque bytes with
an ETag. The core owns encoding (the silo's cattrs converter over msgpack), errors with
grain/state/provider names, and the grain-facing API.

May import: values, ids, config, registries and placement. Grains and the codec for type
names only: ``_grain`` imports this module when it loads.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import attrs

from ._exceptions import InconsistentStateError, StorageError

if TYPE_CHECKING:
    from ._grain import Grain
    from ._ids import GrainId
    from ._serialization import Codec

__all__ = [
    "GrainStorage",
    "InconsistentStateError",
    "PersistentState",
    "StateDeclaration",
    "StorageError",
    "StoredState",
    "persistent_state",
]

T = TypeVar("T")


@attrs.frozen
class StoredState:
    """A record as a provider returns it: the encoded state and its ETag."""

    data: bytes
    etag: str

    @classmethod
    def from_row(
        cls, row: Sequence[Any], what: str, *, data_type: str, etag_type: str
    ) -> StoredState:
        """The record of a database's ``(data, etag)`` row of *what*;
        :class:`StorageError` (and nothing else) unless ``data`` is bytes and ``etag``
        non-empty text. *data_type* / *etag_type* name the columns' types in the message
        (a table anyone with access can fill must not fail with a TypeError)."""
        try:
            data, etag = row
        except Exception:
            raise StorageError(
                f"the record of {what} is malformed: not a (data, etag) row"
            ) from None
        if not isinstance(data, bytes) or not isinstance(etag, str) or not etag:
            raise StorageError(
                f"the record of {what} is malformed: data is {type(data).__name__} "
                f"({data_type} expected), etag {type(etag).__name__} (non-empty {etag_type} "
                "expected); delete or repair it"
            )
        return cls(data, etag)


class GrainStorage(abc.ABC):
    """The contract of a storage provider. Check yours with ``trio_grains.testing``.

    Records are keyed by ``(state_name, grain_id)``; ``str(grain_id.type)`` and
    ``grain_id.key`` are strings that may hold any character but control characters
    (``grain_id.token`` is a reversible ``[A-Za-z0-9_@=%-]`` form, e.g. for file names).
    An ETag is any string the provider chooses, different after every write.

    Providers translate their backend's errors into :class:`StorageError` and must not
    take timeouts or cancellation parameters: callers use Trio cancel scopes, so every
    method must be safe to cancel (a cancelled write either happened or did not).
    """

    @abc.abstractmethod
    async def read(self, state_name: str, grain_id: GrainId) -> StoredState | None:
        """The record, or ``None`` when there is none."""

    @abc.abstractmethod
    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        """Store *data* if the record's current ETag is *etag*; return the new ETag.

        *etag* ``None`` means "I expect no record". A mismatch raises
        :class:`InconsistentStateError` and changes nothing.
        """

    @abc.abstractmethod
    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        """Delete the record if its current ETag is *etag* (``None``: no record expected).

        A mismatch raises :class:`InconsistentStateError`. Clearing a missing record with
        ``etag=None`` succeeds.
        """


@attrs.frozen
class StateDeclaration(Generic[T]):
    """A ``persistent_state(...)`` class attribute: the descriptor grains declare."""

    state_type: type[T]
    name: str | None = None
    storage: str = "default"
    attribute: str = attrs.field(default="", init=False)

    def __set_name__(self, owner: type, attribute: str) -> None:
        object.__setattr__(self, "attribute", attribute)
        if self.name is None:
            object.__setattr__(self, "name", attribute)

    @property
    def state_name(self) -> str:
        return self.name or self.attribute

    @overload
    def __get__(self, instance: None, owner: type) -> StateDeclaration[T]: ...
    @overload
    def __get__(self, instance: Grain, owner: type) -> PersistentState[T]: ...
    def __get__(self, instance: Grain | None, owner: type) -> Any:
        if instance is None:
            return self
        states = instance._activation.states
        if states is None or self.attribute not in states:
            raise StorageError(
                f"state {self.state_name!r} of {instance.grain_id} is not loaded yet: "
                "persistent states are available from on_activate on, not in __init__"
            )
        return states[self.attribute]


def persistent_state(
    state_type: type[T], *, name: str | None = None, storage: str = "default"
) -> PersistentState[T]:
    """Declare a persistent state on a grain class (as a class attribute).

    *state_type* is an attrs class with defaults for every field (a missing record starts
    as ``state_type()``); *name* defaults to the attribute name; *storage* names a storage
    provider configured on the silo (``[storage.<name>]``; ``"default"`` is the built-in
    memory provider unless configured otherwise).
    """
    return StateDeclaration(state_type, name, storage)  # type: ignore[return-value]


class PersistentState(Generic[T]):
    """One persistent state of one activation: ``state``, ``etag``, ``read/write/clear``."""

    __slots__ = ("_codec", "_decl", "_etag", "_grain_id", "_provider_name", "_storage", "state")

    def __init__(
        self,
        decl: StateDeclaration[T],
        grain_id: GrainId,
        storage: GrainStorage,
        provider_name: str,
        codec: Codec,
    ) -> None:
        self._decl = decl
        self._grain_id = grain_id
        self._storage = storage
        self._provider_name = provider_name
        self._codec = codec
        self._etag: str | None = None
        self.state: T = decl.state_type()

    @property
    def name(self) -> str:
        return self._decl.state_name

    @property
    def etag(self) -> str | None:
        """The ETag of the record as last read or written (``None``: no record)."""
        return self._etag

    @property
    def record_exists(self) -> bool:
        return self._etag is not None

    def _where(self) -> str:
        return (
            f"state {self.name!r} of grain {self._grain_id} in storage "
            f"{self._decl.storage!r} ({self._provider_name})"
        )

    async def read(self) -> None:
        """Load the stored record (or a fresh ``state_type()`` when there is none)."""
        try:
            record = await self._storage.read(self.name, self._grain_id)
        except Exception as exc:
            raise _translated(exc, f"cannot read {self._where()}") from exc
        if record is None:
            self.state = self._decl.state_type()
            self._etag = None
            return
        try:
            state = self._codec.loads(
                record.data, self._decl.state_type, mapping=attrs.has(self._decl.state_type)
            )
        except Exception as exc:
            raise StorageError(
                f"cannot decode {self._where()} as {self._decl.state_type.__qualname__}: "
                f"{exc}. The record is left as it is; fix the state class (new fields need "
                "defaults) or repair the record"
            ) from exc
        self.state = state
        self._etag = record.etag

    async def write(self) -> None:
        """Store ``state``. :class:`InconsistentStateError` if the record changed meanwhile."""
        data = self._codec.dumps(self.state, self._decl.state_type)
        try:
            self._etag = await self._storage.write(self.name, self._grain_id, data, self._etag)
        except Exception as exc:
            raise _translated(exc, f"cannot write {self._where()}") from exc

    async def clear(self) -> None:
        """Delete the record and reset ``state`` to ``state_type()``."""
        try:
            await self._storage.clear(self.name, self._grain_id, self._etag)
        except Exception as exc:
            raise _translated(exc, f"cannot clear {self._where()}") from exc
        self._etag = None
        self.state = self._decl.state_type()

    def __repr__(self) -> str:
        return f"<PersistentState {self.name!r} of {self._grain_id} etag={self._etag!r}>"


def _translated(exc: Exception, what: str) -> StorageError:
    """The error a grain sees: *what* failed and why, as a StorageError (the original chained).

    A provider should raise :class:`StorageError`; anything else it lets escape is a bug
    in the provider, reported as a StorageError all the same so the grain can handle it.
    """
    if isinstance(exc, InconsistentStateError):
        return InconsistentStateError(f"{what}: {exc}")
    if isinstance(exc, StorageError):
        return StorageError(f"{what}: {exc}")
    return StorageError(f"{what}: the provider raised {type(exc).__name__}: {exc}")


def declarations(cls: type) -> list[StateDeclaration[Any]]:
    """The persistent states a grain class declares (own and inherited)."""
    found: dict[str, StateDeclaration[Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, StateDeclaration):
                found[attr] = value
    return list(found.values())


async def load_states(
    decls: Sequence[StateDeclaration[Any]],
    grain_id: GrainId,
    storages: Mapping[str, tuple[GrainStorage, str]],
    codec: Codec,
) -> dict[str, PersistentState[Any]]:
    """Create and read the declared states *decls* of *grain_id* (before ``on_activate``)."""
    states: dict[str, PersistentState[Any]] = {}
    for decl in decls:
        storage, provider = storages[decl.storage]
        state: PersistentState[Any] = PersistentState(decl, grain_id, storage, provider, codec)
        await state.read()
        states[decl.attribute] = state
    return states
