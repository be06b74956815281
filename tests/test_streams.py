"""Streams: implicit and explicit subscriptions, per-key order, acks, retries, dead letters,
redelivery across silos, rewind, statistics and configuration errors (on Trio's MockClock)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_grains import (
    ConfigError,
    DeadLetter,
    EncodedItem,
    Grain,
    GrainTypeError,
    PluginError,
    ProviderConfig,
    ProviderContext,
    ProviderRegistry,
    ReceivedItem,
    RejectedItemError,
    SequenceToken,
    SiloConfig,
    SiloUnavailableError,
    StreamError,
    StreamId,
    hookimpl,
    implicit_subscription,
    open_silo,
    partition_for,
)
from trio_grains._builtin.memory_streams import MemoryStreamAdapter
from trio_grains._serialization import Codec, make_converter
from trio_grains._streams.agent import encode_dead_letter


@attrs.frozen
class Order:
    id: int
    amount: float = 0.0


HANDLED: list[tuple[str, Any, SequenceToken]] = []
STARTED: list[tuple[str, Any]] = []
LETTERS: list[DeadLetter] = []
ACTIVATED: list[str] = []
STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    for collection in (HANDLED, STARTED, LETTERS, ACTIVATED):
        collection.clear()
    STATE.clear()
    STATE["gate"] = trio.Event()
    STATE["running"] = 0
    STATE["peak"] = 0


def streams(provider: str = "memory", **options: Any) -> SiloConfig:
    opts = {"partitions": 4, **options}
    return SiloConfig(streams={"default": ProviderConfig(provider=provider, options=opts)})


async def until(predicate: Callable[[], bool], limit: float = 600) -> None:
    """Poll *predicate* (statistics, lists) until it holds; fail after *limit* seconds."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling values, not waiting for one event
            await trio.sleep(0.01)


@implicit_subscription("orders")
class OrderGrain(Grain):
    async def on_activate(self) -> None:
        ACTIVATED.append(self.primary_key)

    async def on_stream_item(self, item: Order, token: SequenceToken) -> None:
        assert isinstance(item, Order)
        HANDLED.append((self.primary_key, item.id, token))
        STATE["running"] += 1
        STATE["peak"] = max(STATE["peak"], STATE["running"])
        try:
            await trio.sleep(STATE.get("sleep", 0) * (1 + item.id % 3))
        finally:
            STATE["running"] -= 1


@implicit_subscription("blocking")
class BlockingGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        STARTED.append((self.primary_key, item))
        await STATE["gate"].wait()
        HANDLED.append((self.primary_key, item, token))


@implicit_subscription("payments")
class FlakyGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        STARTED.append((self.primary_key, (item, trio.current_time())))
        if item < 0:
            raise ValueError(f"bad amount {item}")
        HANDLED.append((self.primary_key, item, token))


@implicit_subscription("checked")
class PickyGrain(Grain):
    """Rejects negative items; raises SiloUnavailableError while ``STATE["down"]`` > 0."""

    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        STARTED.append((self.primary_key, (item, trio.current_time())))
        if item < 0:
            raise RejectedItemError(f"negative item {item}")
        if STATE.get("down", 0) > 0:
            STATE["down"] -= 1
            raise SiloUnavailableError("its silo died (a failover in progress)")
        HANDLED.append((self.primary_key, item, token))


@implicit_subscription("dead-letters")
class DeadLetterGrain(Grain):
    async def on_stream_item(self, letter: DeadLetter, token: SequenceToken) -> None:
        LETTERS.append(letter)


class WatcherGrain(Grain):
    async def on_activate(self) -> None:
        ACTIVATED.append(self.primary_key)

    async def watch(self, key: str) -> str:
        stream = self.get_stream_provider().get_stream("prices", key)
        handle = await stream.subscribe(self.on_price)
        assert handle.grain_id == self.grain_id
        return handle.subscription_id

    async def on_price(self, price: float, token: SequenceToken) -> None:
        HANDLED.append((self.primary_key, price, token))

    async def stop_watching(self, key: str) -> int:
        stream = self.get_stream_provider().get_stream("prices", key)
        mine = [h for h in await stream.get_subscriptions() if h.grain_id == self.grain_id]
        for handle in mine:
            assert await handle.unsubscribe()
        return len(mine)

    async def leave(self) -> None:
        self.deactivate_on_idle()


def shared_plugin(adapter: MemoryStreamAdapter) -> object:
    @contextlib.asynccontextmanager
    async def open_shared(ctx: ProviderContext, options: Mapping[str, Any]) -> AsyncIterator[Any]:
        assert not options, options  # the core's options never reach the adapter
        yield adapter

    class Shared:
        @hookimpl
        def grains_register_streams(self, registry: ProviderRegistry[Any]) -> None:
            registry.register("shared", open_shared)

    return Shared()


# --- implicit subscriptions ----------------------------------------------------------------


async def test_implicit_subscription_activates_per_key_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(streams(), grains=[OrderGrain]) as silo:
        provider = silo.get_stream_provider()
        published = {}
        for n in range(5):
            for key in ("alice", 42):
                token = await provider.get_stream("orders", key).publish(Order(n))
                published[(str(key), n)] = token
        await until(lambda: len(HANDLED) == 10)
        assert sorted(ACTIVATED) == ["2A", "alice"]  # int keys encode as grain keys do
        for key in ("alice", "2A"):
            mine = [(n, token) for k, n, token in HANDLED if k == key]
            assert [n for n, _ in mine] == list(range(5))
            assert [t for _, t in mine] == sorted(t for _, t in mine)
        assert {(k, n): t for k, n, t in HANDLED} == {
            (k if k != "42" else "2A", n): t for (k, n), t in published.items()
        }
        assert silo.statistics().activations_by_type == {"order": 2}


async def test_many_keys_run_in_parallel_and_keep_their_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    STATE["sleep"] = 1.0
    async with open_silo(streams(partitions=2), grains=[OrderGrain]) as silo:
        provider = silo.get_stream_provider()
        start = trio.current_time()
        for n in range(4):
            for key in range(30):
                await provider.get_stream("orders", key).publish(Order(n))
        await until(lambda: len(HANDLED) == 120)
        elapsed = trio.current_time() - start
        # a key's fourth item starts after 1+2+3 s; one key after the other would take 180 s
        assert 6 <= elapsed < 9
        assert STATE["peak"] > 2
        for key in range(30):
            assert [n for k, n, _ in HANDLED if k == f"{key:X}"] == [0, 1, 2, 3]


async def test_concurrent_keys_and_held_items_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = streams(partitions=1, max_concurrent_keys=3, max_in_flight=6, batch_size=2)
    async with open_silo(config, grains=[BlockingGrain]) as silo:
        provider = silo.get_stream_provider()
        await provider.set_owned_partitions(set())
        for key in range(20):
            await provider.get_stream("blocking", key).publish(key)
        await provider.set_owned_partitions({0})
        await trio.sleep(10)
        assert len(STARTED) == 3  # three keys at a time
        stats = provider.statistics()
        assert stats.in_flight == 6  # the window: the rest waits in the adapter
        assert stats.lag == {0: 14}
        STATE["gate"].set()
        await until(lambda: len(HANDLED) == 20)
        await until(lambda: provider.statistics().acked == 20)
        assert provider.statistics().in_flight == 0


# --- acknowledgement, redelivery -------------------------------------------------------------


async def test_ack_only_after_the_handler_returned(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams(), grains=[BlockingGrain]) as silo:
        provider = silo.get_stream_provider()
        adapter = silo.provider("streams", "default")
        token = await provider.get_stream("blocking", "k").publish(1)
        await until(lambda: len(STARTED) == 1)
        await trio.sleep(100)  # longer than the adapter's ack wait: in_progress keeps it
        entry = adapter._partitions[token.partition].log[token.sequence]
        assert not entry.settled
        assert entry.deliveries == 1
        assert provider.statistics().in_flight == 1
        assert provider.statistics().acked == 0
        STATE["gate"].set()
        await until(lambda: provider.statistics().acked == 1)
        assert entry.settled
        assert [("k", 1, token)] == HANDLED


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_items_held_by_a_stopped_silo_go_to_the_next_one(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    adapter = MemoryStreamAdapter(partitions=2)
    config = streams("shared", drain_timeout=2)
    config = attrs.evolve(
        config, streams={"default": ProviderConfig(provider="shared", options={"drain_timeout": 2})}
    )
    plugins = [shared_plugin(adapter)]
    with trio.move_on_after(50):
        async with open_silo(config, grains=[BlockingGrain], plugins=plugins) as silo:
            stream = silo.get_stream_provider().get_stream("blocking", "k")
            first = await stream.publish(1)
            await until(lambda: len(STARTED) == 1)
            if how == "cancel":
                await trio.sleep_forever()
    stopped_at = trio.current_time()
    assert HANDLED == []
    STATE["gate"].set()
    async with open_silo(config, grains=[BlockingGrain], plugins=plugins) as silo:
        provider = silo.get_stream_provider()
        second = await provider.get_stream("blocking", "k").publish(2)
        await until(lambda: len(HANDLED) == 2)
        # given back at once (nak 0), not after the adapter's 30 s ack wait
        assert trio.current_time() - stopped_at < 1
        assert [("k", 1, first), ("k", 2, second)] == HANDLED
        assert STARTED == [("k", 1), ("k", 1), ("k", 2)]
        assert provider.statistics().redelivered == 1


async def test_failing_handler_retries_with_backoff_then_dead_letters(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = streams(max_deliveries=3, backoff=1.0, backoff_multiplier=2.0)
    async with open_silo(config, grains=[FlakyGrain, DeadLetterGrain]) as silo:
        provider = silo.get_stream_provider()
        stream = provider.get_stream("payments", "acct")
        start = trio.current_time()
        bad = await stream.publish(-5)
        await stream.publish(7)
        await until(lambda: len(HANDLED) == 1 and len(LETTERS) == 1)
        attempts = [at - start for key, (amount, at) in STARTED if amount == -5]
        assert attempts == pytest.approx([0, 1, 3], abs=0.05)  # backoff 1 s, then 2 s
        assert [(k, n) for k, n, _ in HANDLED] == [("acct", 7)]  # the key moved on after
        (letter,) = LETTERS
        assert letter.stream_id == StreamId("payments", "acct")
        assert letter.token == bad
        assert letter.attempts == 3
        assert "ValueError: bad amount -5" in letter.error
        assert "flaky/acct.on_stream_item" in letter.error  # which subscriber failed
        assert silo.codec.loads(letter.data, int) == -5
        stats = provider.statistics()
        assert (stats.failed, stats.redelivered, stats.dead_lettered) == (3, 2, 1)
        assert stats.acked == 2  # the good item and the dead letter
        adapter = silo.provider("streams", "default")
        assert adapter._partitions[bad.partition].log[bad.sequence].settled  # terminated
    assert "failed 3 times; dead-lettered" in caplog.text


async def test_an_undecodable_item_is_dead_lettered_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(streams(), grains=[OrderGrain, DeadLetterGrain]) as silo:
        stream = silo.get_stream_provider().get_stream("orders", "k")
        await stream.publish("not an order")
        await stream.publish(Order(1))
        await until(lambda: len(LETTERS) == 1 and len(HANDLED) == 1)
        assert LETTERS[0].attempts == 1
        assert "SerializationError" in LETTERS[0].error


async def test_a_rejected_item_is_dead_lettered_at_once_with_its_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(streams(max_deliveries=5), grains=[PickyGrain, DeadLetterGrain]) as silo:
        stream = silo.get_stream_provider().get_stream("checked", "k")
        await stream.publish(-1)
        await stream.publish(2)
        await until(lambda: len(LETTERS) == 1 and len(HANDLED) == 1)
        assert len(STARTED) == 2  # the rejected item ran once, not max_deliveries times
        assert LETTERS[0].attempts == 1
        assert "RejectedItemError: negative item -1" in LETTERS[0].error


async def test_an_unavailable_silo_does_not_use_up_the_deliveries(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    STATE["down"] = 6  # more failures than max_deliveries: a long failover
    config = streams(max_deliveries=2, backoff=1.0)
    async with open_silo(config, grains=[PickyGrain, DeadLetterGrain]) as silo:
        provider = silo.get_stream_provider()
        await provider.get_stream("checked", "k").publish(3)
        await until(lambda: len(HANDLED) == 1)
        assert len(STARTED) == 7
        assert LETTERS == []
        assert provider.statistics().dead_lettered == 0
    waiting = [r for r in caplog.records if "waits for the cluster" in r.getMessage()]
    assert len(waiting) == 1  # the first wait is logged, not every retry
    assert "not counted against max_deliveries" in waiting[0].getMessage()


async def test_publish_deduplicates_by_msg_id(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams(), grains=[OrderGrain]) as silo:
        stream = silo.get_stream_provider().get_stream("orders", "k")
        first = await stream.publish(Order(1), msg_id="order-1")
        again = await stream.publish(Order(1), msg_id="order-1")
        tokens = await stream.publish_batch([Order(2), Order(3)], msg_ids=["order-2", "order-1"])
        assert again == first
        assert tokens[1] == first
        await trio.sleep(5)
        assert [n for _, n, _ in HANDLED] == [1, 2]


# --- explicit subscriptions -----------------------------------------------------------------


async def test_explicit_subscription_survives_reactivation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_silo(streams(), grains=[WatcherGrain]) as silo:
        watcher = silo.get_grain(WatcherGrain, "w")
        stream = silo.get_stream_provider().get_stream("prices", "ACME")
        sub_id = await watcher.watch("ACME")
        await stream.publish(1.5)
        await until(lambda: len(HANDLED) == 1)
        await watcher.leave()
        await until(lambda: silo.statistics().activations == 0)
        await stream.publish(2.5)
        await until(lambda: len(HANDLED) == 2)
        assert ACTIVATED == ["w", "w"]  # the item activated the grain again
        assert [p for _, p, _ in HANDLED] == [1.5, 2.5]
        assert await watcher.watch("ACME") == sub_id  # subscribing again: the same one
        (handle,) = await stream.get_subscriptions()
        assert (handle.subscription_id, handle.method) == (sub_id, "on_price")
        assert await watcher.stop_watching("ACME") == 1
        await stream.publish(3.5)
        await trio.sleep(5)
        assert len(HANDLED) == 2
        assert await stream.get_subscriptions() == []


async def test_subscribe_items_from_plain_trio_code(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams()) as silo:
        provider = silo.get_stream_provider()
        stream = provider.get_stream("orders", 7)
        got = []
        async with stream.subscribe_items(Order) as items:
            await stream.publish_batch([Order(1), Order(2), Order(3)])
            async for order, token in items:
                assert provider.statistics().acked == len(got)  # acked once the body is done
                got.append((order, token.partition))
                if order.id == 3:
                    break
        partition = partition_for(StreamId("orders", 7), 4)
        assert got == [(Order(n), partition) for n in (1, 2, 3)]
        await until(lambda: provider.statistics().acked == 3)
        assert provider.statistics().subscriptions == 0
        await stream.publish(Order(4))  # nobody listens: acked all the same
        await until(lambda: provider.statistics().acked == 4)


async def test_subscribe_a_plain_callable(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams()) as silo:
        stream = silo.get_stream_provider().get_stream("orders", "x")
        seen: list[Order] = []

        async def on_order(order: Order) -> None:  # the token is optional
            seen.append(order)

        handle = await stream.subscribe(on_order)
        await stream.publish(Order(1))
        await until(lambda: len(seen) == 1)
        assert await handle.unsubscribe() is True
        assert await handle.unsubscribe() is False
        await stream.publish(Order(2))
        await trio.sleep(5)
        assert seen == [Order(1)]


async def test_rewind_from_a_token(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams(), grains=[OrderGrain]) as silo:
        provider = silo.get_stream_provider()
        stream = provider.get_stream("orders", "r")
        tokens = [await stream.publish(Order(n)) for n in range(5)]
        await provider.get_stream("orders", "other").publish(Order(99))
        await until(lambda: len(HANDLED) == 6)
        got = []
        async with stream.subscribe_items(Order, from_token=tokens[2]) as items:
            await stream.publish(Order(5))
            async for order, token in items:
                got.append((order.id, token))
                if order.id == 5:
                    break
        assert [n for n, _ in got] == [2, 3, 4, 5]
        assert [t for _, t in got[:3]] == tokens[2:]
        assert [n for k, n, _ in HANDLED if k == "r"] == [0, 1, 2, 3, 4, 5]  # live ones once

        wrong = SequenceToken((tokens[0].partition + 1) % 4, tokens[0].sequence)
        with pytest.raises(StreamError, match="lives in partition"):
            await stream.subscribe(OrderGrain.on_stream_item, from_token=wrong)


async def test_rewind_needs_an_adapter_that_reads_from_a_sequence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoRewind(MemoryStreamAdapter):
        supports_read_from = False

    config = attrs.evolve(streams(), streams={"default": ProviderConfig(provider="shared")})
    async with open_silo(config, plugins=[shared_plugin(NoRewind())]) as silo:
        stream = silo.get_stream_provider().get_stream("orders", "r")
        token = await stream.publish(Order(1))
        with pytest.raises(StreamError, match="cannot rewind: subscribe without from_token"):
            async with stream.subscribe_items(from_token=token):
                pass


# --- partitions and statistics ----------------------------------------------------------------


async def test_only_owned_partitions_are_pulled(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams(), grains=[OrderGrain]) as silo:
        provider = silo.get_stream_provider()
        keys = {partition_for(StreamId("orders", k), 4): k for k in map(str, range(50))}
        await provider.set_owned_partitions({0, 1})
        for partition in range(4):
            await provider.get_stream("orders", keys[partition]).publish(Order(partition))
        await trio.sleep(5)
        assert sorted(n for _, n, _ in HANDLED) == [0, 1]
        assert provider.statistics().owned_partitions == {0, 1}
        await provider.set_owned_partitions({2, 3})
        await until(lambda: len(HANDLED) == 4)
        with pytest.raises(ValueError, match=r"out of range 0\.\.3"):
            await provider.set_owned_partitions({4})


async def test_statistics(autojump_clock: trio.testing.MockClock) -> None:
    async with open_silo(streams(max_deliveries=2, backoff=0.5), grains=[FlakyGrain]) as silo:
        provider = silo.get_stream_provider()
        stats = provider.statistics()
        assert (stats.provider, stats.partitions, stats.owned_partitions) == (
            "default",
            4,
            frozenset(range(4)),
        )
        assert stats.delivered == stats.acked == stats.in_flight == 0
        for amount in (1, 2, -1):
            await provider.get_stream("payments", "p").publish(amount)
        await until(lambda: provider.statistics().dead_lettered == 1)
        stats = provider.statistics()
        assert stats.delivered == 2
        assert stats.failed == 2
        assert stats.redelivered == 1
        assert stats.acked == 3  # the two good items, and the dead letter (no subscriber)
        assert stats.in_flight == 0
        assert stats.lag[partition_for(StreamId("payments", "p"), 4)] == 0
        assert repr(provider) == "<StreamProvider 'default' MemoryStreamAdapter>"


# --- configuration -----------------------------------------------------------------------


async def test_unknown_stream_provider_lists_the_available_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown stream provider 'kafka'; available: .*memory"):
        async with open_silo(streams("kafka")):
            pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_deliveries": 0}, r"\[streams.default\] option 'max_deliveries' must be an integer"),
        ({"backoff": "1s"}, r"option 'backoff' must be a number >= 0, got '1s'"),
        ({"backoff_multiplier": 0.5}, r"option 'backoff_multiplier' must be a number >= 1"),
        ({"dead_letter_namespace": "a.b"}, r"option 'dead_letter_namespace' must be"),
        ({"partitions": "8"}, r"option 'partitions' must be an integer >= 1, got '8'"),
        ({"ack_wait": 0}, r"option 'ack_wait' must be a positive number of seconds"),
        ({"partitoins": 8}, r"has no option 'partitoins'; options: .*max_deliveries.*partitions"),
    ],
)
async def test_option_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        async with open_silo(streams(**options)):
            pass


async def test_implicit_subscription_needs_a_configured_provider() -> None:
    @implicit_subscription("orders", provider="events")
    class EventGrain(Grain):
        async def on_stream_item(self, item: int, token: SequenceToken) -> None:
            pass

    with pytest.raises(ConfigError, match=r"stream provider 'events', which is not configured"):
        async with open_silo(streams(), grains=[EventGrain]):
            pass


def test_implicit_subscription_needs_the_handler() -> None:
    with pytest.raises(GrainTypeError, match="has no grain method 'on_order'"):

        @implicit_subscription("orders", handler="on_order")
        class NoHandlerGrain(Grain):
            async def on_stream_item(self, item: int, token: SequenceToken) -> None:
                pass

    with pytest.raises(StreamError, match=r"namespace 'or\.ders' is not valid"):
        implicit_subscription("or.ders")


async def test_asking_for_a_missing_stream_provider() -> None:
    class AskingGrain(Grain):
        async def ask(self) -> None:
            self.get_stream_provider("nope")

    async with open_silo(streams(), grains=[AskingGrain]) as silo:
        with pytest.raises(ConfigError, match="no streams provider named 'x' is configured"):
            silo.get_stream_provider("x")
        with pytest.raises(ConfigError, match=r"no stream provider named 'nope' .* default"):
            await silo.get_grain(AskingGrain, 1).ask()


def test_stream_ids() -> None:
    assert str(StreamId("orders", 42)) == "orders/2A"
    assert StreamId("orders", 42) == StreamId("orders", "2A")
    assert StreamId.parse("orders/a/b") == StreamId("orders", "a/b")
    assert StreamId("a", "x") < StreamId("b", "a")
    with pytest.raises(StreamError, match="not valid"):
        StreamId("has space", "k")
    with pytest.raises(ValueError, match="must not be empty"):
        StreamId("orders", "")
    assert SequenceToken(1, 5) < SequenceToken(1, 7) < SequenceToken(2, 1)
    assert str(SequenceToken(3, 9)) == "3:9"


async def test_a_failing_receive_is_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(MemoryStreamAdapter):
        failures = 2

        async def receive(self, partition: int, max_items: int) -> list[Any]:
            if self.failures:
                self.failures -= 1
                raise StreamError("backend down")
            return await super().receive(partition, max_items)

    config = attrs.evolve(streams(), streams={"default": ProviderConfig(provider="shared")})
    with caplog.at_level(logging.ERROR, "trio_grains.streams"):
        async with open_silo(
            config, grains=[OrderGrain], plugins=[shared_plugin(Flaky(partitions=1))]
        ) as silo:
            await silo.get_stream_provider().get_stream("orders", "k").publish(Order(1))
            await until(lambda: len(HANDLED) == 1)
    assert "receive from partition 0 failed" in caplog.text


# --- dead letters and items nobody should trust --------------------------------------------


def shared(adapter: MemoryStreamAdapter, **options: Any) -> tuple[SiloConfig, object]:
    """A silo config on *adapter* (the core's *options* beside it) and its plugin."""
    config = SiloConfig(streams={"default": ProviderConfig(provider="shared", options=options)})
    return config, shared_plugin(adapter)


class Recording(MemoryStreamAdapter):
    """Records what is published to the dead-letter namespace; receives items without
    their msg ids (as an independent publisher's come), and items of the namespace
    ``garbage`` as items it could not read."""

    def __init__(self, *, limit: int | None = None, fail_letters: int = 0) -> None:
        super().__init__(partitions=4)
        self.letters: list[EncodedItem] = []
        self.limit = limit
        self.fail_letters = fail_letters  # letters stored, then an error (a lost ack)

    @property
    def max_item_size(self) -> int | None:
        return self.limit

    async def publish_batch(
        self, stream_id: StreamId, partition: int, items: Sequence[EncodedItem]
    ) -> list[SequenceToken]:
        tokens = await super().publish_batch(stream_id, partition, items)
        if stream_id.namespace == "dead-letters":
            self.letters += items
            if self.fail_letters:
                self.fail_letters -= 1
                raise StreamError("the publish ack was lost")
        return tokens

    async def receive(self, partition: int, max_items: int) -> list[ReceivedItem]:
        items = await super().receive(partition, max_items)
        return [
            attrs.evolve(
                item,
                msg_id="",
                stream_id=ReceivedItem.UNREADABLE,
                unreadable=f"namespace of item {item.token} is garbage",
            )
            if item.stream_id.namespace == "garbage"
            else attrs.evolve(item, msg_id="")
            for item in items
        ]


async def test_items_without_msg_ids_get_distinct_dead_letters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = Recording()
    config, plugin = shared(adapter)
    async with open_silo(config, grains=[PickyGrain, DeadLetterGrain], plugins=[plugin]) as silo:
        provider = silo.get_stream_provider()
        tokens = [
            await provider.get_stream("checked", f"k{n % 3}").publish(-n - 1) for n in range(30)
        ]
        await until(lambda: len(LETTERS) == 30)
        assert sorted(letter.token for letter in LETTERS) == sorted(tokens)
        assert {letter.msg_id for letter in LETTERS} == {""}
        ids = [item.msg_id for item in adapter.letters]
        assert sorted(ids) == sorted(f"dead-letter:{t.partition}:{t.sequence}" for t in tokens)
        assert provider.statistics().dead_lettered == 30


async def test_a_dead_letter_published_again_keeps_its_msg_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    adapter = Recording(fail_letters=1)
    config, plugin = shared(adapter, backoff=1.0)
    async with open_silo(config, grains=[PickyGrain, DeadLetterGrain], plugins=[plugin]) as silo:
        provider = silo.get_stream_provider()
        token = await provider.get_stream("checked", "k").publish(-1)
        await provider.get_stream("checked", "k").publish(2)
        await until(lambda: len(HANDLED) == 1 and provider.statistics().in_flight == 0)
        await trio.sleep(5)
        # published twice (the item came back after the first try), stored and handled once
        assert [item.msg_id for item in adapter.letters] == [f"dead-letter:{token}"] * 2
        assert [letter.token for letter in LETTERS] == [token]
        assert provider.statistics().dead_lettered == 1


async def test_a_dead_letter_too_large_for_the_provider_is_a_reference(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = Recording(limit=4096)
    config, plugin = shared(adapter)
    async with open_silo(config, grains=[OrderGrain, DeadLetterGrain], plugins=[plugin]) as silo:
        provider = silo.get_stream_provider()
        stream = provider.get_stream("orders", "big")
        big = await stream.publish("x" * 3500)  # not an Order: dead-lettered at once
        small = await stream.publish("tiny")
        await stream.publish(Order(1))
        await until(lambda: len(LETTERS) == 2 and len(HANDLED) == 1)
        reference, whole = sorted(LETTERS, key=lambda letter: letter.token)
        assert (reference.token, reference.truncated, reference.data) == (big, True, b"")
        assert reference.size == len(silo.codec.dumps("x" * 3500))
        assert "SerializationError" in reference.error
        assert (whole.token, whole.truncated, silo.codec.loads(whole.data)) == (
            small,
            False,
            "tiny",
        )
        assert whole.size == len(whole.data)
        assert all(item.size() <= 4096 - 1024 for item in adapter.letters)
        stats = provider.statistics()
        assert (stats.dead_lettered, stats.dead_letters_truncated, stats.in_flight) == (2, 1, 0)
    assert "published as a reference" in caplog.text


def test_a_reference_cuts_the_error_to_fit() -> None:
    codec = Codec(make_converter())
    item = ReceivedItem(StreamId("orders", "k"), b"d" * 5000, "m" * 5000, SequenceToken(1, 9))
    encoded = encode_dead_letter(codec, item, 3, "why? " * 2000, 1000)
    assert encoded is not None
    letter_item, truncated = encoded
    assert truncated
    assert 900 < letter_item.size() <= 1000
    letter = codec.loads(letter_item.data, DeadLetter)
    assert (letter.stream_id, letter.token, letter.data, letter.size) == (
        item.stream_id,
        item.token,
        b"",
        5000,
    )
    assert letter.msg_id == "m" * 197 + "..."
    assert letter.error.startswith("why? why?")
    assert letter.error.endswith("...")
    assert letter_item.headers["error"].endswith("...")
    assert encode_dead_letter(codec, item, 3, "why?", 100) is None  # nothing fits: logged
    # with room, the whole letter
    whole, truncated = encode_dead_letter(codec, item, 3, "why?", None) or (None, True)
    assert whole is not None
    assert not truncated
    assert codec.loads(whole.data, DeadLetter).data == item.data


async def test_unreadable_items_are_dead_lettered_counted_and_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = Recording()
    config, plugin = shared(adapter)
    async with open_silo(config, grains=[OrderGrain, DeadLetterGrain], plugins=[plugin]) as silo:
        provider = silo.get_stream_provider()
        bad = [await provider.get_stream("garbage", f"g{n}").publish(n) for n in range(3)]
        await provider.get_stream("orders", "k").publish(Order(1))
        await until(lambda: len(LETTERS) == 3 and len(HANDLED) == 1)
        assert sorted(letter.token for letter in LETTERS) == sorted(bad)
        for letter in LETTERS:
            assert letter.stream_id == ReceivedItem.UNREADABLE
            assert letter.attempts == 0
            assert letter.error == f"namespace of item {letter.token} is garbage"
        stats = provider.statistics()
        # delivered: the good item, and the three dead letters to DeadLetterGrain
        assert (stats.unreadable, stats.dead_lettered, stats.delivered) == (3, 3, 4)
        assert ACTIVATED == ["k"]  # nobody was called with them
    lines = [r for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(lines) == 1
