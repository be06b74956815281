"""The ``nats`` plugin of trio-grains (entry point ``trio_grains: nats``).

It registers the ``jetstream`` stream provider
(:func:`trio_grains_nats.streams.open_jetstream_stream_adapter`; see
``docs/streams-jetstream.md``). KV storage, membership, directory and transport will
register their factories here through the other ``grains_register_*`` hooks.
"""

from __future__ import annotations

from typing import Any

from trio_grains import ProviderRegistry, hookimpl

from .streams import open_jetstream_stream_adapter


@hookimpl
def grains_register_streams(registry: ProviderRegistry[Any]) -> None:
    registry.register("jetstream", open_jetstream_stream_adapter)
