"""The list of built-in plugins: ordinary plugin modules, loaded like third-party ones.

Each is registered through the same hooks as any third-party plugin, under the name
``trio_grains.builtin.<x>``. An *essential* built-in cannot be blocked
(``TRIO_GRAINS_BLOCK_PLUGINS`` or ``PluginsConfig.block``): the silo cannot run without it.
Add a built-in by appending to :data:`BUILTIN_PLUGINS`; the module is imported only when a
plugin manager is created.

May import: layers 0-7 and ``hookspecs``. Not the plugin manager, which reads this list,
nor the silo or the client.
"""

from __future__ import annotations

import attrs

__all__ = ["BUILTIN_PLUGINS", "BuiltinPlugin"]


@attrs.frozen
class BuiltinPlugin:
    """A built-in plugin: its plugin name, the module holding its hookimpls, and whether
    it may be blocked."""

    name: str
    module: str
    essential: bool


BUILTIN_PLUGINS: tuple[BuiltinPlugin, ...] = (
    BuiltinPlugin(
        name="trio_grains.builtin.placement",
        module="trio_grains._builtin.placement",
        essential=True,
    ),
    BuiltinPlugin(
        name="trio_grains.builtin.memory",
        module="trio_grains._builtin.memory",
        essential=False,
    ),
    BuiltinPlugin(
        name="trio_grains.builtin.sqlite",
        module="trio_grains._builtin.sqlite",
        essential=False,
    ),
    BuiltinPlugin(
        name="trio_grains.builtin.memory_streams",
        module="trio_grains._builtin.memory_streams",
        essential=False,
    ),
)
"""Every built-in plugin, in registration order."""
