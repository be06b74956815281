"""Victim grains of the hostile-client suite, importable by the test process and by the
silo processes it starts (``_hostile_silo.py``).

* :class:`CounterGrain` implements the declared interface :class:`ICounter` (``add``,
  ``get``) and has methods outside it: ``undeclared`` (public, not declared) and ``_x``
  (private). Its count lives in memory: a lost activation shows as a count back at 0.
* :class:`VaultGrain` keeps a string in persistent state (``vault``, on the ``default``
  storage: nats-kv in the suite's silos).
* :class:`TypedGrain` takes a ``str`` and an ``int`` parameter and counts how often it ran.
* :class:`SlowGrain` sleeps (for calls in flight) and says where it runs.
* :class:`RelayGrain` calls a :class:`SlowGrain`: a call pending on the silo that hosts it.
* :class:`SinkGrain` records the items of the ``hitems`` stream it receives (in
  :data:`SINK_ITEMS`, per key, in this process).
"""

from __future__ import annotations

import attrs
import trio

from trio_grains import Grain, GrainInterface, grain_type, implicit_subscription, persistent_state

__all__ = [
    "SINK_ITEMS",
    "SLEEPING",
    "STREAM_NAMESPACE",
    "CounterGrain",
    "ICounter",
    "RelayGrain",
    "SinkGrain",
    "SlowGrain",
    "TypedGrain",
    "Vault",
    "VaultGrain",
]

STREAM_NAMESPACE = "hitems"
SINK_ITEMS: dict[str, list[int]] = {}
SLEEPING: list[str] = []  # keys of SlowGrains whose sleep() has begun (in this process)


def _silo_id(grain: Grain) -> str:
    return grain.runtime_identity


@grain_type("hcounter")
class ICounter(GrainInterface):
    """The declared interface: only these are callable from other processes (issue 13)."""

    async def add(self, n: int) -> int: ...

    async def get(self) -> int: ...


@grain_type("hcounter")
class CounterGrain(Grain, ICounter):
    def __init__(self) -> None:
        self.count = 0

    async def add(self, n: int) -> int:
        self.count += n
        return self.count

    async def get(self) -> int:
        return self.count

    async def undeclared(self) -> int:
        """Public but not in :class:`ICounter`: not callable from outside."""
        self.count = -1_000_000
        return self.count

    async def _x(self) -> int:
        self.count = -2_000_000
        return self.count


@attrs.define
class Vault:
    secret: str = ""


@grain_type("hvault")
class VaultGrain(Grain):
    vault = persistent_state(Vault)

    async def put(self, secret: str) -> None:
        self.vault.state.secret = secret
        await self.vault.write()

    async def read(self) -> str:
        return self.vault.state.secret

    async def reread(self) -> str:
        """The stored value, read again from storage (not the activation's copy)."""
        await self.vault.read()
        return self.vault.state.secret


@grain_type("htyped")
class TypedGrain(Grain):
    def __init__(self) -> None:
        self.ran = 0
        self.last: object = None

    async def text(self, value: str) -> str:
        self.ran += 1
        self.last = value
        return value

    async def number(self, value: int) -> int:
        self.ran += 1
        self.last = value
        return value

    async def runs(self) -> int:
        return self.ran


@grain_type("hslow")
class SlowGrain(Grain):
    def __init__(self) -> None:
        self.finished = 0

    async def sleep(self, seconds: float) -> str:
        SLEEPING.append(self.primary_key)
        await trio.sleep(seconds)
        self.finished += 1
        return "done"

    async def done(self) -> int:
        return self.finished

    async def where(self) -> str:
        return _silo_id(self)


@grain_type("hrelay")
class RelayGrain(Grain):
    async def relay(self, key: str, seconds: float) -> str:
        return await self.get_grain(SlowGrain, key).sleep(seconds)

    async def where(self) -> str:
        return _silo_id(self)


@grain_type("hsink")
@implicit_subscription(STREAM_NAMESPACE)
class SinkGrain(Grain):
    async def on_stream_item(self, item: int) -> None:
        SINK_ITEMS.setdefault(self.primary_key, []).append(item)
