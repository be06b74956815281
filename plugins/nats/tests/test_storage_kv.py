"""The ``nats-kv`` storage provider: the conformance kit, keys, ETags, options, a silo."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import cattrs
import pytest
import trio
from trio_grains_nats import connect
from trio_grains_nats.storage import (
    NatsKvStorage,
    decode_record_key,
    escape_kv_part,
    open_nats_kv_storage,
    parse_storage_options,
    record_key,
    unescape_kv_part,
)
from trio_grains_nats.testing import run_nats_server

from trio_grains import (
    ConfigError,
    Grain,
    GrainId,
    GrainStorage,
    InconsistentStateError,
    ProviderConfig,
    ProviderContext,
    SiloConfig,
    StorageError,
    open_silo,
    persistent_state,
)
from trio_grains._plugins import load_plugins
from trio_grains.testing import check_grain_storage

CONTEXT = ProviderContext("default", "silo-1", "dev", cattrs.Converter())
# nats.go's rule for KV keys (the `nats kv` CLI refuses other keys).
VALID_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
BOUND = 60.0


def _bucket() -> str:
    return "test-" + uuid.uuid4().hex[:12]


def _storage(url: str, bucket: str, **options: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    return open_nats_kv_storage(CONTEXT, {"servers": url, "bucket": bucket, **options})


@pytest.fixture
async def storage(nats_url: str) -> AsyncIterator[NatsKvStorage]:
    async with _storage(nats_url, _bucket(), storage="memory") as provider:
        yield provider


@pytest.fixture(scope="module")
def roomy_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server taking 8 MiB messages: the kit writes 4 MiB states."""
    config = "max_payload: 8388608\n"
    with run_nats_server(tmp_path_factory.mktemp("nats-roomy"), config=config) as url:
        yield url


# --- the storage contract ---------------------------------------------------------------------


async def test_nats_kv_storage_passes_the_storage_kit(roomy_nats_url: str) -> None:
    bucket = _bucket()

    def open_storage() -> contextlib.AbstractAsyncContextManager[GrainStorage]:
        return _storage(roomy_nats_url, bucket)

    with trio.fail_after(120):
        await check_grain_storage(open_storage, durable=True)


async def test_stale_etags_conflict_and_change_nothing(storage: NatsKvStorage) -> None:
    gid = GrainId.create("cart", "bob")
    first = await storage.write("cart", gid, b"v1", None)
    second = await storage.write("cart", gid, b"v2", first)
    assert int(second) > int(first)
    with pytest.raises(InconsistentStateError, match=f"expected ETag '{first}'.*'{second}'"):
        await storage.write("cart", gid, b"v3", first)
    with pytest.raises(InconsistentStateError):
        await storage.write("cart", gid, b"v3", None)
    for bogus in (
        "0",
        "00",
        f"0{second}",
        "-1",
        "abc",
        "",
        "\u0661",
    ):  # never issued (\u0661: Arabic 1)
        with pytest.raises(InconsistentStateError):
            await storage.write("cart", gid, b"v3", bogus)
        with pytest.raises(InconsistentStateError):
            await storage.clear("cart", gid, bogus)
    with pytest.raises(InconsistentStateError):
        await storage.clear("cart", gid, first)
    record = await storage.read("cart", gid)
    assert record is not None
    assert (record.data, record.etag) == (b"v2", second)
    await storage.clear("cart", gid, second)
    assert await storage.read("cart", gid) is None
    with pytest.raises(InconsistentStateError):  # the cleared record's ETag is dead
        await storage.write("cart", gid, b"v4", second)
    third = await storage.write("cart", gid, b"v4", None)  # over the delete marker
    assert int(third) > int(second)


async def test_a_read_after_a_cancelled_write_waits_for_its_ack(nats_url: str) -> None:
    """A write cancelled once it was sent may still be stored; the next read of the key
    must see it, or the write after that (with the read's ETag) would conflict."""
    bucket = _bucket()
    gid = GrainId.create("cart", "cancelled")
    async with _storage(nats_url, bucket, storage="memory") as storage, connect(nats_url) as spy:
        sub = await spy.subscribe(f"$KV.{bucket}.>")
        await spy.flush()
        etag = await storage.write("cart", gid, b"v0", None)
        await sub.next_msg()
        for attempt in range(20):
            data = f"v{attempt + 1}".encode()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_once_sent(scope: trio.CancelScope = scope) -> None:
                        await sub.next_msg()  # the write reached the server
                        scope.cancel()

                    nursery.start_soon(cancel_once_sent)
                    etag = await storage.write("cart", gid, data, etag)
            with trio.fail_after(BOUND):
                record = await storage.read("cart", gid)
            assert record is not None, attempt
            assert record.data == data, (attempt, record)
            etag = record.etag
            etag = await storage.write("cart", gid, data + b"!", etag)
            await sub.next_msg()


async def test_records_sit_under_readable_keys_with_revision_etags(
    storage: NatsKvStorage, nats_url: str
) -> None:
    gid = GrainId.create("cart", "alice")
    etag = await storage.write("cart", gid, b"state", None)
    async with connect(nats_url) as nc:
        kv = await nc.jetstream().key_value(storage.bucket)
        entry = await kv.get("cart.cart/alice")
    assert (entry.value, str(entry.revision)) == (b"state", etag)


# --- keys -------------------------------------------------------------------------------------


AWKWARD_IDS = [
    GrainId.create("cart", "alice"),
    GrainId.create("cart", "Alice"),
    GrainId.create("cart", "a/b/c"),
    GrainId.create("cart", "a.b"),
    GrainId.create("cart", ".leading and trailing."),
    GrainId.create("cart", "a=2Eb"),  # looks like an escape
    GrainId.create("cart", "=2E"),
    GrainId.create("cart", "100%"),
    GrainId.create("cart", "*>$KV"),
    GrainId.create("cart", "unicode ünïcødé 日本語"),
    GrainId.create("cart", "caf\u00e9"),
    GrainId.create("cart", "cafe\u0301"),
    GrainId.create("cart", "emoji 🍕🧑‍🚀"),
    GrainId.create("cart", 42),
    GrainId.create("cart", "2a"),
    GrainId.create("cart", -1),
    GrainId.create("cart", 7, "eu"),
    GrainId.create("cart", 7, "ext/with 'odd' chars 🍕"),
    GrainId.create("cart", uuid.UUID("6f1e4c1a-7b7e-4d8e-9a51-2f3c4d5e6f70")),
    GrainId.create("cart", uuid.UUID(int=1), "ext"),
    GrainId.create("dict`2", "plain"),
    GrainId.create("dict`2", 42),
    GrainId.create("my.type@v=2", "plain"),
]
STATE_NAMES = ["cart", "Cart", "cart.v2", "cart_b", "cart-c", "état", "a=b", "x/y"]


def test_record_keys_are_valid_distinct_and_reversible() -> None:
    keys: dict[str, tuple[str, GrainId]] = {}
    for state in STATE_NAMES:
        for gid in AWKWARD_IDS:
            key = record_key(state, gid)
            assert VALID_KEY.fullmatch(key), key
            assert not key.startswith("."), key
            assert not key.endswith("."), key
            assert key.count(".") == 1, key  # the separator only
            assert decode_record_key(key) == (state, gid)
            assert key not in keys, f"{key!r} is the key of {keys.get(key)} and {(state, gid)}"
            keys[key] = (state, gid)


def test_record_keys_stay_readable_where_they_can() -> None:
    assert record_key("cart", GrainId.create("cart", "alice")) == "cart.cart/alice"
    assert record_key("cart", GrainId.create("cart", "a/b")) == "cart.cart/a/b"
    assert record_key("cart", GrainId.create("dict`2", "a+b")) == "cart.dict=602/a=2Bb"
    assert record_key("cart.v2", GrainId.create("cart", "café")) == "cart=2Ev2.cart/caf=C3=A9"
    assert record_key("cart", GrainId.create("cart", 42)) == "cart.cart/2A"


@pytest.mark.parametrize("text", ["=4", "=4G", "=41", "=2e", "a.b", "=C3", "é", "a b"])
def test_unescaping_refuses_what_escaping_cannot_make(text: str) -> None:
    with pytest.raises(ValueError, match=r"escaped key part|can.t decode"):
        unescape_kv_part(text)


def test_escaping_round_trips_every_kind_of_character() -> None:
    text = "".join(chr(c) for c in range(32, 0x250)) + "日本語🍕=.%"
    escaped = escape_kv_part(text)
    assert VALID_KEY.fullmatch(escaped)
    assert "." not in escaped
    assert unescape_kv_part(escaped) == text


async def test_every_kind_of_key_is_its_own_record(storage: NatsKvStorage) -> None:
    etags = {gid: await storage.write("s.t", gid, str(gid).encode(), None) for gid in AWKWARD_IDS}
    for gid, etag in etags.items():
        record = await storage.read("s.t", gid)
        assert record is not None
        assert (record.data, record.etag) == (str(gid).encode(), etag)


async def test_a_key_too_long_for_a_subject_is_a_storage_error(storage: NatsKvStorage) -> None:
    gid = GrainId.create("cart", "日本語" * 300)  # 8100 escaped characters
    with pytest.raises(StorageError, match="use a shorter grain key"):
        await storage.write("cart", gid, b"x", None)
    assert await storage.write("cart", GrainId.create("cart", "x" * 1000), b"x", None)


async def test_a_state_larger_than_max_payload_is_a_storage_error(
    storage: NatsKvStorage,
) -> None:
    gid = GrainId.create("cart", "big")
    with pytest.raises(StorageError, match="raise max_payload in the nats-server"):
        await storage.write("cart", gid, bytes(storage.nc.max_payload), None)
    assert await storage.read("cart", gid) is None  # nothing written, the connection is fine
    etag = await storage.write("cart", gid, bytes(storage.nc.max_payload - 128), None)
    record = await storage.read("cart", gid)
    assert record is not None
    assert record.etag == etag


# --- grains through a silo --------------------------------------------------------------------


@attrs.define
class VisitsState:
    count: int = 0
    visitors: list[str] = attrs.field(factory=list)


class VisitorGrain(Grain):
    visits = persistent_state(VisitsState)

    async def visit(self, who: str) -> int:
        self.visits.state.count += 1
        self.visits.state.visitors.append(who)
        await self.visits.write()
        return self.visits.state.count

    async def get(self) -> tuple[int, list[str]]:
        return self.visits.state.count, list(self.visits.state.visitors)


async def test_grain_state_survives_a_silo_restart(nats_url: str) -> None:
    options = {"servers": nats_url, "bucket": _bucket()}
    config = SiloConfig(
        storage={"default": ProviderConfig(provider="nats-kv", options=options)},
        response_timeout=BOUND,
    )
    async with open_silo(config, grains=[VisitorGrain]) as silo:
        assert isinstance(silo.provider("storage", "default"), NatsKvStorage)
        assert await silo.get_grain(VisitorGrain, "ada").visit("first") == 1
        assert await silo.get_grain(VisitorGrain, "bob/😀").visit("bob's") == 1
    async with open_silo(config, grains=[VisitorGrain]) as silo:
        assert await silo.get_grain(VisitorGrain, "ada").visit("second") == 2
        assert await silo.get_grain(VisitorGrain, "ada").get() == (2, ["first", "second"])
        assert await silo.get_grain(VisitorGrain, "bob/😀").get() == (1, ["bob's"])
        assert await silo.get_grain(VisitorGrain, "carol").get() == (0, [])


def test_the_plugin_registers_the_nats_kv_provider() -> None:
    plugins = load_plugins()
    assert plugins.storage.get("nats-kv") is open_nats_kv_storage
    assert plugins.storage.plugin_of("nats-kv") == "nats"


# --- options and failures ---------------------------------------------------------------------


def test_options_have_defaults() -> None:
    config = parse_storage_options("default", {})
    assert config.servers == ("nats://127.0.0.1:4222",)
    assert (config.bucket, config.replicas, config.max_bytes) == ("grains-state", 1, -1)
    assert config.storage.value == "file"
    config = parse_storage_options(
        "x", {"servers": "nats://a:1, nats://b:2", "storage": "memory", "max_bytes": 0}
    )
    assert config.servers == ("nats://a:1", "nats://b:2")
    assert (config.storage.value, config.max_bytes) == ("memory", -1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"buckets": "x"},
            r"\[storage.default\] the nats-kv storage provider has no option "
            r"'buckets'; options: bucket, creds, inbox_prefix, max_bytes",
        ),
        ({"bucket": "a.b"}, r"option 'bucket' .* must be a bucket name of ASCII letters"),
        ({"bucket": ""}, "option 'bucket'"),
        ({"replicas": 0}, r"option 'replicas' .* must be an integer from 1 to 5 .*, got 0"),
        ({"replicas": True}, "option 'replicas'"),
        ({"replicas": 6}, "option 'replicas'"),
        ({"storage": "disk"}, r"option 'storage' .* must be the string 'file' or 'memory'"),
        ({"max_bytes": -2}, r"option 'max_bytes' .* must be a number of bytes"),
        ({"max_bytes": 1.5}, "option 'max_bytes'"),
        ({"servers": []}, "option 'servers'"),
        ({"servers": 4222}, "option 'servers' .* must be a server URL"),
        ({"tls_key": "k.pem"}, "option 'tls_key' .* given together with 'tls_cert'"),
    ],
)
async def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_nats_kv_storage(CONTEXT, {"servers": "nats://127.0.0.1:1", **options}):
            pass  # pragma: no cover


async def test_unreachable_server_is_one_clear_error() -> None:
    options = {"servers": ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]}
    with trio.fail_after(BOUND), pytest.raises(ConfigError) as info:
        async with open_nats_kv_storage(CONTEXT, options):
            pass  # pragma: no cover
    message = str(info.value)
    assert "[storage.default] cannot reach a NATS server at nats://127.0.0.1:1, " in message
    assert "start nats-server" in message


async def test_unreachable_server_stops_the_silo_with_that_error() -> None:
    options = {"servers": "nats://127.0.0.1:1"}
    config = SiloConfig(storage={"default": ProviderConfig(provider="nats-kv", options=options)})
    with trio.fail_after(BOUND), pytest.raises(ConfigError) as info:
        async with open_silo(config, grains=[VisitorGrain]):
            pass  # pragma: no cover
    assert "[storage.default] cannot reach a NATS server at nats://127.0.0.1:1" in str(info.value)


async def test_replicas_beyond_the_cluster_are_a_config_error(nats_url: str) -> None:
    with pytest.raises(ConfigError) as info:  # one error, not a group
        async with _storage(nats_url, _bucket(), replicas=3):
            pass  # pragma: no cover
    message = str(info.value)
    assert message.startswith("[storage.default] cannot create the NATS KV bucket 'test-")
    assert "replicas > 1 not supported" in message


async def test_an_existing_bucket_is_used_as_it_is(nats_url: str) -> None:
    bucket = _bucket()
    async with connect(nats_url) as nc:
        kv = await nc.jetstream().create_key_value(bucket, history=5, allow_msg_ttl=False)
        revision = await kv.put("cart.cart/alice", b"from the cli")
    async with _storage(nats_url, bucket) as storage:
        record = await storage.read("cart", GrainId.create("cart", "alice"))
        assert record is not None
        assert (record.data, record.etag) == (b"from the cli", str(revision))


async def test_an_error_in_the_block_comes_out_as_it_was(nats_url: str) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with _storage(nats_url, _bucket(), storage="memory"):
            raise KeyError("mine")


async def test_calls_after_the_provider_closed_are_storage_errors(nats_url: str) -> None:
    async with _storage(nats_url, _bucket(), storage="memory") as storage:
        pass
    with pytest.raises(StorageError, match="connection is closed"):
        await storage.read("cart", GrainId.create("cart", "alice"))
    with pytest.raises(StorageError, match="connection is closed"):
        await storage.write("cart", GrainId.create("cart", "alice"), b"x", None)


async def test_a_deleted_bucket_is_an_error_not_a_missing_record(
    storage: NatsKvStorage, nats_url: str
) -> None:
    gid = GrainId.create("cart", "alice")
    await storage.write("cart", gid, b"x", None)
    async with connect(nats_url) as nc:
        await nc.jetstream().delete_stream(f"KV_{storage.bucket}")
    with pytest.raises(StorageError, match=storage.bucket):
        await storage.read("cart", gid)
    with pytest.raises(StorageError, match=storage.bucket):
        await storage.write("cart", gid, b"y", None)
