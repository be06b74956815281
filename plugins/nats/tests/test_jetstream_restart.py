"""Restart safety: SIGKILL a silo mid-stream, start another on the same consumers.

Every published item is handled at least once, none is lost, and the only items handled
twice are ones the killed silo had handled but not yet acknowledged (at most its
in-flight window). Real processes, a real nats-server, real time.
"""

from __future__ import annotations

import collections
import signal
import sys
import uuid
from pathlib import Path

import cattrs
import msgpack
import trio
from trio_grains_nats.streams import open_jetstream_stream_adapter

from trio_grains import EncodedItem, ProviderContext, StreamId, partition_for

SCRIPT = Path(__file__).with_name("_restart_silo.py")
N = 2000
KEYS = 50
PARTITIONS = 4
MAX_IN_FLIGHT = 32  # per partition, as in _restart_silo.py


def _records(path: Path) -> list[tuple[str, str, int, str]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) == 4:  # a line cut by the kill is not a record
            out.append((parts[0], parts[1], int(parts[2]), parts[3]))
    return out


async def _start(url: str, prefix: str, record: Path, label: str, log: Path) -> trio.Process:
    with log.open("ab") as out:
        return await trio.lowlevel.open_process(
            [sys.executable, str(SCRIPT), url, prefix, str(record), label],
            stdout=out,
            stderr=out,
        )


async def _stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    with trio.move_on_after(10):
        await proc.wait()


async def test_sigkill_mid_stream_loses_nothing(nats_url: str, tmp_path: Path) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    record = tmp_path / "handled.txt"
    log = tmp_path / "silos.log"
    context = ProviderContext("default", "test", "dev", cattrs.Converter())
    options = {"servers": [nats_url], "prefix": prefix, "partitions": PARTITIONS, "ack_wait": 3}
    published: dict[tuple[str, int], str] = {}
    procs: list[trio.Process] = []
    try:
        async with open_jetstream_stream_adapter(context, options) as adapter:

            async def publish(start: int, stop: int) -> None:
                by_key: dict[str, list[int]] = collections.defaultdict(list)
                for n in range(start, stop):
                    by_key[f"k{n % KEYS}"].append(n)
                for key, ns in by_key.items():
                    sid = StreamId("restart", key)
                    items = [EncodedItem(msgpack.packb(n), f"{prefix}-{n}") for n in ns]
                    tokens = await adapter.publish_batch(sid, partition_for(sid, PARTITIONS), items)
                    for n, token in zip(ns, tokens, strict=True):
                        published[(key, n)] = str(token)

            await publish(0, N // 2)
            first = await _start(nats_url, prefix, record, "first", log)
            procs.append(first)
            with trio.fail_after(60):
                while len(_records(record)) < N // 5:  # noqa: ASYNC110 - polling a file
                    await trio.sleep(0.01)
            # the rest is published while the first silo works, then it dies
            await publish(N // 2, N)
            await trio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            await _stop(first)
            before_kill = _records(record)
            assert len(before_kill) < N, "the first silo handled everything before the kill"
            second = await _start(nats_url, prefix, record, "second", log)
            procs.append(second)
            with trio.fail_after(90):
                while len({(k, n) for _, k, n, _ in _records(record)}) < N:
                    await trio.sleep(0.05)
                    assert second.returncode is None, log.read_text(errors="replace")[-3000:]
            await trio.sleep(1.0)  # nothing more may come
    finally:
        for proc in procs:
            await _stop(proc)

    records = _records(record)
    handled = collections.Counter((k, n) for _, k, n, _ in records)
    assert set(handled) == set(published), "lost items"
    for _, k, n, token in records:
        assert published[(k, n)] == token  # tokens are the published stream sequences
    by_silo = {
        label: collections.Counter((k, n) for lab, k, n, _ in records if lab == label)
        for label in ("first", "second")
    }
    assert by_silo["first"], "the first silo handled nothing"
    assert by_silo["second"], "the second silo handled nothing"
    for label, counts in by_silo.items():
        twice = [item for item, c in counts.items() if c > 1]
        assert not twice, f"the {label} silo handled {twice[:5]} twice"
    duplicates = [item for item, c in handled.items() if c > 1]
    # only items the first silo handled (but had not acked) come again ...
    assert all(item in by_silo["first"] for item in duplicates)
    # ... at most its in-flight window
    assert len(duplicates) <= MAX_IN_FLIGHT * PARTITIONS, len(duplicates)
    # per-key order held while one silo ran
    for key in {k for k, _ in published}:
        mine = [n for lab, k, n, _ in records if lab == "first" and k == key]
        assert mine == sorted(mine), key
    print(
        f"first silo: {sum(by_silo['first'].values())}, second: "
        f"{sum(by_silo['second'].values())}, redelivered: {len(duplicates)}",
        file=sys.stderr,
    )
