"""The example NATS permissions (``deploy/nats-permissions.conf``, shown in
``docs/security.md``), tested as they are written.

A nats-server runs with that very file (only its port and store dir replaced). A silo
connects as the ``silo`` user, a trio-grains client named ``app`` as the ``client`` user:
the cluster works, and the server logs no permission violation but the one the page
documents. Then an attacker holding the ``client`` credentials speaks the NATS protocol
by hand: every publish or subscribe outside the client's permissions is answered
``-ERR 'Permissions Violation ...'`` and does nothing (the stream keeps its items, the
stored state is unchanged, the cluster answers).

``trio_grains_nats.Connection`` does not raise for a permission violation (the server
answers asynchronously and keeps the connection open; the connection only remembers the
error for its close message), so the attacker here uses :class:`_hostile.RawNats`, which
shows the server's answer to each command.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _hostile import open_raw_nats, pack, request, wait_until
from _hostile_grains import SINK_ITEMS, STREAM_NAMESPACE, CounterGrain, SinkGrain, VaultGrain
from trio_grains_nats import connect
from trio_grains_nats.storage import record_key
from trio_grains_nats.testing import free_port, run_nats_server

from trio_grains import (
    ClientConfig,
    GrainId,
    ProviderConfig,
    Silo,
    SiloConfig,
    open_client,
    open_silo,
)

CONF = Path(__file__).resolve().parents[4] / "deploy" / "nats-permissions.conf"
CLUSTER = "prod"  # the names the file uses
CLIENT_NAME = "app"
STATE_BUCKET = "grains-state"
STREAM = "GRAINS-STREAMS"
STREAM_PREFIX = "grains-streams"


@attrs.frozen
class SecuredServer:
    url: str
    log: Path
    silo_password: str
    client_password: str

    def as_user(self, user: str) -> str:
        password = self.silo_password if user == "silo" else self.client_password
        return self.url.replace("nats://", f"nats://{user}:{password}@")

    def violations(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if "Violation" in line]


def configured(text: str, port: int, store_dir: Path) -> str:
    """The file's text with its port and store dir replaced (each exactly once)."""
    text, n = re.subn(r"(?m)^listen: 127\.0\.0\.1:4222$", f"listen: 127.0.0.1:{port}", text)
    assert n == 1, "deploy/nats-permissions.conf: no 'listen: 127.0.0.1:4222' line"
    text, n = re.subn(r'store_dir: "/var/lib/nats"', f'store_dir: "{store_dir}"', text)
    assert n == 1, "deploy/nats-permissions.conf: no 'store_dir: \"/var/lib/nats\"'"
    return text


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecuredServer]:
    silo_password, client_password = secrets.token_hex(16), secrets.token_hex(16)
    monkeypatch.setenv("GRAINS_SILO_PASSWORD", silo_password)  # the server reads them
    monkeypatch.setenv("GRAINS_CLIENT_PASSWORD", client_password)
    port = free_port()
    text = configured(CONF.read_text(), port, tmp_path / "jetstream")
    with run_nats_server(tmp_path, config=text, jetstream=False, port=port) as url:
        yield SecuredServer(url, tmp_path / f"nats-{port}.log", silo_password, client_password)


def silo_config(server: SecuredServer) -> SiloConfig:
    options = {"servers": [server.as_user("silo")]}
    return SiloConfig(
        name="secured-silo",
        cluster_id=CLUSTER,
        heartbeat_interval=0.5,
        dead_after=5.0,
        response_timeout=10.0,
        clustering=ProviderConfig(provider="nats", options=options),
        storage={"default": ProviderConfig(provider="nats-kv", options=options)},
        streams={"default": ProviderConfig(provider="jetstream", options=options)},
        reminders=ProviderConfig(provider="nats-kv", options=options),
    )


def client_config(server: SecuredServer) -> ClientConfig:
    options = {"servers": [server.as_user("client")], "inbox_prefix": "_INBOX_app"}
    return ClientConfig(
        name=CLIENT_NAME,
        cluster_id=CLUSTER,
        response_timeout=10.0,
        clustering=ProviderConfig(provider="nats", options=options),
    )


@attrs.define
class Cluster:
    server: SecuredServer
    silo: Silo
    stream_messages: int = 0
    stored: bytes = b""

    async def read_stream_messages(self) -> int:
        async with connect(self.server.as_user("silo")) as nc:
            info = await nc.jetstream().stream_info(STREAM)
        assert info.state is not None
        return int(info.state.messages)

    async def read_stored(self) -> bytes:
        key = record_key("vault", GrainId.parse("hvault/victim"))
        async with connect(self.server.as_user("silo")) as nc:
            kv = await nc.jetstream().key_value(STATE_BUCKET)
            return (await kv.get(key)).value


@pytest.fixture
async def cluster(secured: SecuredServer) -> AsyncIterator[Cluster]:
    """A silo as the silo user, with a victim state and a stream holding items."""
    grains = [CounterGrain, VaultGrain, SinkGrain]
    async with open_silo(silo_config(secured), grains=grains) as silo:
        await wait_until(lambda: silo.statistics().active_silos == 1, what="the silo active")
        await silo.get_grain(VaultGrain, "victim").put("the-real-secret")
        stream = silo.get_stream_provider().get_stream(STREAM_NAMESPACE, "victim")
        for item in range(5):
            await stream.publish(item)
        await wait_until(lambda: SINK_ITEMS.get("victim") == list(range(5)), what="items")
        cluster = Cluster(secured, silo)
        cluster.stream_messages = await cluster.read_stream_messages()
        cluster.stored = await cluster.read_stored()
        assert cluster.stream_messages == 5
        yield cluster


def _expected_violation(line: str) -> bool:
    """The one violation the page documents: a closing client may not delete its
    membership watch (the server removes the ephemeral consumer after a few seconds)."""
    return '"$G/user:client"' in line and "$JS.API.CONSUMER.DELETE.KV_grains-membership" in line


async def test_a_silo_and_a_client_work_with_these_permissions(cluster: Cluster) -> None:
    async with open_client(client_config(cluster.server)) as client:
        with trio.fail_after(20):
            await client.wait_for_silos(1)
        counter = client.get_grain(CounterGrain, "c")
        assert await counter.add(2) == 2
        assert await counter.add(3) == 5
        vault = client.get_grain(VaultGrain, "v")
        await vault.put("through the client")
        assert await vault.reread() == "through the client"
        assert await client.get_grain(VaultGrain, "victim").read() == "the-real-secret"
        stats = client.statistics()
        assert stats.active_silos == 1
        assert stats.endpoint_id.startswith(CLIENT_NAME)
    unexpected = [v for v in cluster.server.violations() if not _expected_violation(v)]
    assert not unexpected, unexpected[:5]


def _attacks() -> dict[str, tuple[str, str]]:
    """What a holder of the client credentials may try: name -> (PUB or SUB, subject)."""
    victim_key = record_key("vault", GrainId.parse("hvault/victim"))
    return {
        "purge the stream": ("PUB", f"$JS.API.STREAM.PURGE.{STREAM}"),
        "delete the stream": ("PUB", f"$JS.API.STREAM.DELETE.{STREAM}"),
        "shrink the stream": ("PUB", f"$JS.API.STREAM.UPDATE.{STREAM}"),
        "delete the state bucket": ("PUB", f"$JS.API.STREAM.DELETE.KV_{STATE_BUCKET}"),
        "purge the membership": ("PUB", f"$JS.API.STREAM.PURGE.KV_grains-membership-{CLUSTER}"),
        "delete a silo's watch": (
            "PUB",
            f"$JS.API.CONSUMER.DELETE.KV_grains-membership-{CLUSTER}.x",
        ),
        "read the stored states": ("PUB", f"$JS.API.DIRECT.GET.KV_{STATE_BUCKET}.x"),
        "overwrite a stored state": ("PUB", f"$KV.{STATE_BUCKET}.{victim_key}"),
        "overwrite a membership row": ("PUB", f"$KV.grains-membership-{CLUSTER}.x"),
        "overwrite a directory entry": ("PUB", f"$KV.grains-directory-{CLUSTER}.x"),
        "inject a stream item": ("PUB", f"{STREAM_PREFIX}.{STREAM_NAMESPACE}.0.victim"),
        "ack for the silos": ("PUB", f"$JS.ACK.{STREAM}.x"),
        "publish to another client's inbox": ("PUB", f"grains.{CLUSTER}.client.billing.x"),
        "publish to its own inbox": ("PUB", f"grains.{CLUSTER}.client.{CLIENT_NAME}.x"),
        "publish beside the silos": ("PUB", f"grains.{CLUSTER}.silo.x.y"),
        "publish to the system account": ("PUB", "$SYS.REQ.SERVER.PING"),
        "read another client's replies": ("SUB", f"grains.{CLUSTER}.client.billing.*"),
        "read every client's replies": ("SUB", f"grains.{CLUSTER}.client.>"),
        "read the calls to silos": ("SUB", f"grains.{CLUSTER}.silo.*"),
        "read everything": ("SUB", ">"),
        "read the stream": ("SUB", f"{STREAM_PREFIX}.>"),
        "read KV writes": ("SUB", "$KV.>"),
    }


async def test_the_client_user_can_reach_nothing_else(cluster: Cluster) -> None:
    server = cluster.server
    attacks = _attacks()
    body = pack({"n": 1})
    async with open_raw_nats(server.url, user="client", **{"pass": server.client_password}) as raw:
        for name, (verb, subject) in attacks.items():
            if verb == "PUB":
                await raw.pub(subject, body, reply="_INBOX.attacker")
            else:
                await raw.sub(subject)
            errors = await raw.ping()
            assert len(errors) == 1, f"{name}: {subject} was allowed"
            assert "Permissions Violation" in errors[0], f"{name}: {errors}"
            kind = "Publish" if verb == "PUB" else "Subscription"
            assert kind in errors[0], f"{name}: {errors}"
            assert subject in errors[0], f"{name}: {errors}"
        # ... while what a client needs is allowed
        await raw.sub(f"grains.{CLUSTER}.client.{CLIENT_NAME}.mine")
        await raw.pub(
            f"grains.{CLUSTER}.silo.x",
            request(
                "hcounter/c",
                "add",
                {"n": 1},
                reply_to=f"grains.{CLUSTER}.client.{CLIENT_NAME}.mine",
            ),
        )
        assert await raw.ping() == []
    # nothing happened
    assert await cluster.read_stream_messages() == cluster.stream_messages
    assert await cluster.read_stored() == cluster.stored
    assert await cluster.silo.get_grain(VaultGrain, "victim").reread() == "the-real-secret"
    assert SINK_ITEMS.get("victim") == list(range(5))
    assert cluster.silo.statistics().active_silos == 1
    assert await cluster.silo.get_grain(CounterGrain, "after").add(1) == 1
    client_violations = [v for v in server.violations() if '"$G/user:client"' in v]
    assert len(client_violations) >= len(attacks)


async def test_the_silo_user_cannot_touch_other_streams(cluster: Cluster) -> None:
    """The silos' JetStream permissions name their own streams and buckets: another
    application's on the same account is out of their reach, and so are clients' replies."""
    server = cluster.server
    attacks = {
        "purge another stream": ("PUB", "$JS.API.STREAM.PURGE.ORDERS"),
        "create a stream": ("PUB", "$JS.API.STREAM.CREATE.ORDERS"),
        "write another bucket": ("PUB", "$KV.billing.x"),
        "publish to another stream": ("PUB", "orders.new"),
        "another cluster": ("PUB", "grains.staging.silo.x"),
        "read clients' replies": ("SUB", f"grains.{CLUSTER}.client.>"),
        "read everything": ("SUB", ">"),
    }
    async with open_raw_nats(server.url, user="silo", **{"pass": server.silo_password}) as raw:
        for name, (verb, subject) in attacks.items():
            if verb == "PUB":
                await raw.pub(subject, b"{}", reply="_INBOX.x")
            else:
                await raw.sub(subject)
            errors = await raw.ping()
            assert len(errors) == 1, f"{name}: {subject} was allowed"
            assert "Permissions Violation" in errors[0], f"{name}: {errors}"


async def test_the_client_user_cannot_read_the_silos_jetstream_replies(cluster: Cluster) -> None:
    server = cluster.server
    seen: list[Any] = []
    async with open_raw_nats(server.url, user="client", **{"pass": server.client_password}) as raw:
        await raw.sub("_INBOX.>")
        await raw.ping()
        # the silo reads the victim's state from its bucket (a direct get, answered on
        # the silo's inbox)
        assert await cluster.silo.get_grain(VaultGrain, "victim").reread() == "the-real-secret"
        await raw.ping()
        seen = [payload for _, payload in raw.messages if b"the-real-secret" in payload]
        refused = list(raw.errors)
    assert not seen, "the client user read a silo's KV reply"
    assert any("Permissions Violation" in e and "_INBOX.>" in e for e in refused), refused


def test_the_security_page_shows_this_file() -> None:
    """docs/security.md shows deploy/nats-permissions.conf verbatim (one ```conf block)."""
    page = (CONF.parents[1] / "docs" / "security.md").read_text(encoding="utf-8")
    blocks = re.findall(r"(?ms)^```conf\n(.*?)^```$", page)
    assert len(blocks) == 1, "docs/security.md must show the permissions in one ```conf block"
    assert blocks[0] == CONF.read_text(encoding="utf-8"), (
        "docs/security.md and deploy/nats-permissions.conf differ: copy the file into the page"
    )
