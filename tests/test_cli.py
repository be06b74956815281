"""The trio-grains command."""

from __future__ import annotations

import pytest

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
