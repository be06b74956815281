"""The cluster layer: what a silo or client needs only when there is more than one process.

``transport``           the Transport and ClusterBackend contracts, and their in-memory forms
``envelope``            the request, reply and cancel messages, decoded against limits
``messenger``           calls across the transport: requests out, replies correlated, replies sent
``membership``          the membership-table contract, its rows and the in-memory table
``membership_service``  the per-silo membership service: join, heartbeat, failure detection
``directory``           the grain-directory contract and the per-silo cache
``locator``             where a grain's activation is: cache, directory, placement
``ownership``           rendezvous hashing and partition leases over the live silos
``routing``             a silo's part in the cluster: remote calls in and out, forwarding
``member``              a silo's life as a member: joining, owning its share, leaving

Modules here may import the core below them (ids, grains, calls, activations, the catalog)
but nothing above (the silo and client composition roots).
"""
