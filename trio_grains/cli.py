"""The ``trio-grains`` command.

* ``trio-grains silo --config silo.toml`` runs a silo (a :class:`~trio_grains.SiloConfig`
  in TOML) until Ctrl-C or ``SIGTERM``, then stops it gracefully.
* ``trio-grains plugins`` shows what the plugin manager loads and which provider names
  each plugin registers.

Mistakes a user can make (a missing file, bad TOML, an unknown key or provider, an
unreachable server) end with one line saying what to do, not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

import trio

from . import __version__
from ._config import PluginsConfig, SiloConfig
from ._exceptions import ConfigError, GrainsError, SiloDeclaredDeadError
from ._plugins import load_plugins
from ._silo import open_silo

EXIT_DECLARED_DEAD = 75  # EX_TEMPFAIL: a supervisor should start a fresh process


def load_toml(path: str) -> dict[str, Any]:
    """The TOML file at *path*; :class:`ConfigError` saying what is wrong with it."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None


async def _serve(config: SiloConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_silo(config) as silo:
            where = f"cluster {config.cluster_id!r}" if config.clustering else "alone"
            print(f"silo {silo.silo_id} is serving ({where}); Ctrl-C or SIGTERM stops it")
            sys.stdout.flush()
            async for _ in signals:
                break  # leave the block normally: deactivate, unregister, leave
    print("silo stopped")


def _silo(args: argparse.Namespace) -> int:
    config = SiloConfig.from_dict(load_toml(args.config))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        trio.run(_serve, config)
    except SiloDeclaredDeadError as exc:
        print(f"trio-grains: {exc}; start a fresh silo process", file=sys.stderr)
        return EXIT_DECLARED_DEAD
    return 0


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


def _one_line(message: str) -> str:
    """A multi-line error (e.g. every bad key of a config) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trio-grains", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"trio-grains {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list plugins and the providers they register")
    plugins.add_argument("--no-entry-points", action="store_true", help="only the built-in plugins")
    plugins.set_defaults(func=_plugins)
    silo = commands.add_parser("silo", help="run a silo until Ctrl-C or SIGTERM")
    silo.add_argument("--config", required=True, help="the silo's TOML configuration file")
    silo.set_defaults(func=_silo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GrainsError as exc:
        print(f"trio-grains: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
