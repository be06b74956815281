"""A silo trusts no message on its endpoint (the in-memory cluster; the same rules against a
real nats-server and an independent client are in plugins/nats/tests/hostile/).

Reply addresses, replies and cancels bound to their call, limits, the remotely callable
surface, and the counters and rate-limited warnings of what was dropped.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from trio_grains import (
    ActivationOverloadedError,
    Grain,
    GrainCallTimeoutError,
    GrainIdError,
    GrainInterface,
    GrainMethodError,
    ProviderConfig,
    SerializationError,
    SiloConfig,
    grain_type,
    open_silo,
)
from trio_grains._cluster import envelope as env
from trio_grains._logging import LogThrottle
from trio_grains.testing import TestCluster, open_test_cluster

EVENTS: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()


class CounterGrain(Grain):
    def __init__(self) -> None:
        self.value = 0

    async def add(self, n: int) -> int:
        self.value += n
        return self.value

    async def slow(self, seconds: float) -> str:
        await trio.sleep(seconds)
        EVENTS.append(f"slow {self.primary_key} done")
        return "done"


@grain_type("account")
class IAccount(GrainInterface):
    async def balance(self) -> int: ...


@grain_type("account")
class AccountGrain(Grain, IAccount):
    async def balance(self) -> int:
        return 10

    async def reset_everything(self) -> None:  # public, but not in the interface
        EVENTS.append("reset")


def _silo_address(cluster: TestCluster, n: int = 0) -> str:
    assert cluster.silos[n].cluster is not None
    return cluster.silos[n].cluster.messenger.transport.address


def _dropped(cluster: TestCluster, reason: str, n: int = 0) -> int:
    return cluster.silos[n].statistics().dropped_messages[reason]


def _decode(data: bytes) -> env.Request | env.Reply | env.Cancel:
    return env.decode(data, env.Limits(lambda address: True))


async def _host_of(cluster: TestCluster, grain_id: str) -> int:
    """The index of the silo where *grain_id* is active."""
    for n, silo in enumerate(cluster.silos):
        if any(str(a.grain_id) == grain_id for a in silo.catalog.activations()):
            return n
    raise AssertionError(f"{grain_id} is active nowhere")


# --- reply addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply_to",
    [
        "$JS.API.STREAM.PURGE.ORDERS",
        "$KV.grains-storage.counter",
        "not-an-endpoint",
        "x" * 5000,
        "*",
    ],
)
async def test_a_request_naming_a_foreign_reply_address_is_dropped_and_counted(
    reply_to: str,
) -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        address = _silo_address(cluster)
        args = msgpack.packb({"n": 5})
        sent_before = cluster.silos[0].cluster.messenger.sent  # type: ignore[union-attr]
        async with cluster.memory.open_endpoint("rogue") as rogue:
            bad = env.encode_request(7, reply_to, "counter/v", "add", args, None, 0, 0)
            await rogue.send(address, bad)
            await trio.testing.wait_all_tasks_blocked()
        assert _dropped(cluster, "reply_address") == 1
        assert cluster.silos[0].cluster.messenger.sent == sent_before  # type: ignore[union-attr]
        # the grain never ran: its state is as it was
        assert await cluster.get_grain(CounterGrain, "v").add(0) == 0


async def test_replies_go_to_endpoints_of_the_cluster() -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        async with cluster.memory.open_endpoint("caller") as caller:
            request = env.encode_request(
                7, caller.address, "counter/v", "add", msgpack.packb({"n": 5}), None, 0, 0
            )
            await caller.send(_silo_address(cluster), request)
            with trio.fail_after(5):
                reply = _decode(await caller.receive())
        assert isinstance(reply, env.Reply)
        assert (reply.call_id, reply.status, msgpack.unpackb(reply.payload)) == (7, env.OK, 5)
        assert _dropped(cluster, "reply_address") == 0


async def test_a_membership_row_with_a_foreign_address_is_never_sent_to() -> None:
    async with open_test_cluster(2, grains=[CounterGrain]) as cluster:
        messenger = cluster.silos[0].cluster.messenger  # type: ignore[union-attr]
        good = cluster.silos[1].silo_id
        assert messenger.address_of(good) == _silo_address(cluster, 1)
        rows = {"forged": "$JS.API.STREAM.PURGE.ORDERS", good: _silo_address(cluster, 1)}
        messenger._address_of = rows.get  # a membership view with a forged row
        assert messenger.address_of("forged") is None


# --- replies and cancels are bound to their call ------------------------------------------------


async def test_call_ids_are_random() -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        messenger = cluster.silos[0].cluster.messenger  # type: ignore[union-attr]
        ids = {messenger._new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert min(ids) > 2**40  # not a counter from 1
    assert max(ids) < 2**64


async def test_a_forged_reply_never_reaches_the_caller() -> None:
    async with open_test_cluster(2, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        client = cluster.client
        await client.get_grain(CounterGrain, "s").add(1)  # placed somewhere
        client_address = client._messenger.transport.address  # type: ignore[union-attr]
        results: list[str] = []

        async def call() -> None:
            results.append(await client.get_grain(CounterGrain, "s").slow(1.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()  # the call waits for its reply
            (call_id,) = client._messenger._pending  # type: ignore[union-attr]
            forged_value = msgpack.packb("forged")
            async with cluster.memory.open_endpoint("rogue") as rogue:
                # guessed ids, and the right id from a silo the call did not go to
                for guess in [1, 2, 3, 1000, call_id + 1]:
                    await rogue.send(
                        client_address, env.encode_reply(guess, env.OK, forged_value, "silo-0")
                    )
                await rogue.send(
                    client_address, env.encode_reply(call_id, env.OK, forged_value, "rogue")
                )
        assert results == ["done"]
        assert client.statistics().dropped_messages["unexpected_reply"] == 6


async def test_a_forged_cancel_cancels_nothing() -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        results: list[str] = []

        async def call() -> None:
            results.append(await cluster.get_grain(CounterGrain, "c").slow(0.5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()  # the turn is running
            client_address = cluster.client._messenger.transport.address  # type: ignore[union-attr]
            async with cluster.memory.open_endpoint("rogue") as rogue:
                for guess in range(1, 200):
                    await rogue.send(
                        _silo_address(cluster), env.encode_cancel(guess, client_address)
                    )
        assert results == ["done"]
        assert EVENTS == ["slow c done"]


# --- limits ---------------------------------------------------------------------------------


async def test_an_over_long_key_is_refused_at_once_and_on_the_wire() -> None:
    config = SiloConfig(max_key_length=64)
    async with open_test_cluster(1, grains=[CounterGrain], config=config) as cluster:
        assert cluster.memory is not None
        silo = cluster.silos[0]
        with pytest.raises(GrainIdError, match="64"):
            silo.get_grain(CounterGrain, "k" * 65)
        assert await silo.get_grain(CounterGrain, "k" * 64).add(1) == 1
        async with cluster.memory.open_endpoint("caller") as caller:
            request = env.encode_request(
                9, caller.address, "counter/" + "k" * 65, "add", msgpack.packb({"n": 1}),
                None, 0, 0,
            )  # fmt: skip
            await caller.send(_silo_address(cluster), request)
            with trio.fail_after(5):
                reply = _decode(await caller.receive())
        assert isinstance(reply, env.Reply)
        assert reply.status == env.ERROR
        assert isinstance(silo.codec.decode_exception(reply.payload), GrainIdError)
        assert silo.statistics().activations == 1


async def test_a_full_mailbox_answers_overloaded_and_runs_nothing_more() -> None:
    config = SiloConfig(max_queued_calls=3)
    async with open_test_cluster(1, grains=[CounterGrain], config=config) as cluster:
        silo = cluster.silos[0]
        ref = silo.get_grain(CounterGrain, "busy")
        outcomes: list[Any] = []

        async def call(n: int) -> None:
            try:
                outcomes.append(await ref.add(n))
            except ActivationOverloadedError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.slow, 0.2)  # holds the turn
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(6):
                nursery.start_soon(call, 1)
        refused = [o for o in outcomes if isinstance(o, ActivationOverloadedError)]
        assert len(refused) == 3
        assert "max_queued_calls" in str(refused[0])
        assert sorted(o for o in outcomes if isinstance(o, int)) == [1, 2, 3]
        assert await ref.add(0) == 3  # the refused calls never ran
        assert silo.statistics().waiting_callers == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", False),
        ("call_id", True),
        ("call_id", 0),
        ("call_id", -1),
        ("call_id", "1"),
        ("timeout", math.nan),
        ("timeout", -1.0),
        ("timeout", math.inf),
        ("timeout", True),
        ("hops", -1),
        ("hops", 10**6),
        ("flags", 1 << 8),
        ("flags", True),
        ("method", ""),
        ("method", "m" * 201),
        ("trace", {str(i): "x" for i in range(100)}),
        ("args", "not bytes"),
    ],
)
async def test_a_malformed_request_is_dropped_and_costs_only_itself(
    field: str, value: object
) -> None:
    fields: dict[str, Any] = {
        "kind": env.REQUEST,
        "call_id": 5,
        "reply_to": "",
        "grain_id": "counter/m",
        "method": "add",
        "args": msgpack.packb({"n": 1}),
        "timeout": None,
        "hops": 0,
        "flags": 0,
        "trace": None,
    }
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        ref = cluster.get_grain(CounterGrain, "m")
        assert await ref.add(10) == 10
        fields[field] = value
        async with cluster.memory.open_endpoint("rogue") as rogue:
            fields["reply_to"] = rogue.address
            await rogue.send(_silo_address(cluster), msgpack.packb(list(fields.values())))
            await trio.testing.wait_all_tasks_blocked()
        assert _dropped(cluster, "malformed") == 1
        assert await ref.add(1) == 11  # the activation and its state survived


async def test_arguments_that_do_not_decode_are_an_error_reply_and_counted() -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        silo = cluster.silos[0]
        async with cluster.memory.open_endpoint("caller") as caller:
            for call_id, args in enumerate([{"n": "5"}, {"n": True}, {"n": 1.5}], 1):
                request = env.encode_request(
                    call_id, caller.address, "counter/d", "add", msgpack.packb(args), None, 0, 0
                )
                await caller.send(_silo_address(cluster), request)
                with trio.fail_after(5):
                    reply = _decode(await caller.receive())
                assert isinstance(reply, env.Reply)
                error = silo.codec.decode_exception(reply.payload)
                assert isinstance(error, SerializationError)
                assert "argument 'n' of add()" in str(error)
        assert silo.statistics().decode_failures == 3
        assert await cluster.get_grain(CounterGrain, "d").add(0) == 0  # never ran


async def test_an_expired_deadline_gets_a_timeout_error() -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        async with cluster.memory.open_endpoint("caller") as caller:
            request = env.encode_request(
                3, caller.address, "counter/t", "add", msgpack.packb({"n": 1}), 0.0, 0, 0
            )
            await caller.send(_silo_address(cluster), request)
            with trio.fail_after(5):
                reply = _decode(await caller.receive())
        assert isinstance(reply, env.Reply)
        error = cluster.silos[0].codec.decode_exception(reply.payload)
        assert isinstance(error, GrainCallTimeoutError)
        assert await cluster.get_grain(CounterGrain, "t").add(0) == 0


async def test_malformed_floods_are_counted_exactly_and_logged_rarely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_cluster(1, grains=[CounterGrain]) as cluster:
        assert cluster.memory is not None
        caplog.set_level(logging.WARNING, logger="trio_grains.remote")
        async with cluster.memory.open_endpoint("rogue") as rogue:
            for i in range(10_000):
                await rogue.send(_silo_address(cluster), b"\xc1%d" % i)
                if i % 1000 == 0:
                    await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
        assert _dropped(cluster, "malformed") == 10_000
        records = [r for r in caplog.records if r.name == "trio_grains.remote"]
        assert 1 <= len(records) <= 5
        assert await cluster.get_grain(CounterGrain, "f").add(2) == 2


def test_the_log_throttle_reports_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("test.throttle"), interval=3600)
    caplog.set_level(logging.WARNING, logger="test.throttle")
    for i in range(5):
        throttle.warning("bad %d", i)
    assert [r.getMessage() for r in caplog.records] == ["bad 0"]
    throttle._next = 0.0  # the interval passed
    throttle.warning("bad %d", 5)
    assert caplog.records[-1].getMessage() == "bad 5 (and 4 more like it not logged)"


# --- the remotely callable surface ------------------------------------------------------------


async def test_only_interface_methods_are_callable_from_other_processes() -> None:
    async with open_test_cluster(2, grains=[AccountGrain]) as cluster:
        client = cluster.client
        account = client.get_grain(AccountGrain, "a")
        assert await account.balance() == 10
        with pytest.raises(GrainMethodError, match="reset_everything"):
            await account.reset_everything()
        with pytest.raises(GrainMethodError):
            await client.call("account/a", "reset_everything")
        assert EVENTS == []
        # inside the silo that hosts it, the grain's own public methods stay callable
        host = cluster.silos[await _host_of(cluster, "account/a")]
        await host.get_grain(AccountGrain, "a").reset_everything()
        assert EVENTS == ["reset"]


async def test_a_grain_without_interfaces_exposes_its_public_methods() -> None:
    async with open_test_cluster(2, grains=[CounterGrain]) as cluster:
        assert await cluster.client.call("counter/p", "add", {"n": 3}) == 3
        with pytest.raises(GrainMethodError):
            await cluster.client.call("counter/p", "_private")


@grain_type("watcher")
class IWatcher(GrainInterface):
    async def watch(self) -> None: ...


@grain_type("watcher")
class WatcherGrain(Grain, IWatcher):
    async def watch(self) -> None:
        stream = self.get_stream_provider().get_stream("prices", "x")
        await stream.subscribe(self.on_price)

    async def on_price(self, price: int) -> None:
        EVENTS.append(f"price {price}")


async def test_an_explicit_stream_handler_must_be_declared_by_the_interface() -> None:
    config = SiloConfig(streams={"default": ProviderConfig(provider="memory")})
    async with open_silo(config, grains=[WatcherGrain]) as silo:
        with pytest.raises(GrainMethodError, match="declare it in one of them"):
            await silo.get_grain(WatcherGrain, "w").watch()
