"""Persistent grain state: loading before on_activate, ETags, serialization, schema
evolution, unreadable records, failing providers and storage configuration."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    GrainStorage,
    InconsistentStateError,
    PersistentState,
    ProviderConfig,
    ProviderContext,
    ProviderRegistry,
    Silo,
    SiloConfig,
    StorageError,
    hookimpl,
    open_silo,
    persistent_state,
)
from trio_grains._builtin.memory import MemoryStorage

# --- grains ------------------------------------------------------------------------------


@attrs.define
class Counter:
    value: int = 0
    history: list[str] = attrs.Factory(list)


class CounterGrain(Grain):
    counter = persistent_state(Counter)

    def __init__(self) -> None:
        self.seen_on_activate = -1

    async def on_activate(self) -> None:
        self.seen_on_activate = self.counter.state.value

    async def add(self, n: int) -> int:
        self.counter.state.value += n
        self.counter.state.history.append(f"+{n}")
        await self.counter.write()
        return self.counter.state.value

    async def add_in_memory(self, n: int) -> int:
        self.counter.state.value += n
        return self.counter.state.value

    async def save(self) -> None:
        await self.counter.write()

    async def value(self) -> int:
        return self.counter.state.value

    async def history(self) -> list[str]:
        return list(self.counter.state.history)

    async def seen(self) -> int:
        return self.seen_on_activate

    async def record(self) -> tuple[bool, str | None]:
        return self.counter.record_exists, self.counter.etag

    async def reread(self) -> int:
        await self.counter.read()
        return self.counter.state.value

    async def clear(self) -> None:
        await self.counter.clear()

    async def leave(self) -> None:
        self.deactivate_on_idle()


def memory(silo: Silo, name: str = "default") -> GrainStorage:
    storage: GrainStorage = silo.provider("storage", name)
    return storage


def gid(key: str, grain_type: str = "counter") -> GrainId:
    return GrainId.create(grain_type, key)


async def put(silo: Silo, state: str, grain: GrainId, value: Any, type_: Any) -> str:
    """Write a record directly to the default storage, as another activation would."""
    storage = memory(silo)
    current = await storage.read(state, grain)
    return await storage.write(
        state, grain, silo.codec.dumps(value, type_), current.etag if current else None
    )


async def stored(silo: Silo, state: str, grain: GrainId, type_: Any, name: str = "default") -> Any:
    record = await memory(silo, name).read(state, grain)
    assert record is not None, f"no record of {state!r} of {grain}"
    return silo.codec.loads(record.data, type_)


# --- loading and saving -----------------------------------------------------------------


async def test_state_is_loaded_before_on_activate() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        await put(silo, "counter", gid("a"), Counter(5, ["+5"]), Counter)
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.seen() == 5
        assert await ref.history() == ["+5"]


async def test_missing_record_starts_as_a_fresh_state() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "new")
        assert await ref.seen() == 0
        assert await ref.record() == (False, None)
        assert await memory(silo).read("counter", gid("new")) is None  # nothing written


async def test_state_survives_deactivation() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.add(3) == 3
        await ref.add_in_memory(100)  # never written: lost with the activation
        await ref.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert silo.statistics().activations == 0
        assert await ref.value() == 3
        assert await ref.seen() == 3
        assert silo.statistics().activations_created == 2


async def test_record_exists_and_etag_follow_the_record() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.record() == (False, None)
        await ref.add(1)
        exists, etag = await ref.record()
        record = await memory(silo).read("counter", gid("a"))
        assert record is not None
        assert exists
        assert etag == record.etag
        await ref.add(1)
        assert (await ref.record())[1] not in (None, etag)
        await ref.clear()
        assert await ref.record() == (False, None)
        assert await ref.value() == 0  # clear resets the state
        assert await memory(silo).read("counter", gid("a")) is None


async def test_state_is_not_available_in_init() -> None:
    class EarlyGrain(Grain):
        counter = persistent_state(Counter)

        def __init__(self) -> None:
            self.counter.state.value = 1

        async def ping(self) -> None:
            pass

    async with open_silo(grains=[EarlyGrain]) as silo:
        with pytest.raises(StorageError, match=r"not loaded yet.*from on_activate on"):
            await silo.get_grain(EarlyGrain, "a").ping()


# --- ETags ------------------------------------------------------------------------------


async def test_etag_conflict_between_two_activations() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.add(1) == 1
        # Another activation of the grain (another silo) writes meanwhile.
        await put(silo, "counter", gid("a"), Counter(100, ["elsewhere"]), Counter)
        with pytest.raises(InconsistentStateError, match="state 'counter' of grain counter/a"):
            await ref.add(1)
        assert await stored(silo, "counter", gid("a"), Counter) == Counter(100, ["elsewhere"])
        # The in-memory state is the grain's own, untouched by the failed write ...
        assert await ref.value() == 2
        assert await ref.history() == ["+1", "+1"]
        # ... the activation is healthy ...
        assert silo.statistics().activations_created == 1
        # ... and reading takes the other version, after which writing works again.
        assert await ref.reread() == 100
        assert await ref.add(1) == 101
        assert await stored(silo, "counter", gid("a"), Counter) == Counter(101, ["elsewhere", "+1"])
        assert silo.statistics().activations_created == 1


async def test_a_record_created_elsewhere_conflicts_with_a_first_write() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.record() == (False, None)
        await put(silo, "counter", gid("a"), Counter(7), Counter)
        with pytest.raises(InconsistentStateError):
            await ref.add(1)
        assert await stored(silo, "counter", gid("a"), Counter) == Counter(7)


async def test_clear_with_a_stale_etag_conflicts_and_keeps_the_record() -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        ref = silo.get_grain(CounterGrain, "a")
        await ref.add(1)
        await put(silo, "counter", gid("a"), Counter(50), Counter)
        with pytest.raises(InconsistentStateError):
            await ref.clear()
        assert await stored(silo, "counter", gid("a"), Counter) == Counter(50)
        assert await ref.value() == 1


# --- serialization ----------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.define
class Address:
    street: str = ""
    city: str = ""


@attrs.define
class Person:
    name: str = ""
    address: Address = attrs.Factory(Address)
    born: dt.datetime = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@attrs.define
class Rich:
    owner: Person = attrs.Factory(Person)
    friends: list[Person] = attrs.Factory(list)
    color: Color = Color.RED
    priority: Priority = Priority.LOW
    tags: set[str] = attrs.Factory(set)
    frozen: frozenset[int] = frozenset()
    scores: dict[str, list[float]] = attrs.Factory(dict)
    pair: tuple[int, str] = (0, "")
    birthday: dt.date = dt.date(2000, 1, 1)
    updated: dt.datetime | None = None
    blob: bytes = b""
    nickname: str | None = None


@attrs.define
class WithUuid:
    id: uuid.UUID = attrs.Factory(lambda: uuid.UUID(int=0))
    others: list[uuid.UUID] = attrs.Factory(list)


@attrs.define
class WithIntKeys:
    by_number: dict[int, str] = attrs.Factory(dict)


class BoxGrain(Grain):
    rich = persistent_state(Rich)
    ids = persistent_state(WithUuid)
    numbers = persistent_state(WithIntKeys)

    async def set_rich(self, value: Rich) -> None:
        self.rich.state = value
        await self.rich.write()

    async def get_rich(self) -> Rich:
        return self.rich.state

    async def set_ids(self, value: WithUuid) -> None:
        self.ids.state = value
        await self.ids.write()

    async def get_ids(self) -> WithUuid:
        return self.ids.state

    async def set_numbers(self, value: WithIntKeys) -> None:
        self.numbers.state = value
        await self.numbers.write()

    async def get_numbers(self) -> WithIntKeys:
        return self.numbers.state

    async def leave(self) -> None:
        self.deactivate_on_idle()


async def _reactivate(silo: Silo, ref: Any) -> None:
    await ref.leave()
    await trio.testing.wait_all_tasks_blocked()
    assert silo.statistics().activations == 0


async def test_round_trip_of_rich_attrs_state() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    value = Rich(
        owner=Person(
            "Ada", Address("1 Main St", "Zürich"), dt.datetime(1815, 12, 10, tzinfo=plus2)
        ),
        friends=[Person("Bob"), Person("Cy", Address(city="Oslo"))],
        color=Color.GREEN,
        priority=Priority.HIGH,
        tags={"a", "b", "ünï"},
        frozen=frozenset({1, 2, 3}),
        scores={"x": [1.5, -2.0], "": []},
        pair=(7, "seven"),
        birthday=dt.date(2024, 2, 29),
        updated=dt.datetime(2024, 5, 17, 13, 45, 12, 123457, tzinfo=plus2),
        blob=bytes(range(256)),
        nickname=None,
    )
    async with open_silo(grains=[BoxGrain]) as silo:
        ref = silo.get_grain(BoxGrain, "a")
        await ref.set_rich(value)
        await _reactivate(silo, ref)
        loaded = await ref.get_rich()
        assert loaded == value
        assert isinstance(loaded.owner.address, Address)
        assert loaded.color is Color.GREEN
        assert loaded.priority is Priority.HIGH
        assert isinstance(loaded.tags, set)
        assert isinstance(loaded.frozen, frozenset)
        assert loaded.updated is not None
        assert loaded.updated.utcoffset() is not None  # still timezone-aware (the same instant)


async def test_round_trip_of_uuids() -> None:
    value = WithUuid(uuid.uuid4(), [uuid.uuid4(), uuid.UUID(int=1)])
    async with open_silo(grains=[BoxGrain]) as silo:
        ref = silo.get_grain(BoxGrain, "a")
        await ref.set_ids(value)
        await _reactivate(silo, ref)
        assert await ref.get_ids() == value


async def test_round_trip_of_int_keyed_dicts() -> None:
    value = WithIntKeys({1: "one", -5: "minus five"})
    async with open_silo(grains=[BoxGrain]) as silo:
        ref = silo.get_grain(BoxGrain, "a")
        await ref.set_numbers(value)
        await _reactivate(silo, ref)
        assert await ref.get_numbers() == value


# --- schema evolution -------------------------------------------------------------------


@attrs.define
class ProfileV1:
    name: str = ""
    age: int = 0
    legacy_flag: bool = False


@attrs.define
class ProfileV2:
    name: str = ""
    age: int = 0
    email: str = "unknown@example.com"  # added, with a default; legacy_flag removed
    tags: list[str] = attrs.Factory(list)


class ProfileGrain(Grain):
    profile = persistent_state(ProfileV2)

    async def get(self) -> ProfileV2:
        return self.profile.state

    async def rename(self, name: str) -> None:
        self.profile.state.name = name
        await self.profile.write()


async def test_schema_evolution_added_field_with_default_and_removed_field() -> None:
    async with open_silo(grains=[ProfileGrain]) as silo:
        grain = gid("ada", "profile")
        await put(silo, "profile", grain, ProfileV1("Ada", 36, legacy_flag=True), ProfileV1)
        ref = silo.get_grain(ProfileGrain, "ada")
        assert await ref.get() == ProfileV2("Ada", 36, "unknown@example.com", [])
        await ref.rename("Ada L.")
        assert await stored(silo, "profile", grain, ProfileV2) == ProfileV2(
            "Ada L.", 36, "unknown@example.com", []
        )


# --- unreadable records -----------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xc1 not msgpack", id="invalid msgpack"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x05", id="an int"),
        pytest.param(b"\x81\xa5value\xa3abc", id="wrong field type"),
        pytest.param(b"\x92\x01\x02", id="a list"),
        pytest.param(b"\xa3abc", id="a string"),
    ],
)
async def test_an_unreadable_record_fails_the_activation_and_is_kept(garbage: bytes) -> None:
    async with open_silo(grains=[CounterGrain]) as silo:
        storage = memory(silo)
        etag = await storage.write("counter", gid("bad"), garbage, None)
        ref = silo.get_grain(CounterGrain, "bad")
        with pytest.raises(StorageError) as info:
            await ref.value()
        message = str(info.value)
        assert "counter/bad" in message
        assert "'counter'" in message  # the state
        assert "'default'" in message  # the storage name
        assert "memory" in message  # the provider
        assert silo.statistics().activations == 0
        with pytest.raises(StorageError):
            await ref.add(1)  # a later call does not overwrite it either
        record = await storage.read("counter", gid("bad"))
        assert record is not None
        assert (record.data, record.etag) == (garbage, etag)
        # Repairing the record lets the grain activate.
        await storage.clear("counter", gid("bad"), etag)
        assert await ref.add(1) == 1


# --- failing providers ------------------------------------------------------------------


class BackendDownError(StorageError):
    """A provider's own error type, with a constructor of its own."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"cannot reach {host}:{port}")
        self.host, self.port = host, port


@attrs.define(eq=False)
class FlakyStorage(MemoryStorage):
    """A memory storage that can be switched to failing."""

    failing: bool = attrs.field(default=False, init=False)
    error: StorageError | None = attrs.field(default=None, init=False)

    def _check(self) -> None:
        if self.failing:
            raise self.error or StorageError("the backend is down")

    async def read(self, state_name: str, grain_id: GrainId) -> Any:
        self._check()
        return await super().read(state_name, grain_id)

    async def write(self, state_name: str, grain_id: GrainId, data: bytes, etag: str | None) -> str:
        self._check()
        return await super().write(state_name, grain_id, data, etag)

    async def clear(self, state_name: str, grain_id: GrainId, etag: str | None) -> None:
        self._check()
        await super().clear(state_name, grain_id, etag)


@contextlib.asynccontextmanager
async def open_flaky(ctx: ProviderContext, options: Mapping[str, Any]) -> AsyncIterator[Any]:
    yield FlakyStorage()


class FlakyPlugin:
    __name__ = "flaky-test-plugin"

    @hookimpl
    def grains_register_storage(self, registry: ProviderRegistry[Any]) -> None:
        registry.register("flaky", open_flaky)


FLAKY_CONFIG = SiloConfig(storage={"default": ProviderConfig(provider="flaky")})


async def test_a_failing_provider_fails_the_write_and_the_activation_keeps_serving() -> None:
    async with open_silo(FLAKY_CONFIG, grains=[CounterGrain], plugins=[FlakyPlugin()]) as silo:
        flaky: FlakyStorage = silo.provider("storage", "default")
        ref = silo.get_grain(CounterGrain, "a")
        assert await ref.add(1) == 1
        flaky.failing = True
        with pytest.raises(
            StorageError, match=r"cannot write state 'counter'.*the backend is down"
        ):
            await ref.add(1)
        assert await ref.value() == 2  # serving, with its in-memory state
        flaky.failing = False
        await ref.save()
        assert await stored(silo, "counter", gid("a"), Counter) == Counter(2, ["+1", "+1"])
        assert silo.statistics().activations_created == 1


async def test_a_failing_provider_at_activation_fails_the_call_then_recovers() -> None:
    async with open_silo(FLAKY_CONFIG, grains=[CounterGrain], plugins=[FlakyPlugin()]) as silo:
        flaky: FlakyStorage = silo.provider("storage", "default")
        flaky.failing = True
        ref = silo.get_grain(CounterGrain, "a")
        with pytest.raises(StorageError, match=r"cannot read state 'counter' of grain counter/a"):
            await ref.value()
        assert silo.statistics().activations == 0
        flaky.failing = False
        assert await ref.add(1) == 1


async def test_a_provider_error_subclass_reaches_the_grain() -> None:
    async with open_silo(FLAKY_CONFIG, grains=[CounterGrain], plugins=[FlakyPlugin()]) as silo:
        flaky: FlakyStorage = silo.provider("storage", "default")
        ref = silo.get_grain(CounterGrain, "a")
        await ref.value()
        flaky.failing, flaky.error = True, BackendDownError("db.example", 5432)
        with pytest.raises(StorageError, match=r"cannot reach db\.example:5432"):
            await ref.add(1)


# --- configuration ----------------------------------------------------------------------


class MisconfiguredGrain(Grain):
    data = persistent_state(Counter, storage="archive")

    async def ping(self) -> None:
        pass


async def test_an_unconfigured_storage_name_is_a_config_error_at_open_silo() -> None:
    with pytest.raises(ConfigError) as info:
        async with open_silo(grains=[MisconfiguredGrain]):
            pytest.fail("the silo must not start")  # pragma: no cover
    message = str(info.value)
    assert "MisconfiguredGrain.data" in message
    assert "'archive'" in message
    assert "[storage.archive]" in message


async def test_an_unconfigured_storage_name_is_fine_once_configured() -> None:
    config = SiloConfig(storage={"archive": ProviderConfig(provider="memory")})
    async with open_silo(config, grains=[MisconfiguredGrain]) as silo:
        await silo.get_grain(MisconfiguredGrain, "a").ping()


@attrs.define
class Cart:
    items: list[str] = attrs.Factory(list)


@attrs.define
class Profile:
    name: str = ""


class ShopperGrain(Grain):
    profile = persistent_state(Profile)
    cart = persistent_state(Cart, name="shopping-cart", storage="carts")

    async def set_name(self, name: str) -> None:
        self.profile.state.name = name
        await self.profile.write()

    async def add_item(self, item: str) -> None:
        self.cart.state.items.append(item)
        await self.cart.write()

    async def show(self) -> tuple[str, list[str]]:
        return self.profile.state.name, list(self.cart.state.items)

    async def etags(self) -> tuple[str | None, str | None]:
        return self.profile.etag, self.cart.etag

    async def state_names(self) -> list[str]:
        states: list[PersistentState[Any]] = [self.profile, self.cart]
        return [s.name for s in states]

    async def leave(self) -> None:
        self.deactivate_on_idle()


async def test_two_named_states_in_two_storages() -> None:
    config = SiloConfig(storage={"carts": ProviderConfig(provider="memory")})
    async with open_silo(config, grains=[ShopperGrain]) as silo:
        ref = silo.get_grain(ShopperGrain, "ada")
        grain = gid("ada", "shopper")
        assert await ref.state_names() == ["profile", "shopping-cart"]
        await ref.set_name("Ada")
        await ref.add_item("tea")
        await ref.add_item("milk")
        default, carts = memory(silo), memory(silo, "carts")
        assert default is not carts
        assert await stored(silo, "profile", grain, Profile) == Profile("Ada")
        assert await stored(silo, "shopping-cart", grain, Cart, name="carts") == Cart(
            ["tea", "milk"]
        )
        assert await carts.read("profile", grain) is None
        assert await default.read("shopping-cart", grain) is None
        profile_etag, cart_etag = await ref.etags()
        await ref.add_item("eggs")
        assert (await ref.etags())[0] == profile_etag  # independent records
        assert (await ref.etags())[1] != cart_etag
        await _reactivate(silo, ref)
        assert await ref.show() == ("Ada", ["tea", "milk", "eggs"])
