"""Grain calls: results, exceptions, interfaces, method rules, portable references."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import attrs
import pytest
import trio

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    GrainInterface,
    GrainKeyKindError,
    GrainMethodError,
    GrainTypeError,
    RemoteGrainError,
    SiloConfig,
    grain_type,
    open_silo,
    remotable,
)


class CartGrain(Grain):
    def __init__(self) -> None:
        self.items: list[str] = []

    async def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)

    async def items_(self) -> list[str]:
        return list(self.items)

    async def fail(self, message: str) -> None:
        raise KeyError(message)

    async def whoami(self) -> dict[str, object]:
        out: dict[str, object] = {"id": str(self.grain_id), "key": self.primary_key}
        for attr in ("primary_key_int", "primary_key_uuid", "key_extension"):
            try:
                out[attr] = getattr(self, attr)
            except GrainKeyKindError as exc:
                out[attr] = f"error: {exc}"
        return out

    def helper(self) -> int:
        return 1

    async def _private(self) -> None:
        pass


async def test_call_returns_result_and_keeps_state() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        cart = silo.get_grain(CartGrain, "bob65")
        assert await cart.add("apple") == 1
        assert await cart.add("pear") == 2
        assert await silo.get_grain(CartGrain, "bob65").items_() == ["apple", "pear"]
        assert await silo.get_grain(CartGrain, "alice").items_() == []
        assert str(cart.grain_id) == "cart/bob65"


async def test_exception_reaches_caller_with_its_type_and_grain_survives() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        cart = silo.get_grain(CartGrain, "bob65")
        await cart.add("apple")
        with pytest.raises(KeyError, match="boom"):
            await cart.fail("boom")
        assert await cart.items_() == ["apple"]  # same activation, state intact
        assert silo.statistics().activations == 1


async def test_key_kinds_inside_the_grain() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        by_int = await silo.get_grain(CartGrain, 42).whoami()
        assert by_int["id"] == "cart/2A"
        assert by_int["primary_key_int"] == 42
        assert by_int["key_extension"] is None
        # Orleans' GetPrimaryKey() of an integer key: zeros, then its 8 bytes lowest first
        assert by_int["primary_key_uuid"] == uuid.UUID("00000000-0000-0000-2a00-000000000000")

        u = uuid.UUID("12345678-1234-5678-1234-567812345678")
        compound = await silo.get_grain(CartGrain, u, key_ext="eu").whoami()
        assert compound["primary_key_uuid"] == u
        assert compound["key_extension"] == "eu"
        assert compound["key"] == "12345678123456781234567812345678+eu"

        by_str = await silo.get_grain(CartGrain, "bob").whoami()
        assert "not an integer key" in str(by_str["primary_key_int"])
        assert str(by_str["key_extension"]).startswith("error: ")


async def test_int_and_hex_string_reach_the_same_grain() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        await silo.get_grain(CartGrain, 42).add("x")
        assert await silo.get_grain(CartGrain, "2A").items_() == ["x"]
        assert silo.statistics().activations == 1


async def test_only_public_async_methods_are_callable() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        cart = silo.get_grain(CartGrain, "bob65")
        with pytest.raises(GrainMethodError, match="private names"):
            await cart._private()
        with pytest.raises(GrainMethodError, match="no grain method 'helper'"):
            cart.helper()
        with pytest.raises(GrainMethodError, match="callable methods: add, fail"):
            cart.nonexistent  # noqa: B018
        with pytest.raises(GrainMethodError):
            cart.items  # noqa: B018 - an attribute of the grain, not a method


@grain_type("cart")
class CartInterface(GrainInterface):
    async def add(self, item: str) -> int: ...

    async def items_(self) -> list[str]: ...

    async def checkout(self) -> None: ...


async def test_interface_only_caller() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        cart = silo.get_grain(CartInterface, "bob65")
        assert await cart.add("apple") == 1
        assert await silo.get_grain(CartGrain, "bob65").items_() == ["apple"]
        # declared on the interface but not implemented by the grain class
        with pytest.raises(GrainMethodError, match="has no grain method 'checkout'"):
            await cart.checkout()


class Orphan(GrainInterface):
    async def ping(self) -> None: ...


async def test_unhosted_type_is_a_clear_error() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        with pytest.raises(GrainTypeError, match="hosts no grain class for grain type 'orphan'"):
            await silo.get_grain(Orphan, "x").ping()


def test_interfaces_must_be_async() -> None:
    class BadInterface(GrainInterface):
        def sync(self) -> None: ...

    from trio_grains._grain import class_info

    with pytest.raises(GrainTypeError, match="must be 'async def'"):
        class_info(BadInterface)


async def test_two_classes_claiming_one_type_name() -> None:
    @grain_type("cart")
    class OtherCart(Grain):
        async def add(self, item: str) -> int:
            return 0

    with pytest.raises(GrainTypeError, match=r"claimed by both .*CartGrain and .*OtherCart"):
        async with open_silo(grains=[CartGrain, OtherCart]):
            pass


async def test_grain_class_hiding_runtime_names_is_rejected() -> None:
    class Bad(Grain):
        async def deactivate_on_idle(self) -> None:  # type: ignore[override]
            pass

    with pytest.raises(GrainTypeError, match=r"hides Grain\.deactivate_on_idle"):
        async with open_silo(grains=[Bad]):
            pass


@attrs.frozen
class Friendship:
    name: str
    friend: CartGrain


async def test_reference_is_portable_through_the_converter() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        ref = silo.get_grain(CartGrain, "bob65")
        await ref.add("apple")
        data = silo.converter.unstructure(Friendship("bob", ref))
        assert data == {"name": "bob", "friend": "cart/bob65"}
        back = silo.converter.structure(data, Friendship)
        assert back.friend == ref
        assert await back.friend.items_() == ["apple"]
        by_id = silo.get_grain_by_id(CartGrain, "cart/bob65")
        assert await by_id.items_() == ["apple"]
        with pytest.raises(GrainTypeError, match="is of type 'other'"):
            silo.get_grain_by_id(CartGrain, GrainId.parse("other/x"))


async def test_reference_refuses_pickle() -> None:
    import pickle

    async with open_silo(grains=[CartGrain]) as silo:
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(silo.get_grain(CartGrain, "x"))


def test_reference_resolves_in_another_process(tmp_path: object) -> None:
    """A reference stored as data in one process calls the same grain id in another."""
    program = textwrap.dedent(
        """
        import sys, trio
        from trio_grains import Grain, open_silo

        class CartGrain(Grain):
            async def whoami(self) -> str:
                return str(self.grain_id)

        async def main():
            async with open_silo(grains=[CartGrain]) as silo:
                ref = silo.converter.structure(sys.argv[1], CartGrain)
                print(await ref.whoami())

        trio.run(main)
        """
    )

    async def stored() -> str:
        async with open_silo(grains=[CartGrain]) as silo:
            return str(silo.converter.unstructure(silo.get_grain(CartGrain, 7, key_ext="eu")))

    text = trio.run(stored)
    out = subprocess.run(
        [sys.executable, "-c", program, text], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "cart/7+eu"


@remotable  # rebuilt as itself from a reply; LocalOnly below is not
class Boom(Exception):
    pass


class IsolatedGrain(Grain):
    def __init__(self) -> None:
        self.seen: list[Friendship] = []

    async def keep(self, f: Friendship) -> Friendship:
        self.seen.append(f)
        return f

    async def raise_known(self) -> None:
        raise Boom("known")

    async def raise_unknown(self) -> None:
        local = type("LocalOnly", (Exception,), {})
        raise local("unknown type")


async def test_isolated_calls_copy_arguments_and_rebuild_exceptions() -> None:
    config = SiloConfig(isolate_local_calls=True, remote_tracebacks=True)
    async with open_silo(config, grains=[IsolatedGrain, CartGrain]) as silo:
        ref = silo.get_grain(IsolatedGrain, "a")
        arg = Friendship("bob", silo.get_grain(CartGrain, "bob"))
        back = await ref.keep(arg)
        assert back == arg
        assert back is not arg  # copied through the converter both ways
        with pytest.raises(Boom, match="known") as info:
            await ref.raise_known()
        assert any("traceback there" in note for note in info.value.__notes__)
        with pytest.raises(RemoteGrainError, match="LocalOnly: unknown type") as remote:
            await ref.raise_unknown()
        assert "raise_unknown" in remote.value.traceback_text


async def test_unknown_placement_name_lists_available() -> None:
    from trio_grains import PluginError

    with pytest.raises(PluginError, match=r"available: .*prefer-local.*random"):
        async with open_silo(SiloConfig(default_placement="nearest")):
            pass


async def test_unknown_storage_provider_is_a_clear_error() -> None:
    from trio_grains import PluginError

    config = SiloConfig.from_dict({"storage": {"default": {"provider": "postgress"}}})
    with pytest.raises(PluginError, match="unknown storage provider 'postgress'"):
        async with open_silo(config):
            pass


def test_config_from_dict_reports_every_bad_key() -> None:
    with pytest.raises(ConfigError) as info:
        SiloConfig.from_dict({"response_timeout": "soon", "colection_age": 3})
    message = str(info.value)
    assert "response_timeout" in message
    assert "colection_age" in message


def test_config_rejects_non_positive_times() -> None:
    with pytest.raises(ConfigError, match="response_timeout must be a positive"):
        SiloConfig(response_timeout=0)


class Typed(Grain):
    async def nothing(self) -> None:
        return None

    async def lock(self, lock: trio.Lock) -> int:
        return 1

    async def keep(self, f: Friendship) -> str:
        return f.name


async def test_isolated_calls_handle_none_results_and_report_bad_arguments() -> None:
    from trio_grains import SerializationError

    async with open_silo(SiloConfig(isolate_local_calls=True), grains=[Typed]) as silo:
        ref = silo.get_grain(Typed, "a")
        assert await ref.nothing() is None
        with pytest.raises(SerializationError, match=r"argument 'lock' of lock\(\)"):
            await ref.lock(trio.Lock())
        with pytest.raises(SerializationError, match=r"argument 'f' of keep\(\)"):
            await ref.keep(object())  # type: ignore[arg-type]


def test_datetimes_travel_as_timestamps_and_also_structure_from_iso_text() -> None:
    import datetime

    from trio_grains._serialization import make_converter

    conv = make_converter()
    when = datetime.datetime(2026, 11, 22, 12, 30, tzinfo=datetime.UTC)
    assert conv.structure(conv.unstructure(when), datetime.datetime) == when
    # what a JSON caller (Client.call, `trio-grains client`) can send
    assert conv.structure("2026-11-22T12:30:00+00:00", datetime.datetime) == when
    assert conv.structure("2026-11-22", datetime.date) == when.date()
    assert conv.structure(conv.unstructure(when.date()), datetime.date) == when.date()
