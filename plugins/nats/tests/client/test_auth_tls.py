"""Authentication (user/password, token, NKEYS) and TLS against real servers."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from trio_grains_nats import AuthorizationError, NatsConnectionError, connect
from trio_grains_nats.testing import run_nats_server


@pytest.fixture(scope="module")
def userpass_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("userpass")
    with run_nats_server(tmp, jetstream=False, args=["--user", "alice", "--pass", "s3cret"]) as url:
        yield url


async def test_user_password(userpass_url: str) -> None:
    async with connect(userpass_url, user="alice", password="s3cret") as nc:
        await nc.flush()
    host = userpass_url.removeprefix("nats://")
    async with connect(f"nats://alice:s3cret@{host}") as nc:
        await nc.flush()


async def test_wrong_password_is_an_authorization_error(userpass_url: str) -> None:
    with pytest.raises(AuthorizationError, match="check user/password"):
        async with connect(userpass_url, user="alice", password="wrong"):
            pass  # pragma: no cover
    with pytest.raises(AuthorizationError):
        async with connect(userpass_url):
            pass  # pragma: no cover


async def test_token(tmp_path: Path) -> None:
    with run_nats_server(tmp_path, jetstream=False, args=["--auth", "tok-123"]) as url:
        async with connect(url, token="tok-123") as nc:
            await nc.flush()
        with pytest.raises(AuthorizationError):
            async with connect(url, token="nope"):
                pass  # pragma: no cover


async def test_nkeys_seed(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
    config = f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n'
    with run_nats_server(tmp_path, jetstream=False, config=config) as url:
        async with connect(url, nkeys_seed=seed) as nc:
            await nc.flush()
        seed_file = tmp_path / "user.nk"
        seed_file.write_text(seed + "\n")
        async with connect(url, nkeys_seed=str(seed_file)) as nc:
            await nc.flush()
        other = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        with pytest.raises(AuthorizationError):
            async with connect(url, nkeys_seed=other):
                pass  # pragma: no cover


def _self_signed(tmp: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1: with trustme if installed, else the openssl CLI."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    client = ssl.create_default_context()
    try:
        import trustme
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("TLS test needs trustme (pip install trustme) or the openssl CLI")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        client.load_verify_locations(cert)
        return cert, key, client
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.configure_trust(client)
    return cert, key, client


async def test_tls(tmp_path: Path) -> None:
    cert, key, client_ctx = _self_signed(tmp_path)
    args = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
    with run_nats_server(tmp_path, jetstream=False, args=args) as url:
        # The server requires TLS: a nats:// URL is upgraded as its INFO asks.
        async with connect(url, tls=client_ctx) as nc:
            sub = await nc.subscribe("tls.x")
            await nc.publish("tls.x", b"secret")
            assert (await sub.next_msg()).data == b"secret"
        async with connect(url.replace("nats://", "tls://"), tls=client_ctx) as nc:
            await nc.flush()
        # Without our CA the certificate does not verify.
        with pytest.raises(NatsConnectionError, match="failed"):
            async with connect(url):
                pass  # pragma: no cover


async def test_tls_asked_of_a_plain_server(nats_url: str) -> None:
    with pytest.raises(NatsConnectionError, match="does not offer TLS"):
        async with connect(nats_url, tls=ssl.create_default_context()):
            pass  # pragma: no cover
