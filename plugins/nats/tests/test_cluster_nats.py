"""Silos of one cluster over a real nats-server (in one Trio run): calls, races, failures."""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio
from trio_grains_nats.testing import run_freezing_relay

from trio_grains import (
    ClientConfig,
    Grain,
    ProviderConfig,
    SiloConfig,
    SiloDeclaredDeadError,
    implicit_subscription,
    open_client,
)
from trio_grains.testing import open_test_cluster

ACTIVATIONS: Counter[str] = Counter()


class TallyGrain(Grain):
    def __init__(self) -> None:
        self.count = 0

    async def on_activate(self) -> None:
        ACTIVATIONS[str(self.grain_id)] += 1

    async def add(self, n: int) -> int:
        self.count += n
        return self.count

    async def where(self) -> str:
        return self.runtime_identity


@pytest.fixture(autouse=True)
def _reset() -> None:
    ACTIVATIONS.clear()


def nats_clustering(url: str) -> tuple[ProviderConfig, SiloConfig]:
    # a cluster id of its own per test: buckets and subjects do not mix between tests
    config = SiloConfig(
        cluster_id=f"t{uuid.uuid4().hex[:8]}", heartbeat_interval=0.2, dead_after=1.0
    )
    return ProviderConfig(provider="nats", options={"servers": url}), config


async def test_a_cluster_over_nats_activates_each_grain_once(nats_url: str) -> None:
    clustering, config = nats_clustering(nats_url)
    async with open_test_cluster(
        3, grains=[TallyGrain], clustering=clustering, config=config
    ) as cluster:
        refs = [cluster.get_grain(TallyGrain, f"g{i}") for i in range(200)]
        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(ref.add, 1)
        where = Counter([await ref.where() for ref in refs])
        assert len(where) == 3
        assert set(ACTIVATIONS.values()) == {1}
        assert len(ACTIVATIONS) == 200

        results: list[int] = []

        async def first_call(i: int) -> None:
            silo = cluster.silos[i % 3]
            results.append(await silo.get_grain(TallyGrain, "contended").add(1))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(first_call, i)
        assert ACTIVATIONS["tally/contended"] == 1
        assert sorted(results) == list(range(1, 51))


async def test_a_killed_silo_is_declared_dead_and_its_grains_move(nats_url: str) -> None:
    clustering, config = nats_clustering(nats_url)
    async with open_test_cluster(
        3, grains=[TallyGrain], clustering=clustering, config=config
    ) as cluster:
        refs = [cluster.get_grain(TallyGrain, f"k{i}") for i in range(60)]
        before = {ref: await ref.where() for ref in refs}
        victim = cluster.silos[0]
        moved = [ref for ref, silo in before.items() if silo == victim.silo_id]
        assert moved
        await cluster.kill_silo(victim)
        start = trio.current_time()
        with trio.fail_after(config.dead_after * 5):
            await cluster.wait_for_active(2)
        detected = trio.current_time() - start
        assert detected < config.dead_after * 5
        for ref in moved:
            assert await ref.where() != victim.silo_id
            assert await ref.add(1) == 1  # a fresh activation (in-memory state)
        assert max(ACTIVATIONS.values()) <= 2


async def test_a_silo_cut_off_from_nats_stops_serving_and_its_grains_move(nats_url: str) -> None:
    clustering, config = nats_clustering(nats_url)
    async with (
        run_freezing_relay(nats_url) as relay,
        open_test_cluster(2, grains=[TallyGrain], clustering=clustering, config=config) as cluster,
    ):
        isolated = await cluster.start_silo(
            clustering=ProviderConfig(provider="nats", options={"servers": relay.url})
        )
        await cluster.wait_for_active(3)
        refs = [cluster.silos[0].get_grain(TallyGrain, f"c{i}") for i in range(40)]
        on_isolated = [ref for ref in refs if await ref.where() == isolated.silo_id]
        assert on_isolated
        relay.freeze()
        with trio.fail_after(config.dead_after * 10):
            await cluster.wait_for_active(2)
            while isolated.silo_id not in cluster.stopped:  # noqa: ASYNC110 - polling
                await trio.sleep(0.05)
        assert isinstance(cluster.stopped[isolated.silo_id], SiloDeclaredDeadError)
        assert isolated not in cluster.silos
        for ref in on_isolated:
            assert await ref.where() != isolated.silo_id
        relay.thaw()


# --- streams across silos ---------------------------------------------------------------------

SEEN: dict[str, list[int]] = {}
SEEN_ON: dict[str, set[str]] = {}


@implicit_subscription("clorders")
class ClOrderGrain(Grain):
    async def on_stream_item(self, item: int) -> None:
        key = self.primary_key
        SEEN.setdefault(key, []).append(item)
        SEEN_ON.setdefault(key, set()).add(self.runtime_identity)


async def test_stream_partitions_spread_over_silos_and_move_without_loss(nats_url: str) -> None:
    SEEN.clear()
    SEEN_ON.clear()
    clustering, config = nats_clustering(nats_url)
    tag = uuid.uuid4().hex[:8]
    streams = {
        "default": ProviderConfig(
            provider="jetstream",
            options={"servers": [nats_url], "prefix": f"t{tag}", "partitions": 6, "ack_wait": 2},
        )
    }
    config = attrs.evolve(config, streams=streams)
    keys = [f"o{i}" for i in range(12)]
    async with open_test_cluster(
        2, grains=[ClOrderGrain], clustering=clustering, config=config, client=False
    ) as cluster:
        client_config = ClientConfig(
            cluster_id=config.cluster_id, clustering=clustering, streams=streams
        )
        async with open_client(client_config) as client:
            provider = client.get_stream_provider()
            sent = 0

            async def publish(rounds: int) -> None:
                nonlocal sent
                for _ in range(rounds):
                    for key in keys:
                        await provider.get_stream("clorders", key).publish(sent)
                    sent += 1
                    await trio.sleep(0.01)

            await publish(10)
            with trio.fail_after(20):
                while True:  # a partition moving between silos is pulled by neither
                    owned = [
                        s.get_stream_provider().statistics().owned_partitions for s in cluster.silos
                    ]
                    assert not owned[0] & owned[1]
                    if owned[0] | owned[1] == set(range(6)):
                        break
                    await trio.sleep(0.05)
            newcomer = await cluster.start_silo()
            await publish(20)
            victim = cluster.silos[0]
            await cluster.kill_silo(victim)
            await publish(20)
            with trio.fail_after(30):
                while any(len(set(SEEN.get(k, []))) < sent for k in keys):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            with trio.fail_after(30):  # the newcomer takes its share (on a loaded machine,
                # perhaps only after the survivors processed everything)
                while not newcomer.get_stream_provider().statistics().owned_partitions:  # noqa: ASYNC110
                    await trio.sleep(0.05)
    for key in keys:
        items = SEEN[key]
        assert set(items) == set(range(sent))  # every item at least once
        # per-key order, even across the kill (the dead silo's items come back first)
        firsts = sorted(set(items), key=items.index)
        assert firsts == sorted(firsts), f"{key}: {items}"


async def test_the_client_command_lists_silos_calls_grains_and_publishes(
    nats_url: str, tmp_path: Path
) -> None:
    SEEN.clear()
    clustering, config = nats_clustering(nats_url)
    tag = uuid.uuid4().hex[:8]
    stream_options = {"servers": [nats_url], "prefix": f"t{tag}", "partitions": 2}
    streams = {"default": ProviderConfig(provider="jetstream", options=stream_options)}
    config = attrs.evolve(config, streams=streams)
    client_toml = tmp_path / "client.toml"
    client_toml.write_text(
        f'cluster_id = "{config.cluster_id}"\n'
        f'[clustering]\nprovider = "nats"\noptions = {{ servers = ["{nats_url}"] }}\n'
        f'[streams.default]\nprovider = "jetstream"\n'
        f'options = {{ servers = ["{nats_url}"], prefix = "t{tag}", partitions = 2 }}\n'
    )

    async def cli(*args: str) -> str:
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "trio_grains.cli",
                "client",
                "--config",
                str(client_toml),
                *args,
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    async with open_test_cluster(
        2, grains=[TallyGrain, ClOrderGrain], clustering=clustering, config=config, client=False
    ) as cluster:
        listing = await cli("silos")
        assert all(s.silo_id in listing for s in cluster.silos)
        assert listing.count(" active ") == 2
        assert "active silos: 2" in await cli("stats")
        assert (await cli("call", "tally/x", "add", '{"n": 2}')).strip() == "2"
        assert (await cli("call", "tally/x", "add", '{"n": 3}')).strip() == "5"
        assert "published to clorders/o9" in await cli("publish", "clorders", "o9", "41")
        with trio.fail_after(20):
            while SEEN.get("o9") != [41]:  # noqa: ASYNC110 - polling the grain's record
                await trio.sleep(0.05)
        bad = await trio.run_process(
            [
                sys.executable,
                "-m",
                "trio_grains.cli",
                "client",
                "--config",
                str(client_toml),
                "call",
                "tally/x",
                "add",
                "not json",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert bad.returncode == 2
        assert bad.stderr.decode().startswith("trio-grains: error: the arguments 'not json'")
