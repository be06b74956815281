"""The ``nats-kv`` reminder table: the conformance kit, keys, ETags, scans, options, a silo."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import cattrs
import pytest
import trio
from trio_grains_nats import connect
from trio_grains_nats.reminders import (
    NatsKvReminderTable,
    decode_reminder_key,
    open_nats_kv_reminder_table,
    parse_reminder_options,
    reminder_key,
)

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    ProviderConfig,
    ProviderContext,
    ReminderEntry,
    ReminderTable,
    SiloConfig,
    StorageError,
    TickStatus,
    open_silo,
)
from trio_grains._plugins import load_plugins
from trio_grains.testing import check_reminder_table

CONTEXT = ProviderContext("default", "silo-1", "dev", cattrs.Converter())
VALID_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")  # nats.go's rule for KV keys
BOUND = 60.0
START = 1_700_000_000.25


def _bucket() -> str:
    return "test-rem-" + uuid.uuid4().hex[:12]


def _table(
    url: str, bucket: str, **options: Any
) -> contextlib.AbstractAsyncContextManager[NatsKvReminderTable]:
    return open_nats_kv_reminder_table(CONTEXT, {"servers": url, "bucket": bucket, **options})


@pytest.fixture
async def table(nats_url: str) -> AsyncIterator[NatsKvReminderTable]:
    async with _table(nats_url, _bucket(), storage="memory") as opened:
        yield opened


# --- the reminder-table contract --------------------------------------------------------------


async def test_nats_kv_reminder_table_passes_the_kit(nats_url: str) -> None:
    bucket = _bucket()

    def open_table() -> contextlib.AbstractAsyncContextManager[ReminderTable]:
        return _table(nats_url, bucket)

    with trio.fail_after(120):
        await check_reminder_table(open_table, durable=True)


async def test_rows_sit_under_readable_keys_with_revision_etags(
    table: NatsKvReminderTable, nats_url: str
) -> None:
    gid = GrainId.create("counter", "alice")
    etag = await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    async with connect(nats_url) as nc:
        kv = await nc.jetstream().key_value(table.bucket)
        entry = await kv.get("counter/alice.tick")
    assert str(entry.revision) == etag
    assert entry.value == b'{"start_at":1700000000.25,"period":60.0}'


async def test_bogus_and_stale_etags_remove_nothing(table: NatsKvReminderTable) -> None:
    gid = GrainId.create("counter", "bob")
    first = await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    second = await table.upsert(ReminderEntry(gid, "tick", START, 90.0))
    assert int(second) > int(first)
    for bogus in ("0", "00", f"0{second}", "-1", "abc", "", "\u0661", first):
        assert await table.remove(gid, "tick", bogus) is False
    row = await table.read(gid, "tick")
    assert row is not None
    assert (row.period, row.etag) == (90.0, second)
    assert await table.remove(gid, "tick", second) is True
    # the delete marker's revision is no ETag of a row
    marker = int(second) + 1
    assert await table.remove(gid, "tick", str(marker)) is False
    assert await table.read(gid, "tick") is None


# --- keys -------------------------------------------------------------------------------------


AWKWARD_IDS = [
    GrainId.create("counter", "alice"),
    GrainId.create("counter", "Alice"),
    GrainId.create("counter", "a/b/c"),
    GrainId.create("counter", "a.b"),
    GrainId.create("counter", "a"),
    GrainId.create("counter", ".leading and trailing."),
    GrainId.create("counter", "a=2Eb"),
    GrainId.create("counter", "*>$KV"),
    GrainId.create("counter", "*"),
    GrainId.create("counter", ">"),
    GrainId.create("counter", "unicode ünïcødé 日本語 🍕"),
    GrainId.create("counter", 42),
    GrainId.create("counter", 7, "ext/with 'odd' chars"),
    GrainId.create("counter", uuid.UUID(int=1), "ext"),
    GrainId.create("dict`2", "plain"),
    GrainId.create("my.type@v=2", "plain"),
]
NAMES = ["tick", "Tick", "a.b", "*", ">", "with space", "ünï 🍕", "=2E"]


def test_reminder_keys_are_valid_distinct_and_reversible() -> None:
    keys: dict[str, tuple[GrainId, str]] = {}
    for gid in AWKWARD_IDS:
        for name in NAMES:
            key = reminder_key(gid, name)
            assert VALID_KEY.fullmatch(key), key
            assert not key.startswith("."), key
            assert not key.endswith("."), key
            assert key.count(".") == 1, key  # the separator only
            assert decode_reminder_key(key) == (gid, name)
            assert key not in keys, f"{key!r} is the key of {keys.get(key)} and {(gid, name)}"
            keys[key] = (gid, name)
    assert reminder_key(GrainId.create("counter", "alice"), "tick") == "counter/alice.tick"
    with pytest.raises(ValueError, match="must not be empty"):
        reminder_key(GrainId.create("counter", "alice"), "")
    for bad in ("nodot", ".tick", "counter/alice.", "counter/alice.=41"):
        with pytest.raises(ValueError, match=r"reminder key|escaped key part"):
            decode_reminder_key(bad)


async def test_read_grain_returns_only_that_grains_rows(table: NatsKvReminderTable) -> None:
    for gid in AWKWARD_IDS:
        for name in NAMES:
            await table.upsert(ReminderEntry(gid, name, START, 60.0))
    for gid in AWKWARD_IDS:
        rows = await table.read_grain(gid)
        assert {row.grain_id for row in rows} == {gid}
        assert sorted(row.name for row in rows) == sorted(NAMES)
    every = await table.read_all()
    assert len(every) == len(AWKWARD_IDS) * len(NAMES)


async def test_a_key_too_long_for_a_subject_is_a_storage_error(
    table: NatsKvReminderTable,
) -> None:
    gid = GrainId.create("counter", "日本語" * 300)  # 8100 escaped characters
    with pytest.raises(StorageError, match="use a shorter grain key"):
        await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    assert await table.read_grain(gid) == []
    assert await table.upsert(ReminderEntry(GrainId.create("c", "x" * 1000), "t", START, 60.0))


# --- scans ------------------------------------------------------------------------------------


async def test_scans_of_an_empty_bucket_and_of_removed_rows(table: NatsKvReminderTable) -> None:
    gid = GrainId.create("counter", "alice")
    with trio.fail_after(10):
        assert await table.read_all() == []
        assert await table.read_grain(gid) == []
        await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
        assert await table.remove(gid, "tick", None) is True
        assert await table.read_all() == []  # only a delete marker is left
        assert await table.read_grain(gid) == []


async def test_read_all_sees_every_row_while_rows_are_rewritten(
    table: NatsKvReminderTable,
) -> None:
    gids = [GrainId.create("counter", f"g{i}") for i in range(100)]
    for gid in gids:
        await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def rewrite() -> None:
                for round_ in range(5):
                    for gid in gids:
                        await table.upsert(ReminderEntry(gid, "tick", START, 61.0 + round_))

            nursery.start_soon(rewrite)
            for _ in range(10):
                rows = await table.read_all()
                assert sorted(str(row.grain_id) for row in rows) == sorted(map(str, gids))


async def test_foreign_keys_are_skipped_and_bad_values_are_errors(
    table: NatsKvReminderTable, nats_url: str
) -> None:
    gid = GrainId.create("counter", "alice")
    etag = await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    async with connect(nats_url) as nc:
        kv = await nc.jetstream().key_value(table.bucket)
        await kv.put("not-a-reminder-key", b"{}")
        await kv.put("counter/alice.broken", b"not json")
        await kv.put("counter/alice.nan", b'{"start_at": NaN, "period": 60}')
    rows = await table.read_all()
    assert [(row.grain_id, row.name, row.etag) for row in rows] == [(gid, "tick", etag)]
    assert [row.name for row in await table.read_grain(gid)] == ["tick"]
    with pytest.raises(StorageError, match="holds no reminder"):
        await table.read(gid, "broken")


# --- a silo -----------------------------------------------------------------------------------


TICKS: list[tuple[str, str]] = []
TICKED: dict[str, trio.Event] = {}  # grain key -> set at its first tick


class PingGrain(Grain):
    async def start(self, due: float, period: float) -> None:
        await self.register_reminder("ping", due=due, period=period)

    async def names(self) -> list[str]:
        return [r.name for r in await self.get_reminders()]

    async def stop(self) -> bool:
        return await self.unregister_reminder("ping")

    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        TICKS.append((self.grain_id.key, name))
        if self.grain_id.key in TICKED:
            TICKED[self.grain_id.key].set()


async def test_a_reminder_survives_a_silo_restart(nats_url: str) -> None:
    options = {"servers": nats_url, "bucket": _bucket(), "storage": "memory"}
    config = SiloConfig(
        reminders=ProviderConfig(provider="nats-kv", options=options),
        minimum_reminder_period=1.0,
        response_timeout=BOUND,
    )
    key = "ada-" + uuid.uuid4().hex[:6]
    gid = GrainId.create("ping", key)
    ticked = TICKED[key] = trio.Event()
    with trio.fail_after(BOUND):
        async with open_silo(config, grains=[PingGrain]) as silo:
            table = silo.provider("reminders", "default")
            assert isinstance(table, NatsKvReminderTable)
            await silo.get_grain(PingGrain, key).start(3.0, 1.0)
            (row,) = await table.read_grain(gid)
        assert (key, "ping") not in TICKS  # closed before the first tick
        async with open_silo(config, grains=[PingGrain]) as silo:
            table = silo.provider("reminders", "default")
            assert await table.read(gid, "ping") == row  # same row, same ETag
            assert await silo.get_grain(PingGrain, key).names() == ["ping"]
            await ticked.wait()  # fired by the new silo
            assert await silo.get_grain(PingGrain, key).stop() is True
            assert await table.read_grain(gid) == []
        async with open_silo(config, grains=[PingGrain]) as silo:
            assert await silo.get_grain(PingGrain, key).names() == []


def test_the_plugin_registers_the_nats_kv_reminder_table() -> None:
    plugins = load_plugins()
    assert plugins.reminders.get("nats-kv") is open_nats_kv_reminder_table
    assert plugins.reminders.plugin_of("nats-kv") == "nats"


# --- options and failures ---------------------------------------------------------------------


def test_options_have_defaults() -> None:
    config = parse_reminder_options({})
    assert config.servers == ("nats://127.0.0.1:4222",)
    assert (config.bucket, config.replicas, config.storage.value) == ("grains-reminders", 1, "file")
    config = parse_reminder_options(
        {"servers": "nats://a:1, nats://b:2", "storage": "memory", "replicas": 3, "bucket": "r"}
    )
    assert config.servers == ("nats://a:1", "nats://b:2")
    assert (config.bucket, config.replicas, config.storage.value) == ("r", 3, "memory")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"buckets": "x"},
            r"\[reminders\] the nats-kv reminder table has no option 'buckets'; "
            r"options: bucket, creds, inbox_prefix, nkeys_seed",
        ),
        ({"max_bytes": 10}, "has no option 'max_bytes'"),
        ({"bucket": "a.b"}, r"\[reminders\] option 'bucket' .* must be a bucket name of ASCII"),
        ({"bucket": ""}, "option 'bucket'"),
        ({"bucket": 7}, "option 'bucket'"),
        ({"replicas": 0}, r"option 'replicas' .* must be an integer from 1 to 5 .*, got 0"),
        ({"replicas": True}, "option 'replicas'"),
        ({"replicas": 6}, "option 'replicas'"),
        ({"storage": "disk"}, r"option 'storage' .* must be the string 'file' or 'memory'"),
        ({"servers": []}, "option 'servers'"),
        ({"servers": 4222}, "option 'servers' .* must be a server URL"),
        ({"tls_key": "k.pem"}, "option 'tls_key' .* given together with 'tls_cert'"),
    ],
)
async def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_nats_kv_reminder_table(
            CONTEXT, {"servers": "nats://127.0.0.1:1", **options}
        ):
            pass  # pragma: no cover


async def test_unreachable_server_is_one_clear_error() -> None:
    with trio.fail_after(BOUND), pytest.raises(ConfigError) as info:
        async with open_nats_kv_reminder_table(CONTEXT, {"servers": "nats://127.0.0.1:1"}):
            pass  # pragma: no cover
    message = str(info.value)
    assert "[reminders] cannot reach a NATS server at nats://127.0.0.1:1" in message
    assert "start nats-server" in message


async def test_unreachable_server_stops_the_silo_with_that_error() -> None:
    options = {"servers": "nats://127.0.0.1:1"}
    config = SiloConfig(reminders=ProviderConfig(provider="nats-kv", options=options))
    with trio.fail_after(BOUND), pytest.raises(ConfigError) as info:
        async with open_silo(config, grains=[PingGrain]):
            pass  # pragma: no cover
    assert "[reminders] cannot reach a NATS server at nats://127.0.0.1:1" in str(info.value)


async def test_replicas_beyond_the_cluster_are_a_config_error(nats_url: str) -> None:
    with pytest.raises(ConfigError) as info:  # one error, not a group
        async with _table(nats_url, _bucket(), replicas=3):
            pass  # pragma: no cover
    message = str(info.value)
    assert message.startswith("[reminders] cannot create the NATS KV bucket 'test-rem-")
    assert "replicas > 1 not supported" in message


async def test_an_existing_bucket_is_used_as_it_is(nats_url: str) -> None:
    bucket = _bucket()
    async with connect(nats_url) as nc:
        kv = await nc.jetstream().create_key_value(bucket, history=5, allow_msg_ttl=False)
        revision = await kv.put("counter/alice.tick", b'{"start_at": 5, "period": 60}')
    async with _table(nats_url, bucket) as table:
        row = await table.read(GrainId.create("counter", "alice"), "tick")
        assert row == ReminderEntry(
            GrainId.create("counter", "alice"), "tick", 5.0, 60.0, str(revision)
        )


async def test_an_error_in_the_block_comes_out_as_it_was(nats_url: str) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with _table(nats_url, _bucket(), storage="memory"):
            raise KeyError("mine")


async def test_calls_after_the_table_closed_are_storage_errors(nats_url: str) -> None:
    async with _table(nats_url, _bucket(), storage="memory") as table:
        pass
    gid = GrainId.create("counter", "alice")
    with pytest.raises(StorageError, match="connection is closed"):
        await table.read(gid, "tick")
    with pytest.raises(StorageError, match="connection is closed"):
        await table.upsert(ReminderEntry(gid, "tick", START, 60.0))
    with pytest.raises(StorageError, match="connection is closed"):
        await table.read_all()
