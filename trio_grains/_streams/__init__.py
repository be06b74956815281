"""The streams layer: persistent streams, their providers' pulling agents and user handles.

``model``     stream ids, sequence tokens, the stream-adapter contract, options
``provider``  a stream provider: its partitions' agents, subscriptions and publishing
``agent``     the pulling agent of one partition: deliver in key order, retry, dead-letter
``handles``   what user code holds: :class:`~trio_grains.Stream`, subscription handles

Modules here may import the core below them but nothing above (the silo and client).
"""
