"""Where a grain's activation is, or should be: the directory, its cache, and placement.

Silos and clients both locate grains the same way (:meth:`Locator.locate`):

1. the per-endpoint directory cache, if its entry's silo is not known to be dead;
2. else the directory itself; an entry of a dead (or departed) silo is stale and is
   removed, so the grain can be activated again;
3. else placement: the grain class's strategy (or the configured default) picks one of the
   ``ACTIVE`` silos that host the grain type, by the membership view. An endpoint that
   does not host the class (a client, or a silo without it) cannot know its strategy: it
   sends the call to any hosting silo with the ``LOCATE`` flag, and that silo places it,
   as an Orleans gateway does.

May import: the core up to the catalog and the dispatcher, and the cluster modules below it
(``envelope``, ``membership``, ``directory``, ``transport``, ...). Not routing.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .._exceptions import SiloUnavailableError
from .._grain import GrainClassRegistry
from .._ids import GrainId
from .._placement import (
    PlacementRegistry,
    PlacementStrategy,
    PlacementTarget,
    PreferLocalPlacement,
    SiloInfo,
)
from .directory import CachedDirectory, DirectoryCache, GrainDirectory
from .envelope import LOCATE
from .membership import MembershipTable
from .silo_entries import MembershipView, SiloStatus

__all__ = ["Locator"]


class Locator:
    """One endpoint's view of the cluster: membership, cached directory, placement."""

    def __init__(
        self,
        *,
        membership: MembershipTable,
        directory: GrainDirectory,
        placement: PlacementRegistry,
        default_strategy: PlacementStrategy,
        hosted: GrainClassRegistry | None,
        self_id: str | None,
        local_load: Callable[[], int] = lambda: 0,
        on_gone: Callable[[str, MembershipView], None] | None = None,
    ) -> None:
        self.membership = membership
        self.directory = CachedDirectory(directory, DirectoryCache())
        self.placement = placement
        self.default_strategy = default_strategy
        self.hosted = hosted
        self.self_id = self_id
        self.local_load = local_load
        self.view = MembershipView()
        #: called with each silo that died or left, whichever path adopted the view that
        #: says so (the membership watch, or a re-read by :meth:`alive`): calls waiting on
        #: it must fail now, not at their response timeout
        self.on_gone = on_gone
        self._random = random.Random()

    # -- the membership view ------------------------------------------------------------------

    def set_view(self, view: MembershipView) -> list[str]:
        """Adopt *view* (if newer); return the silos that died or left since the last one."""
        if view.version < self.view.version:
            return []
        old = self.view
        self.view = view
        gone = [
            silo_id
            for silo_id, entry in old.entries.items()
            if entry.alive and view.status_of(silo_id) in (None, SiloStatus.DEAD)
        ]
        for silo_id in gone:
            self.directory.cache.invalidate_silo(silo_id)
            if self.on_gone is not None:
                self.on_gone(silo_id, view)
        return gone

    def address_of(self, silo_id: str) -> str | None:
        entry = self.view.get(silo_id)
        return None if entry is None or not entry.alive else entry.address

    async def alive(self, silo_id: str) -> bool:
        """Is *silo_id* alive? A silo missing from our view may just be newer than it: ask
        the table before calling its entries stale."""
        status = self.view.status_of(silo_id)
        if status is None:
            self.set_view(await self.membership.snapshot())
            status = self.view.status_of(silo_id)
        return status is not None and status is not SiloStatus.DEAD

    # -- locating -----------------------------------------------------------------------------

    def cached(self, grain_id: GrainId) -> str | None:
        """The silo of *grain_id* by the directory cache, if that silo is not known to be
        dead (no I/O: :meth:`locate`'s first step, for the call path)."""
        cached = self.directory.cache.get(grain_id)
        if cached is not None:
            if self.view.status_of(cached.silo_id) not in (None, SiloStatus.DEAD):
                return cached.silo_id
            self.directory.cache.invalidate(grain_id)
        return None

    async def locate(self, grain_id: GrainId) -> tuple[str, int]:
        """``(silo_id, flags)``: where to send a call to *grain_id*."""
        silo_id = self.cached(grain_id)
        if silo_id is not None:
            return silo_id, 0
        return await self.locate_uncached(grain_id)

    async def locate_uncached(
        self, grain_id: GrainId, *, prefer_local: bool = False
    ) -> tuple[str, int]:
        """:meth:`locate` past a cache miss: the directory, else placement.

        When placement would put a new activation on this very silo, the directory lookup
        is skipped: the local activation registers (create-if-absent) before it runs, and
        if the grain is active elsewhere it loses that race and hands its calls to the
        winner. A new grain then costs one directory round trip instead of two.
        *prefer_local* places it here whatever the default strategy says (the caller
        checked that the class declares none of its own).
        """
        placed = None
        info = None if self.hosted is None else self.hosted.get(grain_id.type)
        if self.self_id is not None and info is not None:
            strategy = info.placement or self.default_strategy
            if prefer_local or (
                strategy.__class__ is PreferLocalPlacement
                and self.view.status_of(self.self_id) is SiloStatus.ACTIVE
            ):
                return self.self_id, 0  # (what the director would say, without asking)
            try:
                placed = self.place(grain_id)
            except SiloUnavailableError:
                pass  # (not active yet, say): the directory may still know it
            if placed is not None and placed[0] == self.self_id:
                return placed
        entry = await self.directory.lookup(grain_id, cached=False)
        if entry is not None:
            if await self.alive(entry.silo_id):
                return entry.silo_id, 0
            await self.directory.unregister(entry)  # a dead silo's: the grain may move
        return placed or self.place(grain_id)

    def candidates(self, grain_type: str) -> list[SiloInfo]:
        """The ``ACTIVE`` silos hosting *grain_type*, as placement directors see them."""
        return [
            SiloInfo(
                name=entry.silo_id,
                roles=entry.roles,
                activation_count=(
                    self.local_load() if entry.silo_id == self.self_id else entry.load
                ),
                is_local=entry.silo_id == self.self_id,
            )
            for entry in self.view.active()
            if grain_type in entry.grain_types
        ]

    def place(self, grain_id: GrainId) -> tuple[str, int]:
        grain_type = str(grain_id.type)
        silos = self.candidates(grain_type)
        if not silos:
            hosting = sorted({t for e in self.view.active() for t in e.grain_types})
            raise SiloUnavailableError(
                f"no active silo hosts grain type '{grain_type}' (for {grain_id}); active "
                f"silos host: {', '.join(hosting) or '(no silo is active)'}. Start a silo "
                "with that grain class, or check the cluster id and clustering options"
            )
        info = self.hosted.get(grain_id.type) if self.hosted is not None else None
        if info is None:
            # We cannot apply the class's strategy: a hosting silo places it for us.
            chosen = self._random.choice(silos)
            return chosen.name, (LOCATE if len(silos) > 1 else 0)
        strategy = info.placement or self.default_strategy
        return self.placement.choose_silo(strategy, PlacementTarget(grain_id), silos).name, 0
