"""The ``nats`` plugin of trio-grains (entry point ``trio_grains: nats``).

It registers nothing yet: this distribution currently provides the Trio-native NATS
connection (:func:`trio_grains_nats.connect`), JetStream and KV. The JetStream stream
provider, and later KV storage, membership, directory and transport, will register their
factories here through the ``grains_register_*`` hooks.
"""

from __future__ import annotations
