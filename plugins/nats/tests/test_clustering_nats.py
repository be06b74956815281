"""The ``nats`` clustering provider: transport conformance, options, shared tables."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import cattrs
import pytest
import trio
from nats.js.api import StorageType
from trio_grains_nats import connect
from trio_grains_nats.clustering import (
    RECEIVE_BATCH,
    NatsCluster,
    NatsTransport,
    open_nats_cluster,
    parse_cluster_options,
)
from trio_grains_nats.testing import run_nats_server

from trio_grains import (
    ClusterBackend,
    ConfigError,
    DirectoryEntry,
    GrainId,
    MessageTooLargeError,
    ProviderContext,
    SiloEntry,
    SiloStatus,
    TransportClosedError,
    TransportError,
)
from trio_grains._plugins import load_plugins
from trio_grains.testing import check_transport

BOUND = 20.0


def _cluster_id() -> str:
    return "c" + uuid.uuid4().hex[:10]


def _context(cluster_id: str = "dev", silo: str = "silo-1") -> ProviderContext:
    return ProviderContext("clustering", silo, cluster_id, cattrs.Converter())


def _options(nats_url: str, **more: Any) -> dict[str, Any]:
    return {"servers": nats_url, "storage": "memory", **more}


async def test_nats_cluster_passes_the_transport_kit(nats_url: str) -> None:
    cluster_id = _cluster_id()
    silos = iter(range(1000))

    def open_backend() -> contextlib.AbstractAsyncContextManager[ClusterBackend]:
        return open_nats_cluster(_context(cluster_id, f"silo-{next(silos)}"), _options(nats_url))

    with trio.fail_after(120):
        await check_transport(open_backend)


async def test_addresses_and_endpoint_ids(nats_url: str) -> None:
    options = _options(nats_url, subject_prefix="app.grains")
    async with open_nats_cluster(_context(_cluster_id()), options) as cluster:
        assert isinstance(cluster, NatsCluster)
        for endpoint_id in ["", "a.b", "* >", "=", "10.0.0.1:1@7", "ünï"]:
            address = cluster.address_of(endpoint_id)
            head, token = address.rsplit(".", 1)
            assert head == "app.grains.silo"
            assert token
            assert not any(c in token for c in ".*> \t")
            assert cluster.endpoint_id_of(address) == endpoint_id
        assert cluster.endpoint_id_of("other.silo.x") is None
        assert cluster.endpoint_id_of("app.grains.silo.a.b") is None
        async with cluster.open_endpoint("") as empty:
            assert isinstance(empty, NatsTransport)
            assert empty.address == "app.grains.silo.="
            assert empty.max_message_size == cluster.nc.max_payload
            await empty.send(empty.address, b"empty id works")
            assert await empty.receive() == b"empty id works"
            with pytest.raises(TransportError, match="already open"):
                async with cluster.open_endpoint(""):
                    pass  # pragma: no cover
            with pytest.raises(MessageTooLargeError, match="max_payload"):
                empty.send_nowait(empty.address, b"x" * (empty.max_message_size + 1))
        async with cluster.open_endpoint(""):  # free again once closed
            pass


async def test_an_endpoint_hands_out_bounded_batches_in_order(nats_url: str) -> None:
    async with (
        open_nats_cluster(_context(_cluster_id()), _options(nats_url)) as cluster,
        cluster.open_endpoint("a") as a,
        cluster.open_endpoint("b") as b,
    ):
        sent = [b"%d" % i for i in range(RECEIVE_BATCH * 2 + 5)]
        for message in sent:
            a.send_nowait(b.address, message)
        got: list[bytes] = []
        with trio.fail_after(BOUND):
            while len(got) < len(sent):
                batch = await b.receive_batch()
                assert 0 < len(batch) <= RECEIVE_BATCH
                got += batch
        assert got == sent


async def test_default_subject_prefix_is_per_cluster(nats_url: str) -> None:
    cluster_id = _cluster_id()
    async with (
        open_nats_cluster(_context(cluster_id), _options(nats_url)) as cluster,
        cluster.open_endpoint("s1") as endpoint,
    ):
        assert endpoint.address == f"grains.{cluster_id}.silo.s1"


async def test_two_backends_share_membership_and_directory(nats_url: str) -> None:
    cluster_id = _cluster_id()
    options = _options(nats_url)
    async with (
        open_nats_cluster(_context(cluster_id, "one"), options) as one,
        open_nats_cluster(_context(cluster_id, "two"), options) as two,
    ):
        assert one.nc is not two.nc
        row = SiloEntry("one", "grains.x.silo.one", grain_types=["cart"], load=2)
        await one.membership.join(row)
        await two.membership.join(SiloEntry("two", "grains.x.silo.two"))
        await two.membership.set_status("one", SiloStatus.ACTIVE)
        view = await one.membership.snapshot()
        assert sorted(view.entries) == ["one", "two"]
        seen = view.get("one")
        assert seen is not None
        assert (seen.status, seen.grain_types, seen.load) == (
            SiloStatus.ACTIVE,
            frozenset({"cart"}),
            2,
        )
        grain = GrainId.create("cart", "alice")
        stored = await one.directory.register(DirectoryEntry.new(grain, "one"))
        lost = await two.directory.register(DirectoryEntry.new(grain, "two"))
        assert lost == stored
        assert await two.directory.lookup(grain) == stored
        assert await two.directory.remove_silo("one") == 1
        assert await one.directory.lookup(grain) is None
    async with open_nats_cluster(_context(_cluster_id()), options) as other:
        assert (await other.membership.snapshot()).entries == {}  # clusters are separate


async def test_lost_connection_closes_the_endpoint(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(run_nats_server(tmp_path))
        stop_server = stack.pop_all().close
        async with connect(url, reconnect=False) as nc:
            cluster = await NatsCluster.open(nc, _cluster_id(), storage=StorageType.MEMORY)
            async with cluster.open_endpoint("s1") as endpoint:
                await trio.to_thread.run_sync(stop_server)
                with trio.fail_after(BOUND), pytest.raises(TransportClosedError, match="s1"):
                    await endpoint.receive()
                with pytest.raises(TransportClosedError):
                    await endpoint.send(endpoint.address, b"x")
                with pytest.raises(TransportClosedError):
                    endpoint.send_nowait(endpoint.address, b"x")


# --- options --------------------------------------------------------------------------------


def test_option_defaults() -> None:
    config = parse_cluster_options("prod", {})
    assert config.servers == ("nats://127.0.0.1:4222",)
    assert config.subject_prefix == "grains.prod"
    assert (config.replicas, config.storage, config.entry_ttl) == (1, StorageType.FILE, 30.0)
    assert config.tls_context() is None
    config = parse_cluster_options(
        "prod",
        {
            "servers": ["nats://a:4222", "nats://b:4222"],
            "subject_prefix": "x.y",
            "replicas": 3,
            "storage": "memory",
            "entry_ttl": 5,
            "user": "u",
            "password": "p",
        },
    )
    assert config.servers == ("nats://a:4222", "nats://b:4222")
    assert (config.subject_prefix, config.replicas, config.storage) == ("x.y", 3, "memory")
    assert (config.entry_ttl, config.user, config.password) == (5.0, "u", "p")
    assert parse_cluster_options("p", {"servers": "nats://a, nats://b"}).servers == (
        "nats://a",
        "nats://b",
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"servers": 5}, r"'servers'.*server URL"),
        ({"servers": []}, "'servers'"),
        ({"servers": ""}, "'servers'"),
        ({"servers": ["nats://a", 1]}, "'servers'"),
        ({"subject_prefix": "a..b"}, "'subject_prefix'"),
        ({"subject_prefix": "a.*"}, "'subject_prefix'"),
        ({"subject_prefix": 7}, "'subject_prefix'"),
        ({"replicas": 0}, r"'replicas'.*integer"),
        ({"replicas": "3"}, r"'replicas'.*integer"),
        ({"replicas": True}, "'replicas'"),
        ({"storage": "disk"}, r"'storage'.*'file' or 'memory'"),
        ({"storage": ["file"]}, "'storage'"),
        ({"entry_ttl": 0}, r"'entry_ttl'.*positive number"),
        ({"entry_ttl": "30s"}, "'entry_ttl'"),
        ({"entry_ttl": False}, "'entry_ttl'"),
        ({"user": 3}, r"'user'.*string"),
        ({"creds": ""}, "'creds'"),
        ({"tls_key": "k.pem"}, "'tls_key'"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_cluster_options("dev", options)


def test_unknown_option_names_the_key_and_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="no option 'partitions'") as info:
        parse_cluster_options("dev", {"partitions": 8})
    for key in ("servers", "subject_prefix", "replicas", "storage", "entry_ttl", "creds"):
        assert key in str(info.value)


def test_bad_cluster_id() -> None:
    with pytest.raises(ConfigError, match="cluster name"):
        parse_cluster_options("a.b", {})


async def test_options_are_validated_before_connecting() -> None:
    with pytest.raises(ConfigError, match="'replicas'"):
        async with open_nats_cluster(_context(), {"servers": "nats://127.0.0.1:1", "replicas": 0}):
            pass  # pragma: no cover


async def test_unreachable_server_says_what_to_do() -> None:
    options = {"servers": ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]}
    with pytest.raises(ConfigError) as info:
        async with open_nats_cluster(_context(), options):
            pass  # pragma: no cover
    message = str(info.value)
    assert "nats://127.0.0.1:1, nats://127.0.0.1:2" in message
    assert "start nats-server" in message
    assert "[clustering] options servers" in message


def test_the_plugin_registers_the_nats_provider() -> None:
    plugins = load_plugins()
    assert plugins.clustering.get("nats") is open_nats_cluster
    assert plugins.clustering.plugin_of("nats") == "nats"
