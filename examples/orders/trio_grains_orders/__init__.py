"""The reference application of trio-grains: order processing over NATS JetStream.

* :mod:`trio_grains_orders.app`: the grains (orders, customers, dead letters).
* :mod:`trio_grains_orders.demo`: ``trio-grains demo orders``, the whole thing on one
  machine (an embedded nats-server, silo processes, a publishing client).
"""
