"""``.creds`` (user JWT + NKEY seed) against a nats-server in operator (JWT) mode.

The operator, account and user JWTs are built here by hand, following nats-io/jwt v2:
``b64url(header).b64url(claims).b64url(ed25519 signature by the issuer)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trio
from trio_grains_nats import AuthorizationError, connect
from trio_grains_nats.testing import run_nats_server

_NO_LIMITS = {"subs": -1, "data": -1, "payload": -1}


def _new_key(prefix: int) -> Any:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _pub(kp: Any) -> str:
    return bytes(kp.public_key).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A v2 NATS JWT for *subject*, signed by the *issuer* key pair."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": _pub(issuer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    # jti: base32 (no padding) of the SHA-512/256 of the claims with an empty jti.
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def _account_jwt(operator: Any, account: Any) -> str:
    limits = {**_NO_LIMITS, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    return _jwt(
        operator, _pub(account), "acc", {"type": "account", "limits": {**limits, "leaf": -1}}
    )


def _creds(path: Path, account: Any) -> Path:
    """Write a ``.creds`` file for a new user signed by *account*."""
    user = _new_key(nkeys.PREFIX_BYTE_USER)
    jwt = _jwt(account, _pub(user), "user", {"type": "user", "pub": {}, "sub": {}, **_NO_LIMITS})
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{bytes(user.seed).decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    return path


@pytest.fixture(scope="module")
def operator_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Any]]:
    """A server trusting one operator with one (preloaded) account: (url, tmp dir, account)."""
    tmp = tmp_path_factory.mktemp("operator")
    operator = _new_key(nkeys.PREFIX_BYTE_OPERATOR)
    account = _new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = _jwt(operator, _pub(operator), "op", {"type": "operator"})
    config = (
        f"operator: {operator_jwt}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {_pub(account)}: {_account_jwt(operator, account)}\n}}\n"
    )
    with run_nats_server(tmp, jetstream=False, config=config) as url:
        yield url, tmp, account


async def test_creds_pub_sub_request(operator_mode: tuple[str, Path, Any]) -> None:
    url, tmp, account = operator_mode
    creds = _creds(tmp / "user.creds", account)
    async with connect(url, creds=str(creds)) as nc:
        sub = await nc.subscribe("creds.x")
        await nc.publish("creds.x", b"hello")
        assert (await sub.next_msg()).data == b"hello"
        responder = await nc.subscribe("creds.svc")

        async def respond() -> None:
            msg = await responder.next_msg()
            await msg.respond(msg.data.upper())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(respond)
            reply = await nc.request("creds.svc", b"ping")
        assert reply.data == b"PING"


async def test_creds_of_an_unknown_account_are_refused(
    operator_mode: tuple[str, Path, Any],
) -> None:
    url, tmp, _ = operator_mode
    stranger = _creds(tmp / "stranger.creds", _new_key(nkeys.PREFIX_BYTE_ACCOUNT))
    with pytest.raises(AuthorizationError):
        async with connect(url, creds=str(stranger)):
            pass  # pragma: no cover
