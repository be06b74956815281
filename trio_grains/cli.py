"""The ``trio-grains`` command.

For now: ``trio-grains plugins`` shows what the plugin manager loads and which provider
names each plugin registers (the silo, client and demo commands come with the reference
application).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from ._config import PluginsConfig
from ._exceptions import GrainsError
from ._plugins import load_plugins


def _plugins(args: argparse.Namespace) -> int:
    loaded = load_plugins(PluginsConfig(load_entry_points=not args.no_entry_points))
    print("plugins:")
    for name in loaded.names():
        print(f"  {name}")
    if loaded.blocked():
        print(f"blocked: {', '.join(loaded.blocked())}")
    for title, registry in (
        ("storage providers", loaded.storage),
        ("stream providers", loaded.streams),
        ("reminder tables", loaded.reminders),
        ("clustering providers", loaded.clustering),
        ("placement strategies", loaded.placement),
    ):
        print(f"{title}:")
        for name in registry.names():
            print(f"  {name:<20} from {registry.plugin_of(name)}")
        if not registry.names():
            print("  (none)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-grains", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"trio-grains {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list plugins and the providers they register")
    plugins.add_argument("--no-entry-points", action="store_true", help="only the built-in plugins")
    plugins.set_defaults(func=_plugins)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GrainsError as exc:
        print(f"trio-grains: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
