"""The trio-grains command."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_grains import Grain, Silo, SiloConfig, cli
from trio_grains.cli import main


def test_plugins_lists_builtins_with_their_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "trio_grains.builtin.placement" in out
    assert "random" in out
    assert "prefer-local" in out
    clustering = out.split("clustering providers:\n", 1)[1].split("placement strategies:")[0]
    assert "memory               from trio_grains.builtin.memory" in clustering


def test_blocked_essential_plugin_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_GRAINS_BLOCK_PLUGINS", "trio_grains.builtin.placement")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-grains: error: ")
    assert "essential" in err


def test_silo_with_a_bad_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "silo.toml"
    config.write_text('cluster_id = "shop"\nbogus = 1\n[storage.default]\nprovider = "nope"\n')
    assert main(["silo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("trio-grains: error: invalid silo configuration: ")
    assert "bogus" in err
    config.write_text('[storage.default]\nprovider = "nope"\n')
    assert main(["silo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown storage provider 'nope'; available: memory" in err
    assert main(["silo", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    config.write_text("name = [unclosed\n")
    assert main(["silo", "--config", str(config)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


async def test_silo_command_serves_until_sigterm_then_stops(tmp_path: Path) -> None:
    config = tmp_path / "silo.toml"
    config.write_text(
        'name = "solo"\n[storage.default]\nprovider = "sqlite"\n'
        f'options = {{ path = "{tmp_path / "s.db"}" }}\n'
    )
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_grains.cli", "silo", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(30):
            while "is serving" not in out.read_text():  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    text = out.read_text()
    assert "silo solo is serving (alone)" in text
    assert text.rstrip().endswith("silo stopped")


def test_an_unknown_demo_is_one_line_naming_the_installed_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "ordres"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-grains: error: no demo named 'ordres' (orders)")
    assert "pip install -e examples/orders" in err
    assert len(err.splitlines()) == 1


class StuckGrain(Grain):
    """Its on_deactivate never ends: a graceful stop waits deactivation_timeout for it."""

    async def ping(self) -> str:
        return "pong"

    async def on_deactivate(self, reason: str) -> None:
        await trio.sleep_forever()


async def test_a_second_sigterm_abandons_a_stuck_graceful_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open_silo = cli.open_silo

    @contextlib.asynccontextmanager
    async def open_silo_and_activate(config: SiloConfig) -> AsyncIterator[Silo]:
        async with real_open_silo(config, grains=[StuckGrain]) as silo:
            assert await silo.get_grain(StuckGrain, "x").ping() == "pong"
            yield silo

    monkeypatch.setattr(cli, "open_silo", open_silo_and_activate)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cli._serve, SiloConfig(name="stuck", deactivation_timeout=30))
        with trio.fail_after(10):
            while "is serving" not in capsys.readouterr().out:  # noqa: ASYNC110
                await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep(0.5)  # the graceful stop waits on on_deactivate ...
            os.kill(os.getpid(), signal.SIGTERM)  # ... until this
    assert trio.current_time() - started < 10  # not deactivation_timeout (30 s)
    out = capsys.readouterr().out
    assert "stopping at once" in out
    assert out.rstrip().endswith("silo stopped")


def test_a_silo_process_freezes_start_up_objects_and_collects_less_often() -> None:
    from trio_grains.cli import SILO_GC_THRESHOLDS, tune_gc_for_a_silo

    before = gc.get_threshold()
    try:
        tune_gc_for_a_silo()
        assert gc.get_threshold() == SILO_GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
