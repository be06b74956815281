"""The ``jetstream`` stream provider against a real nats-server: the conformance kit,
silos delivering through it, dead letters, publish dedup, the embedded server, options."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cattrs
import msgpack
import pytest
import trio
from trio_grains_nats import connect
from trio_grains_nats.streams import (
    JetStreamStreamAdapter,
    open_jetstream_stream_adapter,
    parse_options,
)
from trio_grains_nats.testing import run_nats_server

from trio_grains import (
    ConfigError,
    DeadLetter,
    EncodedItem,
    Grain,
    ProviderContext,
    SequenceToken,
    SiloConfig,
    StreamAdapter,
    StreamError,
    StreamId,
    implicit_subscription,
    open_silo,
    partition_for,
)
from trio_grains.testing import check_stream_adapter


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _context(name: str = "default") -> ProviderContext:
    return ProviderContext(name, "test-silo", "dev", cattrs.Converter())


@pytest.fixture(scope="module")
def kit_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own: the kit acks items of other namespaces it receives."""
    with run_nats_server(tmp_path_factory.mktemp("nats-streams"), jetstream=True) as url:
        yield url


def _options(url: str, tag: str, **extra: Any) -> dict[str, Any]:
    return {"servers": [url], "prefix": f"t{tag}", "partitions": 4, **extra}


async def until(predicate: Callable[[], bool], limit: float = 30) -> None:
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling values
            await trio.sleep(0.02)


async def test_conformance_kit(kit_url: str) -> None:
    options = _options(kit_url, _tag(), ack_wait=5)

    @contextlib.asynccontextmanager
    async def open_adapter() -> AsyncIterator[StreamAdapter]:
        async with open_jetstream_stream_adapter(_context(), options) as adapter:
            yield adapter

    await check_stream_adapter(open_adapter)


# --- a silo on the provider ---------------------------------------------------------------

HANDLED: list[tuple[str, int, SequenceToken]] = []
LETTERS: list[DeadLetter] = []
ATTEMPTS: list[int] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    for collection in (HANDLED, LETTERS, ATTEMPTS):
        collection.clear()


@implicit_subscription("jsorders")
class JsOrderGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        HANDLED.append((self.primary_key, item, token))


@implicit_subscription("jspayments")
class JsFlakyGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        if item < 0:
            ATTEMPTS.append(item)
            raise ValueError(f"bad amount {item}")
        HANDLED.append((self.primary_key, item, token))


@implicit_subscription("dead-letters")
class JsDeadLetterGrain(Grain):
    async def on_stream_item(self, letter: DeadLetter, token: SequenceToken) -> None:
        LETTERS.append(letter)


def _silo_config(url: str, tag: str, **extra: Any) -> SiloConfig:
    return SiloConfig.from_dict(
        {"streams": {"default": {"provider": "jetstream", "options": _options(url, tag, **extra)}}}
    )


async def _pending_acks(url: str, stream: str, partitions: int, prefix: str) -> int:
    async with connect(url) as nc:
        js = nc.jetstream()
        total = 0
        for n in range(partitions):
            info = await js.consumer_info(stream, f"{prefix}-p{n}")
            total += (info.num_ack_pending or 0) + (info.num_pending or 0)
        return total


async def test_silo_delivers_in_order_per_key_and_acks(nats_url: str) -> None:
    tag = _tag()
    keys = ["a", "b.c", 7, "d e*>/ü"]
    async with open_silo(_silo_config(nats_url, tag), grains=[JsOrderGrain]) as silo:
        provider = silo.get_stream_provider()
        published: dict[str, list[SequenceToken]] = {}
        for n in range(25):
            for key in keys:
                stream = provider.get_stream("jsorders", key)
                token = await stream.publish(n)
                published.setdefault(stream.stream_id.key, []).append(token)
        await until(lambda: len(HANDLED) == 25 * len(keys))
        for key, tokens in published.items():
            mine = [(n, t) for k, n, t in HANDLED if k == key]
            assert [n for n, _ in mine] == list(range(25)), key
            assert [t for _, t in mine] == tokens
        await until(lambda: provider.statistics().acked == 25 * len(keys))
        await until(lambda: provider.statistics().in_flight == 0)
    # acks reached the server: nothing pending on the durable consumers
    assert await _pending_acks(nats_url, f"T{tag.upper()}", 4, f"t{tag}") == 0


async def test_failing_handler_dead_letters_and_the_key_moves_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    tag = _tag()
    config = _silo_config(nats_url, tag, max_deliveries=3, backoff=0.05)
    async with open_silo(config, grains=[JsFlakyGrain, JsDeadLetterGrain]) as silo:
        provider = silo.get_stream_provider()
        stream = provider.get_stream("jspayments", "acct")
        bad = await stream.publish(-5)
        await stream.publish(7)
        await until(lambda: len(HANDLED) == 1 and len(LETTERS) == 1)
        assert ATTEMPTS == [-5, -5, -5]
        (letter,) = LETTERS
        assert letter.stream_id == StreamId("jspayments", "acct")
        assert letter.token == bad
        assert letter.attempts == 3
        assert "ValueError: bad amount -5" in letter.error
        await until(lambda: provider.statistics().in_flight == 0)
        assert provider.statistics().dead_lettered == 1
    assert await _pending_acks(nats_url, f"T{tag.upper()}", 4, f"t{tag}") == 0
    assert "dead-lettered" in caplog.text


async def test_publish_dedup_across_a_retry(nats_url: str) -> None:
    tag = _tag()
    async with open_jetstream_stream_adapter(_context(), _options(nats_url, tag)) as adapter:
        sid = StreamId("jsorders", "dedup")
        partition = partition_for(sid, adapter.partitions())
        items = [EncodedItem(b"1", f"m1-{tag}"), EncodedItem(b"2", f"m2-{tag}")]
        first = await adapter.publish_batch(sid, partition, items)
        # the publisher "retries" the whole batch plus a new item (e.g. after a timeout)
        again = await adapter.publish_batch(
            sid, partition, [*items, EncodedItem(b"3", f"m3-{tag}", {"h": "v"})]
        )
        assert again[:2] == first
        assert again[2].sequence > first[1].sequence
        got = await adapter.receive(partition, 10)
        with trio.move_on_after(1):
            while len(got) < 3:
                got += await adapter.receive(partition, 10)
        assert [i.data for i in got] == [b"1", b"2", b"3"]
        assert [i.token for i in got] == again
        assert got[2].headers == {"h": "v"}
        assert got[2].msg_id == f"m3-{tag}"
        await adapter.ack(got)
    async with open_silo(_silo_config(nats_url, tag), grains=[JsOrderGrain]) as silo:
        stream = silo.get_stream_provider().get_stream("jsorders", "k")
        one = await stream.publish(1, msg_id=f"order-1-{tag}")
        assert await stream.publish(1, msg_id=f"order-1-{tag}") == one
        await until(lambda: [n for k, n, _ in HANDLED if k == "k"] == [1])
        await trio.sleep(0.5)
        assert [n for k, n, _ in HANDLED if k == "k"] == [1]


async def test_cancelled_receive_loses_nothing(nats_url: str) -> None:
    tag = _tag()
    async with open_jetstream_stream_adapter(_context(), _options(nats_url, tag)) as adapter:
        sid = StreamId("jsorders", "c")
        partition = partition_for(sid, adapter.partitions())
        items = [EncodedItem(str(n).encode(), f"{tag}-{n}") for n in range(200)]
        await adapter.publish_batch(sid, partition, items)
        got: list[bytes] = []
        with trio.fail_after(20):
            while len(got) < 200:
                with trio.move_on_after(0.001):  # cancel receives at random points
                    batch = await adapter.receive(partition, 7)
                    got += [i.data for i in batch]
                    await adapter.ack(batch)
        assert got == [str(n).encode() for n in range(200)]


async def test_embedded_server_by_default(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_grains_nats.streams")
    options = {"partitions": 2, "data_dir": str(tmp_path / "js")}
    async with open_jetstream_stream_adapter(_context(), options) as adapter:
        assert isinstance(adapter, JetStreamStreamAdapter)
        url = adapter.connection.connected_url
        assert url is not None
        assert url.startswith("nats://127.0.0.1:")
        sid = StreamId("emb", 1)
        partition = partition_for(sid, 2)
        (token,) = await adapter.publish_batch(sid, partition, [EncodedItem(b"x", "e-1")])
        (item,) = await adapter.receive(partition, 5)
        assert item.token == token
        await adapter.ack([item])
    assert "embedded nats-server" in caplog.text
    assert (tmp_path / "js" / "jetstream").is_dir()
    # the server is gone
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # noqa: PT011 - refused, whatever the errno
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_embedded_server_in_a_silo_with_a_temporary_directory() -> None:
    config = SiloConfig.from_dict(
        {"streams": {"default": {"provider": "jetstream", "options": {"partitions": 2}}}}
    )
    async with open_silo(config, grains=[JsOrderGrain]) as silo:
        await silo.get_stream_provider().get_stream("jsorders", "emb").publish(3)
        await until(lambda: [n for _, n, _ in HANDLED] == [3])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"partitons": 3}, "no option 'partitons'"),
        ({"partitions": 0}, "'partitions'"),
        ({"partitions": True}, "'partitions'"),
        ({"servers": 5}, "'servers'"),
        ({"servers": [""]}, "'servers'"),
        ({"ack_wait": 0}, "'ack_wait'"),
        ({"ack_wait": 1}, "'ack_wait'"),
        ({"max_age": -1}, "'max_age'"),
        ({"max_bytes": "1GB"}, "'max_bytes'"),
        ({"prefix": "a..b"}, "'prefix'"),
        ({"prefix": "a.*"}, "'prefix'"),
        ({"stream": "A.B"}, "'stream'"),
        ({"consumer_prefix": "x y"}, "'consumer_prefix'"),
        ({"user": 3}, "'user'"),
        ({"tls_key": "k.pem"}, "'tls_key'"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_options("default", options)


def test_option_defaults_and_derived_names() -> None:
    config = parse_options("default", {"servers": "nats://a:4222, nats://b:4222"})
    assert config.servers == ("nats://a:4222", "nats://b:4222")
    assert (config.stream, config.prefix, config.consumer_prefix) == (
        "GRAINS-STREAMS",
        "grains-streams",
        "grains-streams",
    )
    assert (config.partitions, config.ack_wait, config.duplicate_window) == (8, 10.0, 120.0)
    config = parse_options("x", {"prefix": "app.events", "max_bytes": 0})
    assert (config.stream, config.consumer_prefix) == ("APP_EVENTS", "app_events")
    assert config.max_bytes == -1


async def test_silo_config_rejects_unknown_options_eagerly(nats_url: str) -> None:
    config = _silo_config(nats_url, _tag(), no_such_option=1)
    with pytest.raises(ConfigError, match="no_such_option"):
        async with open_silo(config, grains=[JsOrderGrain]):
            pass  # pragma: no cover


async def test_receive_raises_when_the_consumer_is_gone(nats_url: str) -> None:
    tag = _tag()
    async with open_jetstream_stream_adapter(_context(), _options(nats_url, tag)) as adapter:
        async with connect(nats_url) as nc:
            await nc.jetstream().delete_consumer(f"T{tag.upper()}", f"t{tag}-p1")
        with trio.fail_after(10), pytest.raises(StreamError, match=f"t{tag}-p1"):
            await adapter.receive(1, 10)


# --- pull requests ------------------------------------------------------------------------

WINDOW_GATES: dict[int, trio.Event] = {}


@implicit_subscription("jswindow")
class JsWindowGrain(Grain):
    async def on_stream_item(self, item: int, token: SequenceToken) -> None:
        await WINDOW_GATES[item].wait()
        HANDLED.append((self.primary_key, item, token))


async def test_a_full_window_pulls_a_batch_at_a_time(nats_url: str) -> None:
    """20 items through a window of 8 held items, asked for 4 at a time: 5 pull requests
    for 4 items each, and a 6th that waits for more. The window fills up (the handlers
    wait at gates) and is then handed back one ack at a time: it still pulls 4 at a
    time, not one item per ack."""
    tag = _tag()
    WINDOW_GATES.clear()
    WINDOW_GATES.update((n, trio.Event()) for n in range(20))
    options = _options(nats_url, tag, partitions=1, fetch_expires=3)
    async with open_jetstream_stream_adapter(_context(), options) as adapter:
        for n in range(20):
            item = EncodedItem(msgpack.packb(n), f"{tag}-{n}")
            await adapter.publish_batch(StreamId("jswindow", f"k{n}"), 0, [item])
    requests: list[dict[str, Any]] = []
    async with connect(nats_url) as nc:
        sub = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.T{tag.upper()}.t{tag}-p0")

        async def watch() -> None:
            async for msg in sub:
                requests.append(json.loads(msg.data))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await nc.flush()
            config = _silo_config(
                nats_url, tag, partitions=1, fetch_expires=3, batch_size=4, max_in_flight=8
            )
            async with open_silo(config, grains=[JsWindowGrain]) as silo:
                provider = silo.get_stream_provider()
                await until(lambda: provider.statistics().in_flight == 8)
                for n in range(20):
                    WINDOW_GATES[n].set()
                    await until(lambda: provider.statistics().acked == n + 1)  # noqa: B023
                await until(lambda: len(requests) >= 6)
                await trio.sleep(0.2)  # and no more
                assert [r["batch"] for r in requests] == [4] * 6
            nursery.cancel_scope.cancel()
    assert [n for _, n, _ in HANDLED] == list(range(20))
