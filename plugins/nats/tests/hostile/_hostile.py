"""The hostile-client harness: raw envelopes, a raw NATS client, and a silo to attack.

Everything an attacker sends is built here by hand with msgpack (never through
trio-grains' own encoders), and sent on a plain :class:`trio_grains_nats.Connection`
that goes through no trio-grains runtime code: what a program holding nothing but client
credentials on the cluster's NATS account can do.

Envelopes (see ``trio_grains/_cluster/envelope.py``)::

    request: [0, call_id, reply_to, grain_id, method, args, timeout, hops, flags, trace]
    reply:   [1, call_id, status, payload, silo_id]     status 0 ok, 1 error, 2 reroute
    cancel:  [2, call_id, reply_to]

``args`` is a msgpack map of parameter name -> value; an error payload a msgpack map
``{"type": "module:QualName", "args": [...], "message": str, "traceback": str}``.

* :func:`open_hostile_env` opens silos (in the test's Trio run) clustered over NATS, with
  a JetStream stream provider and nats-kv storage, hosting the victim grains of
  ``_hostile_grains.py``; :class:`HostileEnv` knows every subject and bucket involved and
  reads the harm back (stream message counts, stored states, counters).
* :class:`HostileClient`: sends raw bytes anywhere; :meth:`HostileClient.call` makes a
  raw request and waits for its reply on an address of the cluster's client namespace.
* :class:`Sniffer`: the test's view of the cluster's traffic (real call ids and
  addresses), for forging replies a real attacker would have to guess.
* :class:`RawNats`: the NATS text protocol over a bare TCP stream, for seeing the
  server's ``-ERR 'Permissions Violation ...'`` answers (permission tests).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import msgpack
import trio
from trio_grains_nats import Connection, Subscription, connect
from trio_grains_nats.membership import encode_silo_key, encode_token
from trio_grains_nats.storage import record_key

from trio_grains import (
    ClientConfig,
    GrainId,
    ProviderConfig,
    Silo,
    SiloConfig,
    open_silo,
)

__all__ = [
    "CANCEL",
    "ERROR",
    "OK",
    "REPLY",
    "REQUEST",
    "REROUTE",
    "HostileClient",
    "HostileEnv",
    "RawNats",
    "Reply",
    "Sniffer",
    "cancel",
    "client_subject",
    "dropped",
    "error_payload",
    "open_hostile_client",
    "open_hostile_env",
    "pack",
    "reply",
    "request",
    "silo_subject",
    "wait_until",
]

REQUEST, REPLY, CANCEL = 0, 1, 2
OK, ERROR, REROUTE = 0, 1, 2

DROP_REASONS = ("malformed", "reply_address", "unexpected_reply", "too_large", "send_failed")


# --- raw envelopes -----------------------------------------------------------------------------


def pack(value: Any) -> bytes:
    """*value* as msgpack (str as str, bytes as bin), exactly as given."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def request(
    grain_id: str,
    method: str,
    args: Mapping[str, Any] | bytes = b"\x80",
    *,
    call_id: Any = None,
    reply_to: Any = "",
    timeout: Any = None,
    hops: Any = 0,
    flags: Any = 0,
    trace: Any = None,
    kind: Any = REQUEST,
) -> bytes:
    """A request envelope; *args* a mapping (packed here) or raw bytes; every field as given
    (any type), so malformed ones are built the same way. ``call_id=None``: a random one."""
    if call_id is None:
        call_id = secrets.randbits(63)
    payload = args if isinstance(args, bytes) else pack(dict(args))
    return pack([kind, call_id, reply_to, grain_id, method, payload, timeout, hops, flags, trace])


def reply(call_id: Any, status: Any, payload: Any, silo_id: Any) -> bytes:
    return pack([REPLY, call_id, status, payload, silo_id])


def cancel(call_id: Any, reply_to: Any) -> bytes:
    return pack([CANCEL, call_id, reply_to])


def error_payload(
    type_name: str, message: str = "forged", args: Sequence[Any] = (), traceback: str = ""
) -> bytes:
    """An error reply's payload naming *type_name* (``module:QualName``)."""
    return pack({"type": type_name, "args": list(args), "message": message, "traceback": traceback})


# --- addresses ---------------------------------------------------------------------------------


def silo_subject(cluster_id: str, silo_id: str) -> str:
    """The subject a silo receives calls on."""
    return f"grains.{cluster_id}.silo.{encode_token(silo_id)}"


def client_subject(cluster_id: str, name: str, nonce: str | None = None) -> str:
    """An address of the cluster's client namespace (``grains.<c>.client.<name>.<nonce>``)."""
    nonce = secrets.token_hex(8) if nonce is None else nonce
    return f"grains.{cluster_id}.client.{encode_token(name)}.{encode_token(nonce)}"


def dropped(silo: Silo, reason: str) -> int:
    """How many messages *silo* dropped for *reason* (``statistics().dropped_messages``)."""
    stats = silo.statistics()
    counts = getattr(stats, "dropped_messages", None)
    if counts is None:
        raise AssertionError("SiloStatistics has no dropped_messages (issue 13 not landed yet)")
    assert reason in DROP_REASONS, reason
    return int(counts.get(reason, 0))


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    """Poll *condition* (sync or async) every 20 ms until it holds; fail after *within* s."""
    try:
        with trio.fail_after(within):
            while True:
                result = condition()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"not true within {within} s: {what or condition}") from None


# --- the attacker's client ---------------------------------------------------------------------


@attrs.frozen
class Reply:
    """A decoded reply envelope."""

    call_id: int
    status: int
    payload: bytes
    silo_id: str

    @property
    def value(self) -> Any:
        assert self.status == OK, f"not an OK reply: {self}"
        return msgpack.unpackb(self.payload, raw=False, strict_map_key=False)

    @property
    def error(self) -> dict[str, Any]:
        assert self.status == ERROR, f"not an error reply: {self}"
        decoded: dict[str, Any] = msgpack.unpackb(self.payload, raw=False, strict_map_key=False)
        return decoded

    @property
    def error_type(self) -> str:
        return str(self.error["type"])


@attrs.define(eq=False)
class HostileClient:
    """A raw NATS connection that publishes arbitrary bytes to arbitrary subjects."""

    nc: Connection
    cluster_id: str
    name: str = "hostile"

    async def send(self, subject: str, data: bytes, *, flush: bool = True) -> None:
        """Publish *data* on *subject* (flushed: the server has it when this returns)."""
        await self.nc.publish(subject, data)
        if flush:
            await self.nc.flush()

    async def send_many(self, subject: str, messages: Iterable[bytes]) -> int:
        n = 0
        for data in messages:
            await self.nc.publish(subject, data)
            n += 1
        await self.nc.flush()
        return n

    @contextlib.asynccontextmanager
    async def inbox(self) -> AsyncIterator[tuple[str, Subscription]]:
        """A fresh address of the cluster's client namespace, and its subscription."""
        subject = client_subject(self.cluster_id, self.name)
        sub = await self.nc.subscribe(subject)
        await self.nc.flush()
        try:
            yield subject, sub
        finally:
            with trio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def call(
        self,
        to: str,
        grain_id: str,
        method: str,
        args: Mapping[str, Any] | bytes = b"\x80",
        *,
        within: float = 10.0,
        call_timeout: float | None = 10.0,
    ) -> Reply:
        """A raw request to the silo subject *to*, and its reply (sent to an address of the
        client namespace); fails after *within* seconds without one. *call_timeout* is
        the envelope's timeout field."""
        call_id = secrets.randbits(63)
        async with self.inbox() as (address, sub):
            data = request(
                grain_id, method, args, call_id=call_id, reply_to=address, timeout=call_timeout
            )
            await self.nc.publish(to, data, reply=address)
            with trio.fail_after(within):
                async for msg in sub:
                    fields = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
                    if fields[0] == REPLY and fields[1] == call_id:
                        return Reply(fields[1], fields[2], fields[3], fields[4])
        raise AssertionError("the reply subscription ended")


@contextlib.asynccontextmanager
async def open_hostile_client(
    url: str, cluster_id: str, **options: Any
) -> AsyncIterator[HostileClient]:
    """A :class:`HostileClient` on its own connection (*options* go to ``connect``)."""
    async with connect(url, name="hostile", **options) as nc:
        yield HostileClient(nc, cluster_id)


@attrs.define(eq=False)
class Sniffer:
    """Every message on the cluster's subjects, decoded: what the test (not the attacker)
    sees, to learn real call ids and addresses."""

    sub: Subscription
    seen: list[tuple[str, str, list[Any]]] = attrs.field(factory=list)

    async def next_request(self, method: str, *, within: float = 10.0) -> tuple[str, list[Any]]:
        """(subject, fields) of the next request for *method* sent on the cluster."""
        with trio.fail_after(within):
            async for msg in self.sub:
                try:
                    fields = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
                except Exception:
                    continue
                self.seen.append((msg.subject, msg.reply, fields))
                if isinstance(fields, list) and fields[:1] == [REQUEST] and fields[4] == method:
                    return msg.subject, fields
        raise AssertionError("the sniffer's subscription ended")


@contextlib.asynccontextmanager
async def open_sniffer(nc: Connection, cluster_id: str) -> AsyncIterator[Sniffer]:
    sub = await nc.subscribe(f"grains.{cluster_id}.>", max_pending=1_000_000)
    await nc.flush()
    try:
        yield Sniffer(sub)
    finally:
        with trio.CancelScope(shield=True):
            await sub.unsubscribe()


# --- the silos under attack --------------------------------------------------------------------


def victim_grains() -> list[type]:
    from _hostile_grains import CounterGrain, SinkGrain, SlowGrain, TypedGrain, VaultGrain

    return [CounterGrain, VaultGrain, TypedGrain, SlowGrain, SinkGrain]


@attrs.define(eq=False)
class HostileEnv:
    """Silos of one cluster (``cluster_id``, its own per test) and what they use on NATS."""

    url: str
    cluster_id: str
    stream_prefix: str
    bucket: str
    admin: Connection  # the test's own connection: reads the harm back, never attacks
    silos: list[Silo] = attrs.field(factory=list)

    @property
    def silo(self) -> Silo:
        return self.silos[0]

    @property
    def stream_name(self) -> str:
        return self.stream_prefix.replace(".", "_").upper()

    @property
    def membership_bucket(self) -> str:
        return f"grains-membership-{self.cluster_id}"

    @property
    def directory_bucket(self) -> str:
        return f"grains-directory-{self.cluster_id}"

    def clustering(self) -> ProviderConfig:
        return ProviderConfig(provider="nats", options={"servers": [self.url]})

    def streams(self) -> dict[str, ProviderConfig]:
        options = {
            "servers": [self.url],
            "prefix": self.stream_prefix,
            "partitions": 2,
            # a silo waits for its pull requests to expire when it stops: keep that short
            "fetch_expires": 0.25,
        }
        return {"default": ProviderConfig(provider="jetstream", options=options)}

    def storage(self) -> dict[str, ProviderConfig]:
        options = {"servers": [self.url], "bucket": self.bucket}
        return {"default": ProviderConfig(provider="nats-kv", options=options)}

    def silo_config(self, name: str, **overrides: Any) -> SiloConfig:
        settings: dict[str, Any] = {
            "name": name,
            "cluster_id": self.cluster_id,
            "heartbeat_interval": 0.5,
            "dead_after": 5.0,
            "response_timeout": 20.0,
            "clustering": self.clustering(),
            "streams": self.streams(),
            "storage": self.storage(),
        }
        settings.update(overrides)
        return SiloConfig(**settings)

    def client_config(self, name: str = "victim-client") -> ClientConfig:
        return ClientConfig(
            name=name,
            cluster_id=self.cluster_id,
            clustering=self.clustering(),
            streams=self.streams(),
            response_timeout=20.0,
        )

    # -- subjects an attacker aims at --

    def silo_subject(self, silo: Silo | None = None) -> str:
        return silo_subject(self.cluster_id, (silo or self.silo).silo_id)

    def membership_subject(self, silo: Silo | None = None) -> str:
        """The KV subject of *silo*'s membership row."""
        silo_id = (silo or self.silo).silo_id
        return f"$KV.{self.membership_bucket}.{encode_silo_key(silo_id)}"

    def state_subject(self, grain_id: str, state_name: str) -> str:
        """The KV subject of a grain's stored state in the nats-kv storage bucket."""
        return f"$KV.{self.bucket}.{record_key(state_name, GrainId.parse(grain_id))}"

    def stream_subject(self, key: str, partition: int = 0) -> str:
        from _hostile_grains import STREAM_NAMESPACE

        return f"{self.stream_prefix}.{STREAM_NAMESPACE}.{partition}.{key}"

    # -- reading the harm back --

    async def stream_messages(self) -> int:
        """How many messages the stream provider's JetStream stream holds."""
        info = await self.admin.jetstream().stream_info(self.stream_name)
        assert info.state is not None
        return int(info.state.messages)

    async def stored(self, state_subject: str) -> bytes:
        """The stored bytes behind a ``$KV.<bucket>.<key>`` subject (the latest entry)."""
        _, _, rest = state_subject.partition(".")
        bucket, _, key = rest.partition(".")
        kv = await self.admin.jetstream().key_value(bucket)
        return (await kv.get(key)).value

    def dropped(self, reason: str, silo: Silo | None = None) -> int:
        return dropped(silo or self.silo, reason)

    def total_dropped(self, reason: str) -> int:
        return sum(dropped(s, reason) for s in self.silos)

    async def publish_items(self, key: str, items: Iterable[int]) -> None:
        from _hostile_grains import STREAM_NAMESPACE

        stream = self.silo.get_stream_provider().get_stream(STREAM_NAMESPACE, key)
        for item in items:
            await stream.publish(item)

    async def assert_all_answer(self) -> None:
        """Every silo is running, sees every other, and answers an ordinary call."""
        from _hostile_grains import CounterGrain

        for silo in self.silos:
            assert silo.statistics().active_silos == len(self.silos), silo.statistics()
            key = f"health-{uuid.uuid4().hex[:8]}"
            with trio.fail_after(20):
                assert await silo.get_grain(CounterGrain, key).add(1) == 1


@contextlib.asynccontextmanager
async def open_hostile_env(
    url: str,
    *,
    silos: int = 1,
    grains: Sequence[type] | None = None,
    **overrides: Any,
) -> AsyncIterator[HostileEnv]:
    """*silos* silos of a fresh cluster (in this Trio run), each hosting *grains* (default:
    the victim grains), with a JetStream stream provider and nats-kv storage of their own;
    *overrides* are :class:`SiloConfig` fields. Yields once every silo sees all of them."""
    tag = uuid.uuid4().hex[:8]
    hosted = victim_grains() if grains is None else list(grains)
    async with (
        connect(url, name="hostile-test-admin") as admin,
        contextlib.AsyncExitStack() as stack,
    ):
        env = HostileEnv(
            url=url,
            cluster_id=f"h{tag}",
            # disjoint from the cluster's subjects (grains.<cluster>.>) on purpose
            stream_prefix=f"hs{tag}",
            bucket=f"hostile-state-{tag}",
            admin=admin,
        )
        for i in range(silos):
            config = env.silo_config(f"silo-{i}", **overrides)
            env.silos.append(await stack.enter_async_context(open_silo(config, grains=hosted)))
        await wait_until(
            lambda: all(s.statistics().active_silos == silos for s in env.silos),
            within=30,
            what=f"{silos} silos see each other",
        )
        yield env


# --- the NATS protocol by hand (permission tests) ----------------------------------------------


class RawNats:
    """The NATS text protocol on a bare TCP stream: what the server answers, line by line.

    ``-ERR`` lines (permission violations) are collected in :attr:`errors`; ``MSG`` lines
    with their payloads in :attr:`messages`. :meth:`ping` waits for the server's PONG, by
    which time it has answered everything sent before it.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.info: dict[str, Any] = {}
        self.errors: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self._sid = 0

    async def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\r\n")
        self._buf = bytearray(rest)
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self._buf += data
        payload = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return payload

    async def send(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def pub(self, subject: str, payload: bytes = b"", reply: str | None = None) -> None:
        head = f"PUB {subject} {reply} {len(payload)}" if reply else f"PUB {subject} {len(payload)}"
        await self.send(head.encode() + b"\r\n" + payload + b"\r\n")

    async def sub(self, subject: str) -> int:
        self._sid += 1
        await self.send(f"SUB {subject} {self._sid}\r\n".encode())
        return self._sid

    async def ping(self) -> list[str]:
        """PING, read until PONG; the ``-ERR`` lines that came before it."""
        before = len(self.errors)
        await self.send(b"PING\r\n")
        while True:
            line = await self._line()
            if line == b"PONG":
                return self.errors[before:]
            if line == b"PING":
                await self.send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                self.errors.append(line.decode(errors="replace"))
            elif line.startswith(b"MSG"):
                parts = line.decode().split()
                payload = await self._exactly(int(parts[-1]))
                self.messages.append((parts[1], payload))
            # +OK, INFO: ignored

    async def aclose(self) -> None:
        await self._stream.aclose()


@contextlib.asynccontextmanager
async def open_raw_nats(url: str, **credentials: str) -> AsyncIterator[RawNats]:
    """A :class:`RawNats` connected and authenticated (``user``/``pass`` or ``auth_token``)."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    raw = RawNats(stream)
    try:
        line = await raw._line()
        assert line.startswith(b"INFO "), line
        raw.info = json.loads(line[5:])
        connect_options = {"verbose": False, "pedantic": False, "name": "raw", **credentials}
        await raw.send(b"CONNECT " + json.dumps(connect_options).encode() + b"\r\n")
        errors = await raw.ping()
        assert not errors, errors
        yield raw
    finally:
        with trio.CancelScope(shield=True):
            await raw.aclose()
