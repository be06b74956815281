"""Silo configuration: frozen attrs values, structured from plain data (TOML, dicts) by cattrs.

``SiloConfig.from_dict(data)`` turns a mapping (e.g. parsed TOML) into a config and reports
every problem at once, naming each key and what it should be.

May import: values and ids.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from ._exceptions import ConfigError

__all__ = ["PluginsConfig", "ProviderConfig", "SiloConfig"]


def positive_seconds(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _default_silo_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


_SECRET_KEY = re.compile(r"pass|token|secret|seed|cred|private", re.IGNORECASE)
_URL_USERINFO = re.compile(r"://([^/@\s]+)@")


def _redact(value: object) -> object:
    if isinstance(value, str):
        return _URL_USERINFO.sub(
            lambda m: "://" + (m[1].split(":")[0] + ":***" if ":" in m[1] else "***") + "@",
            value,
        )
    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def redacted_repr(options: Mapping[str, Any]) -> str:
    """*options* as ``repr`` shows them: values of keys that name a secret (password,
    token, seed, ...) and passwords in URLs (``nats://user:***@host``) replaced by ``***``,
    so a config printed in a log or an error shows no credentials."""
    return repr(_redact(options))


@attrs.frozen(kw_only=True)
class ProviderConfig:
    """A provider chosen by name, with the options that name's factory understands.

    In TOML::

        [storage.default]
        provider = "sqlite"
        options = { path = "grains.db" }
    """

    provider: str
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=redacted_repr)


@attrs.frozen(kw_only=True)
class PluginsConfig:
    """Which plugins the silo's plugin manager loads.

    ``load_entry_points``: load every installed distribution's ``trio_grains`` entry point.
    ``block``: plugin names never to load (also ``TRIO_GRAINS_BLOCK_PLUGINS=a,b`` in the
    environment). Built-in plugins marked essential cannot be blocked.
    """

    load_entry_points: bool = True
    block: tuple[str, ...] = ()


GRAIN_DIRECTORIES = ("in-cluster", "provider")


def _directory_kind(_inst: object, _attr: object, value: str) -> None:
    if value not in GRAIN_DIRECTORIES:
        raise ConfigError(
            f"grain_directory must be one of {', '.join(map(repr, GRAIN_DIRECTORIES))}, "
            f"got {value!r}"
        )


@attrs.frozen(kw_only=True)
class SiloConfig:
    """Everything a silo needs to know; every field has a working default.

    Times are in seconds.

    * ``name``: this silo's name (default: ``<hostname>-<pid>``).
    * ``cluster_id``: the cluster this silo belongs to.
    * ``response_timeout``: how long a caller waits for a reply before
      :class:`~trio_grains.GrainCallTimeoutError` (Orleans' default, 30 s). A turn that runs
      in the caller's own task (an idle local grain) is bounded by the caller's own cancel
      scopes instead; see the concurrency docs.
    * ``collection_age``: an activation idle this long is deactivated (Orleans' default,
      15 minutes); per grain class with ``@collection_age``.
    * ``collection_quantum``: how often idle activations are looked for.
    * ``deactivation_timeout``: how long ``on_deactivate`` may run at shutdown.
    * ``isolate_local_calls``: copy arguments and results of in-process calls through the
      converter, as a remote call would (catches unserializable arguments in tests).
    * ``default_placement``: the placement strategy name for grain classes that declare none.
    * ``storage`` / ``streams``: named providers (``storage.default`` is the built-in
      ``memory`` provider unless configured); ``reminders``: the reminder table (``memory``
      by default: not durable); ``minimum_reminder_period`` (Orleans' 1 minute).
    * ``grains``: ``"module:Class"`` paths of grain classes to host, in addition to those
      passed to ``open_silo(grains=...)``.
    * ``clustering``: the clustering provider (``nats``, or ``memory`` for silos of one
      process) that joins this silo to the cluster ``cluster_id``; ``None`` (the default):
      the silo runs alone. ``heartbeat_interval``: how often the silo refreshes its
      membership row; ``dead_after``: a silo whose row has not changed for this long is
      declared dead (and a silo that could not heartbeat for this long stops itself).
      ``roles``: names for ``SiloRolePlacement``. ``reminder_refresh``: how often a
      clustered silo re-reads the reminder table for the reminders it owns (those
      registered through other silos are picked up then).
    * ``metrics``: count and time grain calls per type and method, storage operations
      and membership changes, for ``silo.statistics().metrics`` (off by default: then
      the call path does nothing extra).
    * ``services``: named services to run beside the silo while it serves
      (``[services.dashboard] provider = "dashboard"``), registered by plugins through
      ``grains_register_services``.
    * ``tracing``: the tracing provider (``[tracing] provider = "otel"``, registered by
      plugins through ``grains_register_tracers``); ``None`` (the default): no tracing,
      and the call path does nothing extra.
    * Limits on what callers send (``docs/security.md``): ``max_key_length``, the longest
      grain key, in characters (``get_grain`` raises :class:`~trio_grains.GrainIdError`
      past it, and requests for such grains are refused); ``max_subject_length``, the
      longest reply address a request may name; ``max_queued_calls``, calls an activation
      queues before it answers :class:`~trio_grains.ActivationOverloadedError` (Orleans'
      request-queue limit). ``remote_tracebacks``: error replies carry the grain's
      traceback text (off by default: it tells any caller about the server's code; on in
      the test cluster and the demo).
    * ``grain_directory``: where a clustered silo registers its activations.
      ``"in-cluster"`` (the default): a directory partitioned over the silos themselves
      (Orleans 9's ``DistributedGrainDirectory``; a lone silo registers without a message);
      ``"provider"``: the clustering provider's shared directory (the ``nats`` provider's
      KV bucket: one JetStream write per activation, for who wants an external one).
    """

    name: str = attrs.field(factory=_default_silo_name)
    cluster_id: str = "dev"
    response_timeout: float = attrs.field(default=30.0, validator=positive_seconds)
    collection_age: float = attrs.field(default=15 * 60.0, validator=positive_seconds)
    collection_quantum: float = attrs.field(default=60.0, validator=positive_seconds)
    deactivation_timeout: float = attrs.field(default=30.0, validator=positive_seconds)
    isolate_local_calls: bool = False
    default_placement: str = "random"
    storage: Mapping[str, ProviderConfig] = attrs.field(factory=dict)
    streams: Mapping[str, ProviderConfig] = attrs.field(factory=dict)
    reminders: ProviderConfig = attrs.field(factory=lambda: ProviderConfig(provider="memory"))
    minimum_reminder_period: float = attrs.field(default=60.0, validator=positive_seconds)
    grains: tuple[str, ...] = ()
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    clustering: ProviderConfig | None = None
    heartbeat_interval: float = attrs.field(default=1.0, validator=positive_seconds)
    dead_after: float = attrs.field(default=5.0, validator=positive_seconds)
    roles: tuple[str, ...] = ()
    reminder_refresh: float = attrs.field(default=30.0, validator=positive_seconds)
    metrics: bool = False
    services: Mapping[str, ProviderConfig] = attrs.field(factory=dict)
    tracing: ProviderConfig | None = None
    max_key_length: int = attrs.field(default=1024, validator=positive_int)
    max_subject_length: int = attrs.field(default=256, validator=positive_int)
    max_queued_calls: int = attrs.field(default=10_000, validator=positive_int)
    remote_tracebacks: bool = False
    grain_directory: str = attrs.field(default="in-cluster", validator=_directory_kind)

    def __attrs_post_init__(self) -> None:
        if self.dead_after <= self.heartbeat_interval:
            raise ConfigError(
                f"dead_after ({self.dead_after} s) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval} s); a few intervals is usual"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiloConfig:
        """Structure *data* (e.g. parsed TOML) into a config.

        Raises :class:`~trio_grains.ConfigError` listing every bad or unknown key.
        """
        return structure_config(cls, data, "silo")


C = TypeVar("C")


def structure_config(cls: type[C], data: Mapping[str, Any], what: str) -> C:
    """*data* structured as the config class *cls*; a :class:`ConfigError` names every bad
    or unknown key of the *what* configuration."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    try:
        return converter.structure(dict(data), cls)
    except cattrs.BaseValidationError as exc:
        problems = "\n  ".join(cattrs.transform_error(exc, path="config"))
        raise ConfigError(f"invalid {what} configuration:\n  {problems}") from exc
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {what} configuration: {exc}") from exc
