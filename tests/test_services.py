"""Silo services (``grains_register_services`` / ``[services.*]``): run beside a silo
while it serves, with the silo at hand; unknown names fail at start."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import trio

from trio_grains import (
    Grain,
    PluginError,
    ProviderConfig,
    ProviderRegistry,
    SiloConfig,
    hookimpl,
    open_silo,
)
from trio_grains.hookspecs import ServiceContext, ServiceFactory

EVENTS: list[str] = []


class PingGrain(Grain):
    async def ping(self) -> str:
        return "pong"


@contextlib.asynccontextmanager
async def open_probe(context: ServiceContext, options: Mapping[str, Any]) -> AsyncIterator[None]:
    silo = context.silo
    EVENTS.append(f"start {context.name} every={options['every']}")
    # it can call grains: the silo serves when services start
    EVENTS.append(await silo.get_grain(PingGrain, "p").ping())
    async with trio.open_nursery() as nursery:

        async def tick() -> None:
            while True:
                await trio.sleep(options["every"])
                EVENTS.append(f"activations {silo.statistics().activations}")

        nursery.start_soon(tick)
        try:
            yield
        finally:
            EVENTS.append(f"stop {context.name}")
            nursery.cancel_scope.cancel()


class ProbePlugin:
    @hookimpl
    def grains_register_services(self, registry: ProviderRegistry[ServiceFactory]) -> None:
        registry.register("probe", open_probe)


def config(provider: str = "probe") -> SiloConfig:
    probe = ProviderConfig(provider=provider, options={"every": 1.0})
    return SiloConfig(services={"watch": probe})


async def test_a_service_runs_beside_the_silo_while_it_serves(
    autojump_clock: trio.abc.Clock,
) -> None:
    EVENTS.clear()
    async with open_silo(config(), grains=[PingGrain], plugins=[ProbePlugin()]):
        assert EVENTS == ["start watch every=1.0", "pong"]
        await trio.sleep(2.5)
    assert EVENTS[2:] == ["activations 1", "activations 1", "stop watch"]


async def test_an_unknown_service_fails_at_start_listing_the_known_ones() -> None:
    with pytest.raises(PluginError, match=r"probee.*probe"):
        async with open_silo(config("probee"), grains=[PingGrain], plugins=[ProbePlugin()]):
            pass
