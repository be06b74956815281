"""Stream partitions moving between real silo processes over a real nats-server, through
the ``jetstream`` stream provider. No mocks.

Two silo processes (``_stream_silo.py``, grain in ``_stream_grains.py``) pull the 16
partitions of a JetStream stream; the test process publishes, through a client, rounds of
items ``0, 1, 2, ...`` to each of 20 keys of namespace ``nums``; an implicitly subscribed
stateless worker (so the pulling silo is the one that handles) holds each item 20 ms,
then appends (key, item, silo, time) to its process's file, before the item is
acknowledged. While the rounds go on, a third silo process joins (partitions move to it
gracefully), then one of the first two is killed with ``SIGKILL`` while it holds items
(its partitions are taken over ``dead_after`` + ``ack_wait + 1`` s later). Then every
item published was handled at least once, in publish order per key (counting first
deliveries: duplicates are allowed), by the silos that pulled its partition at the time,
and nothing on the killed silo after the kill.

``ack_wait`` (5 s) exceeds ``dead_after`` (3 s) so that the killed silo's items are still
unacknowledged when the survivors find it dead: without the takeover delay, the new owner
would handle newer items of their keys first, and the order check fails (it did, with the
delay set to 0).

The processes talk to the test through files in ``tmp_path`` and log there too; the logs
are printed when the test fails.
"""

from __future__ import annotations

import collections
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import trio
from _processes import Processes, processes, read_if_exists

from trio_grains import ClientConfig, StreamId, open_client, partition_for
from trio_grains._cluster.ownership import owned_partitions

HERE = Path(__file__).parent
SILO_SCRIPT = HERE / "_stream_silo.py"

HEARTBEAT = 0.5
DEAD_AFTER = 3.0
# ack_wait > dead_after: see the module's docstring
ACK_WAIT = 5
PARTITIONS = 16  # the 20 keys fall in all 16
KEYS = [f"k{i}" for i in range(20)]
ROUND_PAUSE = 0.05  # seconds between two rounds of publishes (one item per key each)
HOLD = 0.04  # seconds a grain holds an item before it records it (and it is acknowledged)


class Delivery(NamedTuple):
    key: str
    item: int
    silo: str  # the silo id the grain reported
    time: float  # time.time() when the handler recorded it
    label: str  # the process whose file holds the line


def read_deliveries(directory: Path) -> list[Delivery]:
    """Every delivery recorded so far, by the time it was recorded."""
    found: list[Delivery] = []
    for path in directory.glob("*.deliveries"):
        label = path.name.removesuffix(".deliveries")
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            assert line.endswith("\n"), (path, line)  # one write(2) per line: never torn
            key, item, silo, t = line.split()
            found.append(Delivery(key, int(item), silo, float(t), label))
    found.sort(key=lambda d: d.time)
    return found


def owned(directory: Path, label: str) -> set[int]:
    """The partitions silo *label* pulls (as it last wrote them, every 50 ms)."""
    return set(json.loads(read_if_exists(directory / f"{label}.owned") or "[]"))


def layout_is(directory: Path, silo_ids: dict[str, str], labels: str) -> bool:
    """The partitions are pulled as rendezvous hashing spreads them over these silos."""
    ids = [silo_ids[lab] for lab in labels]
    return all(
        owned(directory, lab) == owned_partitions(silo_ids[lab], ids, PARTITIONS) for lab in labels
    )


async def test_stream_partitions_move_between_silo_processes_without_loss_or_disorder(
    nats_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    cluster = f"s{tag}"
    streams = {
        "servers": [nats_url],
        "prefix": f"s{tag}",
        "partitions": PARTITIONS,
        "ack_wait": ACK_WAIT,
    }

    def settings(label: str, silos: int) -> dict[str, Any]:
        return {
            "url": nats_url,
            "cluster": cluster,
            "dir": str(tmp_path),
            "label": label,
            "silos": silos,
            "heartbeat_interval": HEARTBEAT,
            "dead_after": DEAD_AFTER,
            "streams": streams,
            "hold": HOLD,
        }

    async def wait_until_ready(procs: Processes, label: str) -> str:
        with trio.fail_after(30):
            while (silo_id := read_if_exists(tmp_path / f"{label}.ready")) is None:
                procs.check_running()
                await trio.sleep(0.02)
        return silo_id

    t0 = time.monotonic()
    client_config = ClientConfig.from_dict(
        {
            "cluster_id": cluster,
            "clustering": {"provider": "nats", "options": {"servers": nats_url}},
            "streams": {"default": {"provider": "jetstream", "options": streams}},
        }
    )
    async with processes(tmp_path) as procs:
        for label in ("a", "b"):
            await procs.start(label, SILO_SCRIPT, settings(label, silos=2))
        silo_ids = {label: await wait_until_ready(procs, label) for label in ("a", "b")}
        with trio.fail_after(20):  # the first two share every partition
            while not layout_is(tmp_path, silo_ids, "ab"):
                procs.check_running()
                await trio.sleep(0.05)
        t_started = time.monotonic()

        partition_of = {key: partition_for(StreamId("nums", key), PARTITIONS) for key in KEYS}
        published = 0  # items 0 .. published - 1 of every key are in the stream
        stop = False
        round_published = trio.Event()  # set (and replaced) after each round

        async def publish() -> None:
            nonlocal published, round_published
            stream_of = {key: provider.get_stream("nums", key) for key in KEYS}
            while not stop:
                for key in KEYS:
                    await stream_of[key].publish(published)
                published += 1
                round_published.set()
                round_published = trio.Event()
                await trio.sleep(ROUND_PAUSE)

        async with open_client(client_config) as client, trio.open_nursery() as nursery:
            provider = client.get_stream_provider()
            nursery.start_soon(publish)
            await trio.sleep(2)

            # -- a third silo joins: partitions move to it, and it handles their items.
            # Rendezvous hashing over random silo ids gives it no partition with a key
            # about once in 700 runs: then it is killed and another one joins instead.
            for newcomer in ("c", "d"):
                await procs.start(newcomer, SILO_SCRIPT, settings(newcomer, silos=3))
                silo_ids[newcomer] = await wait_until_ready(procs, newcomer)
                ids = [silo_ids[lab] for lab in ("a", "b", newcomer)]
                gained = owned_partitions(silo_ids[newcomer], ids, PARTITIONS)
                if any(partition_of[k] in gained for k in KEYS):
                    break
                print(f"{newcomer} gets no partition with a key: replaced", file=sys.stderr)
                procs.expected_dead.add(newcomer)
                await procs.kill(newcomer)
            else:
                raise AssertionError("two new silos got no partition with a key")
            with trio.fail_after(30):  # (+ dead_after + takeover delay if c was replaced)
                while not layout_is(tmp_path, silo_ids, "ab" + newcomer):
                    procs.check_running()
                    await trio.sleep(0.05)
            with trio.fail_after(20):
                while not any(d.label == newcomer for d in read_deliveries(tmp_path)):
                    procs.check_running()
                    await trio.sleep(0.05)
            await trio.sleep(2)

            # -- kill -9 the first silo whose partitions hold the most keys, right after a
            # round was published: it holds items of that round
            keys_of = {
                lab: {k for k in KEYS if partition_of[k] in owned(tmp_path, lab)} for lab in "ab"
            }
            victim = max("ab", key=lambda lab: len(keys_of[lab]))
            victim_keys = keys_of[victim]
            assert victim_keys, keys_of
            victim_partitions = owned(tmp_path, victim)
            procs.expected_dead.add(victim)
            await round_published.wait()
            await procs.kill(victim)
            killed_at = time.time()
            kill_round = published
            survivors = sorted({"a", "b", newcomer} - {victim})

            # -- publishing goes on past the takeover (dead_after, then ack_wait + 1 s)
            await trio.sleep(DEAD_AFTER + ACK_WAIT + 1 + 3)
            stop = True
        t_published = time.monotonic()

        # -- every item published is handled
        def missing(deliveries: list[Delivery]) -> int:
            seen = {(d.key, d.item) for d in deliveries}
            return len(KEYS) * published - len(seen)

        with trio.fail_after(30):
            while missing(deliveries := read_deliveries(tmp_path)):
                procs.check_running()
                await trio.sleep(0.1)
        t_handled = time.monotonic()
        # the survivors pull every partition between them, the killed silo's too
        assert layout_is(tmp_path, silo_ids, "".join(survivors))
        procs.check_running()
        procs.assert_clean_logs(*survivors)

    by_key: dict[str, list[Delivery]] = collections.defaultdict(list)
    for d in deliveries:  # by time
        by_key[d.key].append(d)
    assert set(by_key) == set(KEYS)
    for key in KEYS:
        items = [d.item for d in by_key[key]]
        # every item at least once, nothing else
        assert set(items) == set(range(published)), key
        # per-key order: first deliveries in publish order, even across the kill
        firsts = list(dict.fromkeys(items))
        for i in range(1, len(firsts)):
            if firsts[i] < firsts[i - 1]:
                at = items.index(firsts[i])
                window = [(d.item, d.label) for d in by_key[key][max(0, at - 10) : at + 3]]
                raise AssertionError(f"{key}: item {firsts[i]} first handled after {window}")

    # each process's deliveries name its own silo
    for d in deliveries:
        assert d.silo == silo_ids[d.label], d
    # the joining silo took partitions over from the first two: it handled items of keys
    # they had handled before
    first_on_c = min(d.time for d in deliveries if d.label == newcomer)
    keys_on_c = {d.key for d in deliveries if d.label == newcomer}
    assert keys_on_c
    for key in keys_on_c:
        first = by_key[key][0]
        assert first.label in ("a", "b"), first
        assert first.time < first_on_c, first
    # nothing handled on the killed silo after the kill ...
    on_victim = [d for d in deliveries if d.label == victim]
    assert max(d.time for d in on_victim) < killed_at
    assert not [d for d in deliveries if d.silo == silo_ids[victim] and d.label != victim]
    # ... and the survivors handled the items of the keys it had, published after the kill
    for key in victim_keys:
        assert any(d.label == victim for d in by_key[key]), key
        after = {d.item for d in by_key[key] if d.label in survivors}
        assert set(range(kill_round, published)) <= after, key
    # ... among them items the kill caught in flight (published before it, first handled
    # after it, by a survivor), in order (checked above)
    in_flight: set[tuple[str, int]] = set()
    for key in victim_keys:
        first_time: dict[int, float] = {}
        for d in by_key[key]:
            first_time.setdefault(d.item, d.time)
        in_flight |= {(key, i) for i in range(kill_round) if first_time[i] > killed_at}
    assert in_flight
    # ... once the victim was found dead, and then only after the takeover delay, ack_wait +
    # 1 s (its last heartbeat may be up to heartbeat_interval older than the kill)
    resumed = min(d.time for d in deliveries if d.key in victim_keys and d.time > killed_at)
    assert resumed - killed_at > DEAD_AFTER - HEARTBEAT + ACK_WAIT + 1, resumed - killed_at
    duplicates = len(deliveries) - len(KEYS) * published
    counts = collections.Counter(d.label for d in deliveries)
    print(
        f"startup {t_started - t0:.1f} s, publishing {t_published - t_started:.1f} s, "
        f"all handled {t_handled - t_published:.1f} s later; {published} rounds x "
        f"{len(KEYS)} keys, deliveries per silo {dict(counts)}, duplicates {duplicates}; "
        f"killed {victim} (partitions {sorted(victim_partitions)}, keys {len(victim_keys)}), "
        f"its keys resumed {resumed - killed_at:.1f} s after the kill, "
        f"{len(in_flight)} items caught in flight",
        file=sys.stderr,
    )
