"""Grains on PostgreSQL through a silo: state and reminders outlive activations and silos,
and a server that goes away and comes back costs failed writes, not broken activations."""

from __future__ import annotations

import math
from typing import Any

import attrs
import psycopg
import pytest
import trio
import trio.testing
from psycopg import sql
from trio_grains_postgres.testing import PostgresTestServer

from trio_grains import (
    Grain,
    SiloConfig,
    StorageError,
    TickStatus,
    open_silo,
    persistent_state,
)

ACTIVATIONS: list[tuple[str, int]] = []  # (grain key, value read from storage)
TICKS: list[tuple[str, str, float]] = []  # (grain key, reminder name, trio time)


@pytest.fixture(autouse=True)
def _clear() -> None:
    ACTIVATIONS.clear()
    TICKS.clear()


@attrs.define
class Tally:
    value: int = 0
    note: str = ""


class TallyGrain(Grain):
    tally = persistent_state(Tally)

    async def on_activate(self) -> None:
        ACTIVATIONS.append((self.primary_key, self.tally.state.value))

    async def add(self, n: int) -> int:
        self.tally.state.value += n
        await self.tally.write()
        return self.tally.state.value

    async def set(self, value: int) -> None:
        self.tally.state.value = value
        await self.tally.write()

    async def get(self) -> int:
        return self.tally.state.value

    async def leave(self) -> None:
        self.deactivate_on_idle()


class AlarmGrain(Grain):
    async def receive_reminder(self, name: str, status: TickStatus) -> None:
        TICKS.append((self.primary_key, name, trio.current_time()))

    async def start(self, name: str) -> None:
        await self.register_reminder(name, due=60, period=60)

    async def names(self) -> list[str]:
        return [reminder.name for reminder in await self.get_reminders()]


def silo_config(dsn: str, schema: str, **extra: Any) -> SiloConfig:
    options = {"dsn": dsn, "schema": schema, "connect_timeout": 2, **extra}
    return SiloConfig.from_dict(
        {
            "storage": {"default": {"provider": "postgres", "options": options}},
            "reminders": {"provider": "postgres", "options": options},
            # A task waiting for the server's answer counts as "blocked" for an autojump
            # clock, which may then jump past timeouts: keep them out of reach.
            "response_timeout": 10**6,
        }
    )


async def test_state_survives_deactivation_and_a_silo_restart(
    postgres_dsn: str, schema: str
) -> None:
    config = silo_config(postgres_dsn, schema)
    async with open_silo(config, grains=[TallyGrain]) as silo:
        ref = silo.get_grain(TallyGrain, "k/'1' ✓")
        assert await ref.add(2) == 2
        await ref.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert silo.statistics().activations == 0
        assert await ref.add(3) == 5
    assert ACTIVATIONS == [("k/'1' ✓", 0), ("k/'1' ✓", 2)]

    async with open_silo(config, grains=[TallyGrain]) as silo:
        assert await silo.get_grain(TallyGrain, "k/'1' ✓").get() == 5
    assert ACTIVATIONS[-1] == ("k/'1' ✓", 5)

    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT state_name, grain_type, grain_key FROM {}").format(
                sql.Identifier(schema, "grain_state")
            )
        ).fetchall()
    assert rows == [("tally", "tally", "k/'1' ✓")]


async def test_a_reminder_survives_a_silo_restart(
    postgres_dsn: str, schema: str, autojump_clock: trio.testing.MockClock
) -> None:
    # connect_timeout is a deadline on Trio's clock, which would jump to it while a
    # connection is being opened: no deadline at all.
    config = silo_config(postgres_dsn, schema, connect_timeout=math.inf)
    async with open_silo(config, grains=[AlarmGrain], wall_clock=trio.current_time) as silo:
        await silo.get_grain(AlarmGrain, "a").start("daily")
    restarted = trio.current_time()
    async with open_silo(config, grains=[AlarmGrain], wall_clock=trio.current_time) as silo:
        assert await silo.get_grain(AlarmGrain, "a").names() == ["daily"]
        await trio.sleep(150)
    after = [(key, name) for key, name, at in TICKS if at >= restarted]
    assert after[:2] == [("a", "daily"), ("a", "daily")]


async def test_server_down_and_back(own_postgres_server: PostgresTestServer, schema: str) -> None:
    server = own_postgres_server
    async with open_silo(silo_config(server.dsn, schema), grains=[TallyGrain]) as silo:
        ref = silo.get_grain(TallyGrain, "down")
        assert await ref.add(1) == 1

        await trio.to_thread.run_sync(server.stop)
        with pytest.raises(StorageError) as info:
            await ref.add(1)
        assert f"PostgreSQL at 127.0.0.1:{server.port}" in str(info.value)
        assert await ref.get() == 2  # the activation lives on (the failed write's change too)

        await trio.to_thread.run_sync(server.start)
        for _ in range(30):  # the pool reconnects with backoff: a few writes may still fail
            try:
                await ref.set(10)
                break
            except StorageError:
                continue
        else:
            pytest.fail("no write succeeded after the server came back")
        assert await ref.add(1) == 11

    async with open_silo(silo_config(server.dsn, schema), grains=[TallyGrain]) as silo:
        assert await silo.get_grain(TallyGrain, "down").get() == 11
