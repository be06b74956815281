"""The ``dashboard`` plugin: registers the ``dashboard`` silo service.

Found through the ``trio_grains`` entry point once ``trio-grains-dashboard`` is
installed; a silo starts it with ``[services.dashboard] provider = "dashboard"``.
"""

from __future__ import annotations

from trio_grains import ProviderRegistry, hookimpl
from trio_grains.hookspecs import ServiceFactory

from ._service import open_dashboard

__all__ = ["grains_register_services"]


@hookimpl
def grains_register_services(registry: ProviderRegistry[ServiceFactory]) -> None:
    registry.register("dashboard", open_dashboard)
