"""The ``trio-grains`` command.

* ``trio-grains silo --config silo.toml`` runs a silo (a :class:`~trio_grains.SiloConfig`
  in TOML) until Ctrl-C or ``SIGTERM``, then stops it gracefully. The current folder is
  on ``sys.path``, so ``grains = ["app:OrderGrain"]`` finds ``./app.py``.
* ``trio-grains client --config client.toml silos|stats|call|publish ...``: small
  operations on a cluster through a client (list the silos, show statistics, call a grain
  method with JSON arguments, publish a JSON value to a stream).
* ``trio-grains plugins`` shows what the plugin manager loads and which provider names
  each plugin registers.
* ``trio-grains demo NAME [args]`` runs a demo that an installed distribution registers
  under the ``trio_grains.demos`` entry-point group (``orders``: the reference
  application, from ``examples/orders``), passing it the rest of the command line.

Mistakes a user can make (a missing file, bad TOML, an unknown key or provider, an
unreachable server) end with one line saying what to do, not a traceback.

May import: every layer below and the ``trio_grains`` package. Nothing of trio-grains
imports it: it is the ``trio-grains`` entry point.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from . import __version__
from ._client import Client, ClientConfig, open_client
from ._config import PluginsConfig, SiloConfig
from ._exceptions import ConfigError, GrainsError, SiloDeclaredDeadError, first_leaf
from ._logging import GrainsContextFilter
from ._plugins import load_plugins
from ._silo import Silo, open_silo

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(silo_id)s %(grain_id)s]: %(message)s"

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


#: the garbage collector's thresholds in a ``trio-grains silo`` process (CPython's default
#: is ``(700, 10, 10)``)
SILO_GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc_for_a_silo() -> None:
    """Freeze what start-up allocated and collect less often: a silo keeps a few long-lived
    objects per activation, which with CPython's default thresholds kept triggering
    collections of the older generations (60-80 us of a 250 us order in the orders
    benchmark; these settings took ~17 % off the silo's CPU per order). The CLI's own
    process only: a program that embeds a silo chooses its own settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SILO_GC_THRESHOLDS)


async def _serve(config: SiloConfig) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully; a second signal abandons the
    graceful stop (no goodbyes: the cluster treats the silo as crashed)."""
    stop = trio.Event()
    running: list[Silo] = []

    async def follow_signals(task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for _ in signals:
                if not stop.is_set():
                    print("stopping gracefully (a second Ctrl-C or SIGTERM stops at once)")
                    stop.set()
                elif running:
                    print("stopping at once: the cluster takes over after dead_after")
                    running[0].abandon_graceful_stop()
                sys.stdout.flush()

    async with trio.open_nursery() as nursery:
        await nursery.start(follow_signals)
        async with open_silo(config) as silo:
            running.append(silo)
            tune_gc_for_a_silo()
            where = f"cluster {config.cluster_id!r}" if config.clustering else "alone"
            print(f"silo {silo.silo_id} is serving ({where}); Ctrl-C or SIGTERM stops it")
            sys.stdout.flush()
            await stop.wait()  # then leave the block normally: deactivate, unregister, leave
        nursery.cancel_scope.cancel()
    print("silo stopped")


def _silo(args: argparse.Namespace) -> int:
    # As `python -m` would (and uvicorn does): `grains = ["app:OrderGrain"]` imports
    # app.py from the folder the silo is started in.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    config = SiloConfig.from_dict(load_toml(args.config))
    handler = logging.StreamHandler()
    handler.addFilter(GrainsContextFilter())  # silo and grain ids on every record
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        trio.run(_serve, config)
    except BaseExceptionGroup as group:
        dead = group.subgroup(SiloDeclaredDeadError)
        if dead is None:
            _raise_ours(group)
        exc: BaseException = first_leaf(dead)
    except SiloDeclaredDeadError as error:
        exc = error
    else:
        return 0
    print(f"trio-grains: {exc}; start a fresh silo process", file=sys.stderr)
    return EXIT_DECLARED_DEAD


def _raise_ours(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise our one error out of *group* (main() prints it as one line); other groups
    go on as they are."""
    ours, rest = group.split(GrainsError)
    if ours is None or rest is not None:
        raise group
    raise first_leaf(ours) from None


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
        ("services", loaded.services),
        ("tracing providers", loaded.tracers),
    ):
        print(f"{title}:")
        for name in registry.names():
            print(f"  {name:<20} from {registry.plugin_of(name)}")
        if not registry.names():
            print("  (none)")
    return 0


async def _client_command(config: ClientConfig, args: argparse.Namespace) -> None:
    async with open_client(config) as client:
        with trio.move_on_after(args.wait):
            await client.wait_for_silos(1)
        await _CLIENT_COMMANDS[args.operation](client, args)


async def _silos(client: Client, args: argparse.Namespace) -> None:
    entries = client.membership_view.entries.values()
    if not entries:
        print("no silos in the membership table")
    for e in entries:
        types = ", ".join(sorted(e.grain_types)) or "-"
        print(f"{e.silo_id:<32} {e.status.value:<14} load {e.load:<7} {e.address}  [{types}]")


async def _stats(client: Client, args: argparse.Namespace) -> None:
    stats = client.statistics()
    active = client.membership_view.active()
    print(f"active silos: {len(active)}")
    print(f"activations:  {sum(e.load for e in active)} (at the silos' last heartbeats)")
    for e in active:
        print(f"  {e.silo_id:<32} {e.load}")
    print(f"client:       {stats.endpoint_id}, {stats.messages_sent} messages sent")


async def _call(client: Client, args: argparse.Namespace) -> None:
    arguments = _json_argument(args.arguments, "arguments")
    if not isinstance(arguments, dict):
        raise ConfigError('call arguments must be a JSON object of keyword arguments: {"n": 1}')
    result = await client.call(args.grain, args.method, arguments)
    print(json.dumps(result, default=str))


async def _publish(client: Client, args: argparse.Namespace) -> None:
    value = _json_argument(args.value, "value")
    stream = client.get_stream_provider(args.provider).get_stream(args.namespace, args.key)
    token = await stream.publish(value)
    print(f"published to {args.namespace}/{args.key}: {token}")


def _json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the {what} {text!r} is not JSON: {exc}") from None


_CLIENT_COMMANDS = {"silos": _silos, "stats": _stats, "call": _call, "publish": _publish}


def _client(args: argparse.Namespace) -> int:
    config = ClientConfig.from_dict(load_toml(args.config))
    try:
        trio.run(_client_command, config, args)
    except BaseExceptionGroup as group:
        _raise_ours(group)  # an error of ours raised inside the client's nursery
    return 0


DEMOS_GROUP = "trio_grains.demos"


def _demo(args: argparse.Namespace) -> int:
    demos = {ep.name: ep for ep in importlib.metadata.entry_points(group=DEMOS_GROUP)}
    entry = demos.get(args.name)
    if entry is None:
        known = ", ".join(sorted(demos)) or "none are installed"
        raise ConfigError(
            f"no demo named {args.name!r} ({known}); the reference application's is "
            "installed with `pip install -e examples/orders` (python3 dev.py does it)"
        )
    run = entry.load()
    return int(run(list(args.args)))


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
    client = commands.add_parser("client", help="operate on a cluster through a client")
    client.add_argument("--config", required=True, help="the client's TOML configuration")
    client.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for an active silo"
    )
    operations = client.add_subparsers(dest="operation", required=True)
    operations.add_parser("silos", help="list the silos of the membership table")
    operations.add_parser("stats", help="show cluster statistics")
    call = operations.add_parser("call", help="call a grain method with JSON arguments")
    call.add_argument("grain", help="the grain id, e.g. cart/bob65")
    call.add_argument("method")
    call.add_argument("arguments", nargs="?", default="{}", help='e.g. \'{"item": "apple"}\'')
    publish = operations.add_parser("publish", help="publish a JSON value to a stream")
    publish.add_argument("namespace")
    publish.add_argument("key")
    publish.add_argument("value", help="a JSON value")
    publish.add_argument("--provider", default="default", help="the stream provider name")
    client.set_defaults(func=_client)
    demo = commands.add_parser("demo", help="run a demo application (e.g. orders)")
    demo.add_argument("name", help="the demo's name, e.g. orders")
    demo.add_argument("args", nargs=argparse.REMAINDER, help="the demo's own arguments")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except GrainsError as exc:
        print(f"trio-grains: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
