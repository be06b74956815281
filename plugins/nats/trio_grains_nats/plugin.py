"""The ``nats`` plugin of trio-grains (entry point ``trio_grains: nats``).

It registers

* the ``jetstream`` stream provider
  (:func:`trio_grains_nats.streams.open_jetstream_stream_adapter`; see
  ``docs/streams-jetstream.md``);
* the ``nats`` clustering provider (:func:`trio_grains_nats.clustering.open_nats_cluster`:
  membership and grain directory in JetStream KV buckets, the transport on core NATS; see
  ``docs/clustering-nats.md``).

KV grain storage will register its factory here through ``grains_register_storage``.
"""

from __future__ import annotations

from typing import Any

from trio_grains import ProviderRegistry, hookimpl

from .clustering import open_nats_cluster
from .streams import open_jetstream_stream_adapter


@hookimpl
def grains_register_streams(registry: ProviderRegistry[Any]) -> None:
    registry.register("jetstream", open_jetstream_stream_adapter)


@hookimpl
def grains_register_clustering(registry: ProviderRegistry[Any]) -> None:
    registry.register("nats", open_nats_cluster)
