"""Streams, attacked by an independent publisher (security review, items 8 and 10).

Anyone allowed to publish on the stream's subjects can put anything there: items without
a ``Nats-Msg-Id``, items as large as the server takes, items on partitions that do not
exist, subjects whose tokens do not parse, payloads that do not decode. The attacker here
is the plugin's own :class:`trio_grains_nats.Connection` publishing raw messages (no
trio-grains runtime code); the victim is a silo with a ``jetstream`` stream provider on
a nats-server of its own whose ``max_payload`` is small (64 KiB).

Every test checks that the harm did not happen (nothing lost, nothing kept forever,
nothing redelivered forever, the agent still delivers good items afterwards) and that
the event was counted in the stream provider's ``statistics()``. Conditions are waited
for with deadlines, never with fixed sleeps.

And the defaults: the stream provider's subjects cannot capture the ``nats`` clustering
provider's calls, and a configuration where they would is refused.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import cattrs
import msgpack
import pytest
from _hostile import wait_until
from nats.js.api import AckPolicy, ConsumerConfig
from trio_grains_nats import Connection, JetStreamError, PublishItem, connect
from trio_grains_nats.streams import (
    DEFAULT_PREFIX,
    open_jetstream_stream_adapter,
    parse_options,
    stream_subjects,
    subjects_overlap,
)
from trio_grains_nats.testing import run_nats_server

from trio_grains import (
    ConfigError,
    DeadLetter,
    EncodedItem,
    Grain,
    ProviderConfig,
    ProviderContext,
    ReceivedItem,
    RejectedItemError,
    SequenceToken,
    Silo,
    SiloConfig,
    StreamError,
    StreamId,
    StreamStatistics,
    escape_token,
    implicit_subscription,
    open_silo,
    partition_for,
)

MAX_PAYLOAD = 64 * 1024
PARTITIONS = 4
NAMESPACE = "hsitems"

ITEMS: list[tuple[str, int]] = []
LETTERS: list[DeadLetter] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    ITEMS.clear()
    LETTERS.clear()


@implicit_subscription(NAMESPACE)
class HsSinkGrain(Grain):
    """Records the items of its key; refuses negative ones (dead-lettered at once)."""

    async def on_stream_item(self, item: int) -> None:
        if item < 0:
            raise RejectedItemError(f"negative item {item}")
        ITEMS.append((self.primary_key, item))


@implicit_subscription("dead-letters")
class HsLetterGrain(Grain):
    async def on_stream_item(self, letter: DeadLetter) -> None:
        LETTERS.append(letter)


@pytest.fixture(scope="module")
def small_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of the module's own whose max_payload is 64 KiB."""
    directory = tmp_path_factory.mktemp("nats-hostile-streams")
    with run_nats_server(directory, jetstream=True, config=f"max_payload: {MAX_PAYLOAD}\n") as url:
        yield url


@attrs.frozen
class Env:
    """The victim silo and the attacker's connection."""

    silo: Silo
    attacker: Connection
    prefix: str

    @property
    def stream(self) -> str:
        return self.prefix.upper()

    def stats(self) -> StreamStatistics:
        return self.silo.get_stream_provider().statistics()

    def subject(self, key: str, namespace: str = NAMESPACE) -> str:
        """The subject a silo would publish an item of ``(namespace, key)`` on."""
        partition = partition_for(StreamId(namespace, key), PARTITIONS)
        return f"{self.prefix}.{namespace}.{partition}.{escape_token(key)}"

    async def stored(self, filter_subject: str) -> int:
        """Messages of the stream on subjects matching *filter_subject*."""
        js = self.attacker.jetstream()
        name = f"count-{uuid.uuid4().hex[:8]}"
        config = ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            filter_subject=filter_subject,
            mem_storage=True,
            inactive_threshold=30.0,
        )
        info = await js.add_consumer(self.stream, config)
        await js.delete_consumer(self.stream, name)
        return info.num_pending or 0

    async def settled(self) -> bool:
        """No item of the stream waits for a consumer, or for an ack."""
        js = self.attacker.jetstream()
        for n in range(PARTITIONS):
            info = await js.consumer_info(self.stream, f"{self.prefix}-p{n}")
            if info.num_ack_pending or info.num_pending:
                return False
        return True

    async def redelivered(self) -> int:
        js = self.attacker.jetstream()
        total = 0
        for n in range(PARTITIONS):
            info = await js.consumer_info(self.stream, f"{self.prefix}-p{n}")
            total += info.num_redelivered or 0
        return total


@contextlib.asynccontextmanager
async def open_env(url: str) -> AsyncIterator[Env]:
    prefix = f"hs{uuid.uuid4().hex[:8]}"
    options = {"servers": [url], "prefix": prefix, "partitions": PARTITIONS, "backoff": 0.05}
    config = SiloConfig.from_dict(
        {"streams": {"default": {"provider": "jetstream", "options": options}}}
    )
    async with (
        open_silo(config, grains=[HsSinkGrain, HsLetterGrain]) as silo,
        connect(url, name="attacker") as attacker,
    ):
        yield Env(silo, attacker, prefix)


async def until(condition: Callable[[], Any], within: float = 60.0) -> None:
    """Poll *condition* (sync, or async returning a bool) until it holds."""
    await wait_until(condition, within=within)


# --- dead letters ---------------------------------------------------------------------------


async def test_failing_items_without_msg_ids_get_one_dead_letter_each(small_url: str) -> None:
    """Dead letters used the item's msg id: 500 items without one shared a dead-letter id,
    and the stream's duplicate window kept 1 of 500."""
    async with open_env(small_url) as env:
        js = env.attacker.jetstream()
        batch = [PublishItem(env.subject(f"k{n % 10}"), msgpack.packb(-n - 1)) for n in range(500)]
        acks = await js.publish_many(batch)  # no Nats-Msg-Id
        assert len({ack.seq for ack in acks}) == 500
        await until(lambda: env.stats().dead_lettered == 500 and len(LETTERS) == 500)
        assert {letter.msg_id for letter in LETTERS} == {""}
        tokens = {letter.token.sequence for letter in LETTERS}
        assert tokens == {ack.seq for ack in acks}
        assert await env.stored(f"{env.prefix}.dead-letters.*.*") == 500
        await until(env.settled)
        assert env.stats().in_flight == 0


async def test_an_item_near_max_payload_is_dead_lettered_once_as_a_reference(
    small_url: str,
) -> None:
    """Its whole dead letter (the item and the error) was larger than max_payload: the
    publish failed every time, and the item came back forever."""
    async with open_env(small_url) as env:
        js = env.attacker.jetstream()
        payload = msgpack.packb("x" * (MAX_PAYLOAD - 500))  # a str: not an int, undecodable
        subject = env.subject("big")
        ack = await js.publish(subject, payload)
        await js.publish(subject, msgpack.packb(7))
        await until(lambda: ITEMS == [("big", 7)] and len(LETTERS) == 1)
        (letter,) = LETTERS
        partition = partition_for(StreamId(NAMESPACE, "big"), PARTITIONS)
        assert letter.token == SequenceToken(partition, ack.seq)
        assert (letter.truncated, letter.data, letter.size) == (True, b"", len(payload))
        assert "SerializationError" in letter.error
        await until(env.settled)  # the original was terminated, not given back
        stats = env.stats()
        assert (stats.dead_lettered, stats.dead_letters_truncated) == (1, 1)
        assert stats.redelivered == 0
        assert await env.redelivered() == 0
        assert await env.stored(f"{env.prefix}.dead-letters.*.*") == 1


async def test_publishing_an_item_over_max_payload_is_a_stream_error(small_url: str) -> None:
    """Not a ValueError from the client, nor a connection the server closes."""
    context = ProviderContext("default", "s", "dev", cattrs.Converter())
    options = {"servers": [small_url], "prefix": f"hs{uuid.uuid4().hex[:8]}", "partitions": 2}
    async with open_jetstream_stream_adapter(context, options) as adapter:
        sid = StreamId(NAMESPACE, "k")
        partition = partition_for(sid, 2)
        assert adapter.max_item_size < MAX_PAYLOAD
        near = EncodedItem(b"x" * (adapter.max_item_size - 10), "m-0")
        assert near.size() <= adapter.max_item_size
        await adapter.publish_batch(sid, partition, [near])
        over = EncodedItem(b"x" * MAX_PAYLOAD, "m-1")
        with pytest.raises(StreamError, match="max_payload"):
            await adapter.publish_batch(sid, partition, [over])
        (token,) = await adapter.publish_batch(sid, partition, [EncodedItem(b"1", "m-2")])
        assert token.partition == partition


# --- subjects that are not the provider's -----------------------------------------------------


async def test_unknown_partitions_and_other_shapes_are_not_stored(small_url: str) -> None:
    """The stream's subjects were ``<prefix>.*.*.*``: partition 99 of 4 was stored and kept
    forever, with no consumer to see it. Now the stream does not take it."""
    async with open_env(small_url) as env:
        js = env.attacker.jetstream()
        p = env.prefix
        wrong = [
            f"{p}.{NAMESPACE}.99.k",
            f"{p}.{NAMESPACE}.{PARTITIONS}.k",
            f"{p}.{NAMESPACE}.x.k",
            f"{p}.{NAMESPACE}.-1.k",
            f"{p}.{NAMESPACE}.1",
            f"{p}.{NAMESPACE}.1.k.extra",
        ]
        for subject in wrong:
            with pytest.raises(JetStreamError, match="no JetStream stream listens"):
                await js.publish(subject, msgpack.packb(1))
            await env.attacker.publish(subject, msgpack.packb(1))  # plain: goes nowhere
        await js.publish(env.subject("k"), msgpack.packb(5))
        await until(lambda: ITEMS == [("k", 5)])
        assert (await js.stream_info(env.stream)).state.messages == 1
        stats = env.stats()
        assert (stats.unreadable, stats.dead_lettered, stats.failed) == (0, 0, 0)


async def test_unreadable_and_undecodable_items_are_dead_lettered_and_counted(
    small_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A namespace that is not valid or a key that does not unescape: the adapter logged
    every one and terminated it. A payload that does not decode: a dead letter at once.
    The agent goes on delivering the partition's good items."""
    caplog.set_level(logging.WARNING, "trio_grains.streams")
    async with open_env(small_url) as env:
        js = env.attacker.jetstream()
        good = env.subject("k")
        partition = good.split(".")[2]
        p = env.prefix
        unreadable = [
            f"{p}.bad!ns.{partition}.k",  # not a namespace
            f"{p}.{NAMESPACE}.{partition}.%ZZ",  # not an escape
            f"{p}.{NAMESPACE}.{partition}.%00",  # a control character
        ]
        for subject in unreadable:
            await js.publish(subject, msgpack.packb(1))
        garbage = await js.publish(good, b"\xc1")  # never valid msgpack
        await js.publish(good, msgpack.packb(5))
        await until(lambda: ITEMS == [("k", 5)] and len(LETTERS) == 4)
        by_stream = sorted(LETTERS, key=lambda letter: letter.token)
        for letter, subject in zip(by_stream[:3], unreadable, strict=True):
            assert letter.stream_id == ReceivedItem.UNREADABLE
            assert repr(subject) in letter.error
            assert letter.attempts == 0
        undecodable = by_stream[3]
        assert undecodable.stream_id == StreamId(NAMESPACE, "k")
        assert undecodable.token.sequence == garbage.seq
        assert "SerializationError" in undecodable.error
        await until(env.settled)
        stats = env.stats()
        assert (stats.unreadable, stats.dead_lettered) == (3, 4)
        assert await env.redelivered() == 0
    lines = [r for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(lines) == 1  # logged once, counted three times


# --- defaults that cannot overlap the cluster's subjects ---------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("grains.*.*.*", "grains.dev.>", True),  # the old defaults
        ("grains.*.0.*", "grains.dev.>", True),
        ("grains-streams.*.0.*", "grains.dev.>", False),  # the new ones
        ("grains.orders.*.*.*", "grains.dev.>", False),
        ("grains.*.0.*", "grains.dev.silo.>", False),  # silo is no partition number
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("a.*", "a.>", True),
        ("a.>", "a", False),
        ("*.x", "y.*", True),
    ],
)
def test_subjects_overlap(a: str, b: str, overlap: bool) -> None:
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap


def test_the_default_subjects_do_not_overlap_the_default_cluster_subjects() -> None:
    config = parse_options("default", {})
    assert config.prefix == DEFAULT_PREFIX
    assert stream_subjects(config)[:2] == ["grains-streams.*.0.*", "grains-streams.*.1.*"]
    for subject in stream_subjects(config):
        assert not subjects_overlap(subject, "grains.dev.>")


def _context(clustering: ProviderConfig | None) -> ProviderContext:
    """A provider context that carries the silo's [clustering] table."""
    if "clustering" in attrs.fields_dict(ProviderContext):
        return ProviderContext(  # type: ignore[call-arg]
            "default", "s", "prod", cattrs.Converter(), clustering=clustering
        )

    @attrs.frozen
    class WithClustering(ProviderContext):
        clustering: ProviderConfig | None = None

    return WithClustering("default", "s", "prod", cattrs.Converter(), clustering)


@pytest.mark.parametrize(
    ("stream_options", "cluster_options", "refused"),
    [
        ({"prefix": "grains"}, {}, True),  # grains.*.N.* captures grains.prod.silo.<id>
        ({"prefix": "grains.prod"}, {}, True),
        ({}, {}, False),
        ({"prefix": "calls"}, {"subject_prefix": "calls.prod"}, True),
        ({"prefix": "grains"}, {"subject_prefix": "rpc.prod"}, False),
        ({"prefix": "grains.orders"}, {}, False),
    ],
)
async def test_a_stream_that_would_capture_the_cluster_s_calls_is_refused(
    small_url: str,
    stream_options: dict[str, Any],
    cluster_options: dict[str, Any],
    refused: bool,
) -> None:
    clustering = ProviderConfig(
        provider="nats", options={"servers": [small_url], **cluster_options}
    )
    options = {"servers": [small_url], "partitions": 2, **stream_options}
    opening = open_jetstream_stream_adapter(_context(clustering), options)
    if refused:
        with pytest.raises(ConfigError, match=r"change option 'prefix' of \[streams.default\]"):
            async with opening:
                pass  # pragma: no cover
    else:
        async with opening as adapter:
            assert adapter.partitions() == 2


async def test_a_silo_whose_stream_would_capture_its_calls_does_not_start(small_url: str) -> None:
    config = SiloConfig.from_dict(
        {
            "cluster_id": "prod",
            "clustering": {"provider": "nats", "options": {"servers": [small_url]}},
            "streams": {
                "default": {
                    "provider": "jetstream",
                    "options": {"servers": [small_url], "prefix": "grains", "partitions": 2},
                }
            },
        }
    )
    with pytest.raises(ConfigError, match=r"grains\.prod\.>.*'prefix' of \[streams.default\]"):
        async with open_silo(config, grains=[HsSinkGrain]):
            pass  # pragma: no cover
