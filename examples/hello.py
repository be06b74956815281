"""A first trio-grains program: shopping carts as grains, called concurrently.

Run it with ``.venv/bin/python examples/hello.py`` (after ``python3 dev.py test`` or
``python3 dev.py demo`` created the venv).
"""

from __future__ import annotations

import trio
import trio.lowlevel

from trio_grains import Grain, open_silo, read_only


class CartGrain(Grain):
    """One shopping cart per user, activated on first use."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}

    async def add(self, item: str, quantity: int = 1) -> int:
        await trio.lowlevel.checkpoint()  # a turn may await; no other turn of this cart runs
        self.items[item] = self.items.get(item, 0) + quantity
        return sum(self.items.values())

    @read_only
    async def contents(self) -> dict[str, int]:
        return dict(sorted(self.items.items()))


async def main() -> None:
    async with open_silo(grains=[CartGrain]) as silo:
        async with trio.open_nursery() as nursery:
            for user in ("bob65", "alice", "carol"):
                cart = silo.get_grain(CartGrain, user)
                for _ in range(100):  # 100 concurrent callers per cart
                    nursery.start_soon(cart.add, "apple")
                nursery.start_soon(cart.add, "pear", 2)
        for user in ("bob65", "alice", "carol"):
            cart = silo.get_grain(CartGrain, user)
            print(f"{cart.grain_id}: {await cart.contents()}")
        stats = silo.statistics()
        print(f"{stats.activations} activations: {dict(stats.activations_by_type)}")


if __name__ == "__main__":
    trio.run(main)
