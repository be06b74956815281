"""The call path's shortcuts: batched receives."""

import trio

from trio_grains import MemoryCluster


async def test_memory_receive_batch_keeps_order_and_bounds() -> None:
    cluster = MemoryCluster()
    async with cluster.open_endpoint("a") as a, cluster.open_endpoint("b") as b:
        for i in range(100):
            a.send_nowait(b.address, b"%d" % i)
        first = await b.receive_batch()
        second = await b.receive_batch()
        assert first + second == [b"%d" % i for i in range(100)]
        assert len(first) == 64
        with trio.move_on_after(0.05):
            await b.receive_batch()
            raise AssertionError("nothing was sent")
