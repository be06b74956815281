"""The in-memory cluster transport: the conformance kit, and what is MemoryCluster's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from trio_grains import (
    ClusterBackend,
    MemoryCluster,
    MessageTooLargeError,
    Transport,
    TransportClosedError,
    TransportError,
)
from trio_grains.testing import TRANSPORT_CHECKS, check_transport


def _opener(cluster: MemoryCluster) -> contextlib.AbstractAsyncContextManager[ClusterBackend]:
    @contextlib.asynccontextmanager
    async def open_backend() -> AsyncIterator[ClusterBackend]:
        await trio.lowlevel.checkpoint()
        yield cluster

    return open_backend()


async def test_memory_cluster_passes_the_transport_kit() -> None:
    cluster = MemoryCluster()
    await check_transport(lambda: _opener(cluster))
    assert cluster._endpoints == {}  # every endpoint the kit opened is closed


@pytest.mark.parametrize("name", list(TRANSPORT_CHECKS))
async def test_each_check_alone(name: str) -> None:
    cluster = MemoryCluster(max_message_size=4096)
    await TRANSPORT_CHECKS[name](lambda: _opener(cluster))


async def test_the_kit_names_a_broken_rule() -> None:
    class Lossy(MemoryCluster):
        @contextlib.asynccontextmanager
        async def open_endpoint(self, endpoint_id: str) -> AsyncIterator[Transport]:
            async with super().open_endpoint(endpoint_id) as transport:
                original = transport.send_nowait

                def send_nowait(address: str, message: bytes) -> None:
                    if message != b"":
                        original(address, message)  # drops the empty message

                transport.send_nowait = send_nowait  # type: ignore[method-assign]
                yield transport

    cluster = Lossy()
    with pytest.raises(AssertionError, match="byte for byte") as info:
        await TRANSPORT_CHECKS["arbitrary_bytes"](lambda: _opener(cluster))
    assert "message 0" in str(info.value)


async def test_cut_off_drops_both_ways() -> None:
    cluster = MemoryCluster()
    async with cluster.open_endpoint("a") as a, cluster.open_endpoint("b") as b:
        cluster.cut_off.add(a.address)
        await a.send(b.address, b"from a")
        await b.send(a.address, b"to a")
        cluster.cut_off.clear()
        await a.send(b.address, b"healed")
        await b.send(a.address, b"healed too")
        assert await b.receive() == b"healed"
        assert await a.receive() == b"healed too"


async def test_duplicate_endpoint_id_is_an_error() -> None:
    cluster = MemoryCluster()
    async with cluster.open_endpoint("a"):
        with pytest.raises(TransportError, match="already open"):
            async with cluster.open_endpoint("a"):
                pass  # pragma: no cover
    async with cluster.open_endpoint("a") as again:  # free again once closed
        assert again.address == "a"


async def test_small_max_message_size() -> None:
    cluster = MemoryCluster(max_message_size=10)
    async with cluster.open_endpoint("a") as a:
        assert a.max_message_size == 10
        await a.send(a.address, b"x" * 10)
        with pytest.raises(MessageTooLargeError):
            a.send_nowait(a.address, b"x" * 11)
        assert await a.receive() == b"x" * 10
    with pytest.raises(TransportClosedError):
        await a.receive()
