"""The reference application's grains (trio_grains_orders.app) on a cluster over a real
nats-server and JetStream: every order processed once in effect, totals per customer,
invalid and undecodable orders in the dead letters while processing goes on."""

from __future__ import annotations

import datetime
import uuid
from collections import Counter
from pathlib import Path

import trio
from trio_grains_orders import app

from trio_grains import ClientConfig, ProviderConfig, SiloConfig, open_client
from trio_grains.testing import open_test_cluster

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def order(i: int, customer: str, **changes: object) -> app.Order:
    lines = (app.OrderLine("sku-1", 2, 150), app.OrderLine("sku-2", 1, 100 + i))
    fields = {
        "id": f"o{i}",
        "customer": customer,
        "lines": lines,
        "amount": sum(line.quantity * line.price for line in lines),
        "created": NOW,
    }
    fields.update(changes)
    return app.Order(**fields)  # type: ignore[arg-type]


async def test_orders_are_processed_once_and_bad_ones_reach_the_dead_letters(
    nats_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    clustering = ProviderConfig(provider="nats", options={"servers": nats_url})
    streams = {
        "default": ProviderConfig(
            provider="jetstream",
            options={
                "servers": [nats_url],
                "prefix": f"t{tag}",
                "partitions": 4,
                "max_deliveries": 2,
                "backoff": 0.01,
            },
        )
    }
    sqlite = ProviderConfig(provider="sqlite", options={"path": str(tmp_path / "orders.db")})
    config = SiloConfig(
        cluster_id=f"t{tag}",
        heartbeat_interval=0.2,
        dead_after=1.0,
        storage={"default": sqlite},
        reminders=ProviderConfig(provider="sqlite", options={"path": str(tmp_path / "r.db")}),
        streams=streams,
    )
    customers = ["ann", "bob", "cid"]
    orders = [order(i, customers[i % 3]) for i in range(60)]
    invalid = {
        "o900": order(900, "ann", amount=1),  # not the sum of its lines
        "o901": order(901, ""),  # no customer
    }
    async with open_test_cluster(
        2, grains=app.GRAINS, clustering=clustering, config=config, client=False
    ):
        client_config = ClientConfig(
            cluster_id=config.cluster_id, clustering=clustering, streams=streams
        )
        async with open_client(client_config) as client:
            provider = client.get_stream_provider()
            for o in orders + list(invalid.values()):
                await provider.get_stream("orders", o.id).publish(o, msg_id=o.id)
            for o in orders[:5]:  # published again: deduplicated by the order id
                await provider.get_stream("orders", o.id).publish(o, msg_id=o.id)
            await provider.get_stream("orders", "o999").publish("not an order")

            refs = {o.id: client.get_grain(app.IOrder, o.id) for o in orders}
            with trio.fail_after(60):
                while True:
                    states = {oid: await ref.status() for oid, ref in refs.items()}
                    if all(s.status == "processed" for s in states.values()):
                        break
                    await trio.sleep(0.1)
            assert Counter(s.deliveries for s in states.values()) == Counter({1: len(orders)})
            for name in customers:
                totals = await client.get_grain(app.ICustomer, name).totals()
                mine = [o for o in orders if o.customer == name]
                assert totals.orders == len(mine)
                assert totals.total == sum(o.amount for o in mine)
            with trio.fail_after(30):
                while True:
                    letters = {
                        oid: await client.get_grain(app.IDeadLetters, oid).reasons()
                        for oid in [*invalid, "o999"]
                    }
                    if all(letters.values()):
                        break
                    await trio.sleep(0.1)
            assert "not the sum of the lines" in letters["o900"][0]
            assert "no customer" in letters["o901"][0]
            assert "cannot decode" in letters["o999"][0]
            assert (await client.get_grain(app.IOrder, "o900").status()).status == "new"
