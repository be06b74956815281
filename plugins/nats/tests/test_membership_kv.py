"""The membership table on a KV bucket, and membership services on a real nats-server:
the conformance kit (each table on a connection of its own), then what is specific to KV
(keys, old rows, TTL expiry and its markers) and services over it.

Real time with small intervals; every wait is bounded by a generous ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from trio_grains_nats import Connection, JetStream, connect
from trio_grains_nats.membership import (
    KvMembershipTable,
    decode_silo_key,
    decode_token,
    encode_silo_key,
    encode_token,
    membership_bucket,
)
from trio_grains_nats.testing import FreezingRelay, run_freezing_relay

from trio_grains import MembershipTable
from trio_grains._cluster.membership import SiloDeclaredDeadError
from trio_grains._cluster.membership_service import MembershipService
from trio_grains._cluster.silo_entries import MembershipView, SiloEntry, SiloStatus
from trio_grains.testing import check_membership_table

INTERVAL = 0.1
DEAD_AFTER = 0.5
TTL = 3.0
BOUND = 10.0  # generous: only a hang fails a test


def _cluster() -> str:
    return "c" + uuid.uuid4().hex[:10]


def _entry(silo_id: str) -> SiloEntry:
    return SiloEntry(silo_id, f"grains.silo.{silo_id}", roles=frozenset({"web"}))


def _service(table: KvMembershipTable, silo_id: str) -> MembershipService:
    return MembershipService(
        table, _entry(silo_id), heartbeat_interval=INTERVAL, dead_after=DEAD_AFTER
    )


def _active_ids(view: MembershipView) -> list[str]:
    return [e.silo_id for e in view.active()]


def _gone_or_dead(silo_id: str) -> Callable[[MembershipView], bool]:
    return lambda v: v.status_of(silo_id) in (SiloStatus.DEAD, None)


def test_keys_and_bucket_names() -> None:
    for silo_id in ["a", "silo-1_x", "10.0.0.1:11111@42", "été/=.*>"]:
        key = encode_silo_key(silo_id)
        assert all(c.isalnum() or c in "-_=" for c in key)
        assert decode_silo_key(key) == silo_id
    assert encode_silo_key("=") != "="
    for text in ["", "=", "a.b", "*", ">", " ", "\ud800 lone surrogate", "日本"]:
        token = encode_token(text)
        assert token
        assert all(c.isascii() and (c.isalnum() or c in "-_=") for c in token)
        assert decode_token(token) == text
    assert encode_token("") == "=" != encode_token("=")
    with pytest.raises(ValueError, match="empty"):
        encode_silo_key("")
    assert membership_bucket("prod") == "grains-membership-prod"
    with pytest.raises(ValueError, match="cluster name"):
        membership_bucket("a.b")


async def test_kv_table_conforms(nats_url: str) -> None:
    @contextlib.asynccontextmanager
    async def open_table(cluster: str) -> AsyncIterator[MembershipTable]:
        async with connect(nats_url, name="kit") as nc:
            with trio.fail_after(BOUND):
                table = await KvMembershipTable.open(nc.jetstream(), cluster, entry_ttl=TTL)
            yield table

    with trio.fail_after(BOUND * 12):
        await check_membership_table(open_table)


async def test_grain_types_and_load(js: JetStream) -> None:
    table = await KvMembershipTable.open(js, _cluster(), entry_ttl=TTL)
    entry = SiloEntry("s1", "grains.silo.s1", grain_types=["cart", "user"], load=3)
    joined = await table.join(entry)
    assert (joined.grain_types, joined.load) == (frozenset({"cart", "user"}), 3)
    loaded = await table.heartbeat("s1", load=17)
    assert loaded.load == 17
    assert loaded.version > joined.version
    kept = await table.heartbeat("s1")
    assert kept.load == 17
    assert kept.grain_types == frozenset({"cart", "user"})
    zero = await table.heartbeat("s1", load=0)
    assert zero.load == 0
    assert (await table.snapshot()).get("s1") == zero
    active = await table.set_status("s1", SiloStatus.ACTIVE)
    assert active is not None
    assert (active.grain_types, active.load) == (frozenset({"cart", "user"}), 0)


async def test_rows_without_the_new_fields_decode_with_defaults(js: JetStream) -> None:
    table = await KvMembershipTable.open(js, _cluster(), entry_ttl=TTL)
    old_row = {
        "silo_id": "old silo",
        "address": "grains.silo.old",
        "status": "active",
        "roles": ["web"],
        "started_at": 1.5,
        "heartbeat_at": 2.5,
    }
    revision = await table.kv.put(encode_silo_key("old silo"), json.dumps(old_row).encode())
    view = await table.snapshot()
    assert view.get("old silo") == SiloEntry(
        "old silo",
        "grains.silo.old",
        SiloStatus.ACTIVE,
        roles=frozenset({"web"}),
        started_at=1.5,
        heartbeat_at=2.5,
        version=revision,
        grain_types=frozenset(),
        load=0,
    )
    beat = await table.heartbeat("old silo", load=4)  # rewritten with the new fields
    assert (beat.load, beat.grain_types, beat.roles) == (4, frozenset(), frozenset({"web"}))
    stored = json.loads((await table.kv.get(encode_silo_key("old silo"))).value)
    assert (stored["load"], stored["grain_types"]) == (4, [])


async def test_watch_and_ttl_expiry(js: JetStream) -> None:
    table = await KvMembershipTable.open(js, _cluster(), entry_ttl=1)
    await table.join(_entry("a"))
    with trio.fail_after(BOUND):
        async with table.watch() as views:
            first = await views.__anext__()
            assert list(first.entries) == ["a"]
            await table.join(_entry("b"))
            second = await views.__anext__()
            assert list(second.entries) == ["a", "b"]
            assert second.version > first.version
            last = second
            async for view in views:  # nobody heartbeats: both rows expire
                assert view.version > last.version
                last = view
                if not view.entries:
                    break
    assert (await table.snapshot()).entries == {}
    # an expired row leaves a marker (an empty value): no row, so a join replaces it
    assert (await table.kv.get(encode_silo_key("a"))).value == b""
    assert await table.read_row(encode_silo_key("a")) is None
    again = await table.join(_entry("a"))
    assert again.version > last.version
    assert (await table.snapshot()).status_of("a") is SiloStatus.JOINING


async def test_services_on_one_connection(js: JetStream) -> None:
    cluster = _cluster()
    table = await KvMembershipTable.open(js, cluster, entry_ttl=TTL)
    other_table = await KvMembershipTable.open(js, cluster, entry_ttl=TTL)  # same bucket
    with trio.fail_after(BOUND):
        async with _service(table, "a") as a, _service(other_table, "b") as b:
            with trio.CancelScope() as crash:
                async with _service(table, "c") as c:
                    for service in (a, b, c):
                        view = await service.wait_view(lambda v: len(v.active()) == 3)
                        assert _active_ids(view) == ["a", "b", "c"]
                    async with _service(table, "d"):  # joins and leaves gracefully
                        await a.wait_view(lambda v: len(v.active()) == 4)
                    await a.wait_view(lambda v: "d" not in v.entries)
                    crash.cancel()  # c stops heartbeating, without leaving
                    await trio.sleep_forever()
            assert (await table.snapshot()).status_of("c") is SiloStatus.ACTIVE
            for service in (a, b):
                await service.wait_view(_gone_or_dead("c"))
            assert a.silos_declared_dead + b.silos_declared_dead >= 1
            await trio.sleep(DEAD_AFTER * 2)
            assert _active_ids(a.view) == ["a", "b"]
            assert not a.declared_dead.is_set()
            assert not b.declared_dead.is_set()
    assert (await table.snapshot()).alive() == []


async def test_silo_declared_dead_by_others_stops(js: JetStream) -> None:
    table = await KvMembershipTable.open(js, _cluster(), entry_ttl=TTL)
    with trio.fail_after(BOUND):
        async with _service(table, "a") as a:
            victim = _service(table, "b")
            with pytest.RaisesGroup(SiloDeclaredDeadError):
                async with victim:
                    await a.wait_view(lambda v: len(v.active()) == 2)
                    await table.set_status("b", SiloStatus.DEAD)
                    await trio.sleep_forever()
            assert victim.declared_dead.is_set()
            assert a.view.status_of("b") is SiloStatus.DEAD


@contextlib.asynccontextmanager
async def _proxied(nats_url: str) -> AsyncIterator[tuple[FreezingRelay, Connection]]:
    async with run_freezing_relay(nats_url) as relay, connect(relay.url, close_timeout=1.0) as nc:
        yield relay, nc


async def test_cut_off_silo_is_declared_dead_and_stops(nats_url: str, js: JetStream) -> None:
    cluster = _cluster()
    table_a = await KvMembershipTable.open(js, cluster, entry_ttl=TTL)
    with trio.fail_after(BOUND * 2):
        async with _service(table_a, "a") as a, _proxied(nats_url) as (proxy, nc_b):
            table_b = await KvMembershipTable.open(nc_b.jetstream(), cluster, entry_ttl=TTL)
            b = _service(table_b, "b")
            with pytest.RaisesGroup(pytest.RaisesExc(SiloDeclaredDeadError, match="presumes")):
                async with b:
                    await a.wait_view(lambda v: len(v.active()) == 2)
                    await b.wait_view(lambda v: len(v.active()) == 2)
                    proxy.freeze()  # b is cut off from NATS
                    await trio.sleep_forever()
            assert b.declared_dead.is_set()
            await a.wait_view(_gone_or_dead("b"))
            assert a.silos_declared_dead == 1
            proxy.thaw()  # b's connection works again: the table tells it it is dead
            with pytest.raises(SiloDeclaredDeadError):
                await table_b.heartbeat("b")
            assert _active_ids(a.view) == ["a"]
