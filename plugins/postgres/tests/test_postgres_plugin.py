"""The entry point: trio-grains finds the plugin and its two providers by name."""

from __future__ import annotations

import importlib.metadata

from trio_grains._plugins import load_plugins


def test_entry_point_is_declared() -> None:
    points = importlib.metadata.entry_points(group="trio_grains")
    assert {ep.name: ep.value for ep in points}.get("postgres") == "trio_grains_postgres.plugin"


def test_plugin_loading_registers_storage_and_reminders() -> None:
    plugins = load_plugins()
    assert "postgres" in plugins.names()
    assert "postgres" in plugins.storage.names()
    assert "postgres" in plugins.reminders.names()
    assert plugins.storage.plugin_of("postgres") == "postgres"
    assert plugins.reminders.plugin_of("postgres") == "postgres"
