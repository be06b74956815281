"""The ``nats`` plugin of trio-grains (entry point ``trio_grains: nats``).

It registers

* the ``jetstream`` stream provider
  (:func:`trio_grains_nats.streams.open_jetstream_stream_adapter`; see
  ``docs/streams-jetstream.md``);
* the ``nats`` clustering provider (:func:`trio_grains_nats.clustering.open_nats_cluster`:
  membership and grain directory in JetStream KV buckets, the transport on core NATS; see
  ``docs/clustering-nats.md``);
* the ``nats-kv`` storage provider (:func:`trio_grains_nats.storage.open_nats_kv_storage`:
  grain states in a JetStream KV bucket, ETags are key revisions; see
  ``docs/storage-nats-kv.md``);
* the ``nats-kv`` reminder table
  (:func:`trio_grains_nats.reminders.open_nats_kv_reminder_table`: durable reminders in a
  JetStream KV bucket, ETags are key revisions; see ``docs/reminders.md``).
"""

from __future__ import annotations

from typing import Any

from trio_grains import ProviderRegistry, hookimpl

from .clustering import open_nats_cluster
from .reminders import open_nats_kv_reminder_table
from .storage import open_nats_kv_storage
from .streams import open_jetstream_stream_adapter


@hookimpl
def grains_register_streams(registry: ProviderRegistry[Any]) -> None:
    registry.register("jetstream", open_jetstream_stream_adapter)


@hookimpl
def grains_register_clustering(registry: ProviderRegistry[Any]) -> None:
    registry.register("nats", open_nats_cluster)


@hookimpl
def grains_register_storage(registry: ProviderRegistry[Any]) -> None:
    registry.register("nats-kv", open_nats_kv_storage)


@hookimpl
def grains_register_reminder_tables(registry: ProviderRegistry[Any]) -> None:
    registry.register("nats-kv", open_nats_kv_reminder_table)
