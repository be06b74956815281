"""The silo as a composition root: providers, plugins, config, containment of failures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_grains import (
    ConfigError,
    Grain,
    InternalError,
    ProviderContext,
    ProviderRegistry,
    SiloConfig,
    hookimpl,
    open_silo,
)

LOG: list[str] = []


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    LOG.clear()


@contextlib.asynccontextmanager
async def recording_storage(ctx: ProviderContext, options: Mapping[str, Any]) -> AsyncIterator[str]:
    LOG.append(f"open {ctx.name} {dict(options)}")
    try:
        yield f"storage {ctx.name}"
    finally:
        await trio.lowlevel.checkpoint()
        LOG.append(f"close {ctx.name}")


class RecorderPlugin:
    @hookimpl
    def grains_register_storage(self, registry: ProviderRegistry[Any]) -> None:
        registry.register("recorder", recording_storage)


class Noted(Grain):
    async def touch(self) -> None:
        pass

    async def on_deactivate(self, reason: str) -> None:
        LOG.append(f"deactivate {self.primary_key}")


async def test_providers_open_in_order_and_close_in_reverse_after_deactivation() -> None:
    config = SiloConfig.from_dict(
        {
            "storage": {
                "first": {"provider": "recorder", "options": {"path": "a.db"}},
                "second": {"provider": "recorder"},
            }
        }
    )
    async with open_silo(config, grains=[Noted], plugins=[RecorderPlugin()]) as silo:
        assert silo.provider("storage", "second") == "storage second"
        await silo.get_grain(Noted, "x").touch()
        with pytest.raises(ConfigError, match="no storage provider named 'third'"):
            silo.provider("storage", "third")
    assert LOG == [
        "open first {'path': 'a.db'}",
        "open second {}",
        "deactivate x",
        "close second",
        "close first",
    ]


async def test_grains_named_in_config_are_hosted() -> None:
    config = SiloConfig(grains=(f"{__name__}:Noted",))
    async with open_silo(config) as silo:
        await silo.get_grain(Noted, "y").touch()
        assert silo.statistics().activations_by_type == {"noted": 1}


@pytest.mark.parametrize(
    ("path", "message"),
    [(f"{__name__}.Noted", "must look like"), ("tests_nope:Noted", "cannot be imported")],
)
async def test_bad_grain_paths_in_config(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_silo(SiloConfig(grains=(path,))):
            pass


class Spawner(Grain):
    async def spawn_failing(self) -> None:
        async def fail() -> None:
            await trio.sleep(1)
            raise ValueError("background failure")

        self.start_soon(fail)

    async def ping(self) -> str:
        return "pong"


async def test_failing_background_task_is_logged_and_the_silo_lives(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_silo(grains=[Spawner]) as silo:
        ref = silo.get_grain(Spawner, "a")
        await ref.spawn_failing()
        await trio.sleep(2)
        assert await ref.ping() == "pong"
    assert any("background task" in r.getMessage() for r in caplog.records)


class Busy(Grain):
    async def hold(self) -> None:
        await trio.sleep(10)

    async def ping(self) -> str:
        return "pong"


async def test_a_runtime_bug_in_one_activation_is_contained(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trio_grains import _activation

    async def broken(self: Any, nursery: Any) -> None:
        raise RuntimeError("simulated bug in the mailbox loop")

    async with open_silo(grains=[Busy]) as silo:
        ref = silo.get_grain(Busy, "a")
        monkeypatch.setattr(_activation.Activation, "_drain_mailbox", broken)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(InternalError, match="internal error in the activation"):
                await ref.ping()  # queued: the (broken) activation task must serve it
        monkeypatch.undo()
        assert await silo.get_grain(Busy, "b").ping() == "pong"  # the silo still serves
    assert any(
        r.levelno == logging.CRITICAL and "report this bug" in r.getMessage()
        for r in caplog.records
    )


async def test_statistics_count_activations_and_waiting_callers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(grains=[Busy]) as silo:
        ref = silo.get_grain(Busy, "a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.hold)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ref.ping)
            nursery.start_soon(ref.ping)
            await trio.testing.wait_all_tasks_blocked()
            stats = silo.statistics()
            assert stats.activations == 1
            assert stats.queued_calls == 2
            assert stats.waiting_callers == 2
        stats = silo.statistics()
        assert (stats.queued_calls, stats.waiting_callers) == (0, 0)
        assert stats.activations_created == 1
