"""Poisoned rows in the cluster's KV buckets (issue 9): a silo goes on, and a new one joins.

An independent client, on a plain NATS connection, publishes raw bytes on the subjects of
the buckets a running silo uses: a membership row nested too deeply for Python's JSON
parser (it used to raise ``RecursionError`` in every silo's membership watch and in every
restarted silo, until the row was purged), rows too large or naming another silo, a key
that names no silo, garbage directory entries, reminder rows with a period of 0, a stored
grain state that is not msgpack. Then: the silo keeps running and answers calls, the grain
whose directory entry was garbage activates again, a newly started silo joins the
cluster, and every bad row was counted (``malformed_rows`` of each table) and logged once
per table, however often it is read again.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable

import pytest
import trio
from _hostile import HostileClient, HostileEnv, open_hostile_client, open_hostile_env
from _hostile_grains import CounterGrain, VaultGrain
from trio_grains_nats.directory import KvGrainDirectory
from trio_grains_nats.membership import KvMembershipTable, encode_silo_key
from trio_grains_nats.reminders import NatsKvReminderTable, reminder_key

from trio_grains import GrainId, ProviderConfig, Silo, SiloStatus, StorageError, open_silo

DEEP = b"[" * 60_000  # under the 64 KiB bound: reaches the parser, deeper than it can go
HUGE = b'{"silo_id":"' + b"x" * 70_000 + b'"}'  # over the bound: refused before parsing


def membership(silo: Silo) -> KvMembershipTable:
    assert silo.cluster is not None
    table = silo.cluster.locator.membership
    assert isinstance(table, KvMembershipTable)
    return table


def directory(silo: Silo) -> KvGrainDirectory:
    assert silo.cluster is not None
    table = silo.cluster.backend_directory
    assert isinstance(table, KvGrainDirectory)
    return table


def reminders(silo: Silo) -> NatsKvReminderTable:
    table = silo.provider("reminders", "default")
    assert isinstance(table, NatsKvReminderTable)
    return table


async def eventually(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Wait for *condition*, polling; fail naming *what* after *within* seconds."""
    with trio.move_on_after(within):
        while not condition():  # noqa: ASYNC110 - polling counters
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not within {within} s: {what}")


def _records(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


async def _poison(env: HostileEnv, hostile: HostileClient, reminder_bucket: str) -> None:
    """Raw publishes on the buckets' subjects: what a client with publish rights can do."""
    silo_id = env.silo.silo_id
    impostor = {  # a well-formed row declaring the victim dead, under another key
        "silo_id": silo_id,
        "address": env.silo_subject(),
        "status": "dead",
        "roles": [],
        "started_at": 0,
        "heartbeat_at": 0,
    }
    rows = {
        f"$KV.{env.membership_bucket}.ghost-deep": DEEP,
        f"$KV.{env.membership_bucket}.ghost-huge": HUGE,
        f"$KV.{env.membership_bucket}.impostor": json.dumps(impostor).encode(),
        f"$KV.{env.membership_bucket}.=ZZ": b"{}",  # a key no silo id encodes to
        f"$KV.{env.directory_bucket}.{GrainId.parse('hcounter/poisoned').token}": b"\xff\xfe",
        f"$KV.{env.directory_bucket}.{GrainId.parse('hcounter/deep').token}": DEEP,
        f"$KV.{reminder_bucket}.{reminder_key(GrainId.parse('hcounter/r'), 'zero')}": (
            b'{"start_at": 1, "period": 0}'  # divided by zero in the reminder service
        ),
        f"$KV.{reminder_bucket}.{reminder_key(GrainId.parse('hcounter/r'), 'deep')}": DEEP,
        f"$KV.{reminder_bucket}.not-a-reminder": b"x",
        env.state_subject("hvault/poisoned", "vault"): DEEP,
    }
    for subject, data in rows.items():
        await hostile.send(subject, data)
    assert encode_silo_key(silo_id) != "impostor"


async def test_poisoned_rows_are_skipped_counted_and_do_not_stop_the_cluster(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    reminder_bucket = f"hostile-rem-{uuid.uuid4().hex[:8]}"
    reminder_table = ProviderConfig(
        provider="nats-kv", options={"servers": [nats_url], "bucket": reminder_bucket}
    )
    async with (
        # (the grains' entries in the KV bucket: the poisoned entries must be met there)
        open_hostile_env(
            nats_url,
            reminders=reminder_table,
            reminder_refresh=0.2,
            grain_directory="provider",
        ) as env,
        open_hostile_client(env.url, env.cluster_id) as hostile,
    ):
        silo = env.silo
        await _poison(env, hostile, reminder_bucket)

        # The running silo's membership watch met every bad row, and skipped it.
        await eventually(lambda: membership(silo).malformed_rows == 4, "4 membership rows")
        await eventually(lambda: reminders(silo).malformed_rows == 3, "3 reminder rows")
        await env.assert_all_answer()  # running, alone in its view, answering calls
        assert silo.membership_view is not None
        assert silo.membership_view.status_of(silo.silo_id) is SiloStatus.ACTIVE

        # The grain whose entry is garbage activates: register replaces the entry.
        assert await silo.get_grain(CounterGrain, "poisoned").add(1) == 1
        assert directory(silo).malformed_rows >= 1
        # A scan (the janitor's, a dead silo's entries) skips the other one.
        assert all(e.silo_id == silo.silo_id for e in await directory(silo).entries())
        assert directory(silo).malformed_rows == 2

        # Unreadable stored state fails that grain's activation, not the silo.
        with pytest.raises(StorageError, match="hvault/poisoned"):
            await silo.get_grain(VaultGrain, "poisoned").read()

        # A new silo joins while the rows are there (this is what a restart does).
        newcomer_config = env.silo_config("silo-new", grain_directory="provider")
        async with open_silo(newcomer_config, grains=_grains()) as newcomer:
            env.silos.append(newcomer)
            await eventually(
                lambda: all(s.statistics().active_silos == 2 for s in env.silos),
                "both silos see each other",
            )
            assert membership(newcomer).malformed_rows == 4
            await env.assert_all_answer()
            assert await newcomer.get_grain(CounterGrain, "poisoned").add(1) == 2
            env.silos.remove(newcomer)

        # Read again and again: counted and logged once per table.
        for _ in range(3):
            await membership(silo).snapshot()
            await reminders(silo).read_all()
        assert membership(silo).malformed_rows == 4
        assert reminders(silo).malformed_rows == 3
        assert _records(caplog, "'ghost-deep'") == 2  # the first silo's table, the newcomer's
        assert _records(caplog, "'impostor'") == 2
        assert _records(caplog, "not-a-reminder") <= 2  # each silo's table once at most
        await env.assert_all_answer()


def _grains() -> list[type]:
    from _hostile import victim_grains

    return victim_grains()
