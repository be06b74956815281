"""The cluster layer: what a silo or client needs only when there is more than one process.

Bottom to top:

``envelope``            the request, reply and cancel messages, decoded against limits
``silo_entries``        a silo's membership row, the view of all rows, and their encoding
``membership``          the table contract (compare-and-set rows), the protocol, the memory table
``directory``           the grain-directory contract and the per-silo cache
``transport``           the Transport and ClusterBackend contracts, and their in-memory forms
``messenger``           calls across the transport: requests out, replies correlated, replies sent
``membership_service``  the per-silo membership service: join, heartbeat, failure detection
``locator``             where a grain's activation is: cache, directory, placement
``ownership``           rendezvous hashing and partition leases over the live silos
``routing``             a silo's part in the cluster: remote calls in and out, forwarding
``member``              a silo's life as a member: joining, owning its share, leaving

May import: each module, only modules listed above it, and the core up to the catalog and
the dispatcher; not reminders or streams (side by side with the cluster), nor silo or client.
``member`` is part of the silo's composition (layer 9): it may import reminders and streams too.
"""
