"""Grains of the multi-process cluster tests (test_cluster_processes.py).

Imported by the silo and client scripts beside it (``_cluster_silo.py``,
``_cluster_client.py``), which run as ``python <script>`` with this directory first on
``sys.path``.

* :class:`CellGrain` (random placement) keeps a persistent :class:`Cell` in the shared
  sqlite storage. ``set(seq)`` is idempotent: a seq it has applied already is a no-op; the
  next one (``cell.seq + 1``) is applied; any other is a lost update and raises. Every
  activation counts itself and records its directory activation id in the state; as every
  write carries the ETag of the activation's last read or write, two activations of one
  grain living at the same time make one of them fail with ``InconsistentStateError``.
* :class:`RaceGrain` (prefer-local placement: every silo that calls it first tries to
  activate it itself) counts its activations and hits.
"""

from __future__ import annotations

import attrs

from trio_grains import (
    Grain,
    PreferLocalPlacement,
    grain_type,
    persistent_state,
    placement,
)


class LostUpdateError(Exception):
    """A ``set(seq)`` skipped a seq: an earlier successful one was lost."""


@attrs.define
class Cell:
    seq: int = 0  # the last seq applied
    count: int = 0  # how many seqs were applied (== seq unless an update was lost)
    activations: int = 0
    owner: str = ""  # the directory activation id of the activation that last activated


@attrs.frozen
class SetResult:
    silo: str  # the silo id of the activation that answered
    applied: bool  # False: this seq had been applied already (a retried call)


def _activation_id(grain: Grain) -> str:
    entry = grain._activation.directory_entry
    assert entry is not None, "a clustered activation is registered before on_activate"
    return entry.activation_id


def _silo_id(grain: Grain) -> str:
    return grain.runtime_identity


@grain_type("cell")
class CellGrain(Grain):
    cell = persistent_state(Cell, storage="shared")

    async def on_activate(self) -> None:
        self.cell.state.activations += 1
        self.cell.state.owner = _activation_id(self)
        await self.cell.write()  # ETag of the state it read: a concurrent twin fails here

    async def set(self, seq: int) -> SetResult:
        state = self.cell.state
        if seq <= state.seq:
            return SetResult(_silo_id(self), False)
        if seq != state.seq + 1:
            raise LostUpdateError(f"{self.grain_id}: set({seq}) after seq {state.seq}")
        state.seq = seq
        state.count += 1
        await self.cell.write()
        return SetResult(_silo_id(self), True)


@attrs.define
class Hits:
    activations: int = 0
    hits: int = 0


@attrs.frozen
class HitResult:
    hits: int
    activation: str
    silo: str


@grain_type("race")
@placement(PreferLocalPlacement())
class RaceGrain(Grain):
    tally = persistent_state(Hits, storage="shared")

    async def on_activate(self) -> None:
        self.tally.state.activations += 1
        await self.tally.write()

    async def hit(self) -> HitResult:
        self.tally.state.hits += 1
        await self.tally.write()
        return HitResult(self.tally.state.hits, _activation_id(self), _silo_id(self))
