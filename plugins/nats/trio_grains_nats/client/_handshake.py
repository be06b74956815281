"""Opening one server connection: addresses, credentials, TLS and the INFO/CONNECT handshake.

The handshake reads the server's ``INFO``, upgrades to TLS when we asked for it or the
server requires it, sends ``CONNECT`` (with credentials: user/password, token, an NKEY
seed or a ``.creds`` file signing the server's nonce) and a ``PING``, and waits for the
``PONG`` that proves the server accepted us (or the ``-ERR`` that says why not).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import attrs
import trio

from ._exceptions import AuthorizationError, NatsConnectionError

__all__ = ["Credentials", "ServerAddress", "handshake", "parse_servers", "redact_url"]

_LANG = "python-trio"
_VERSION = "0.1.0"
_MAX_LINE = 64 * 1024


def redact_url(url: str) -> str:
    """*url* safe to print: the password of ``user:password@`` becomes ``***`` (the user is
    kept), and a lone ``token@`` (NATS reads ``nats://token@host`` as a token) is ``***``.

    Everything before the last ``@`` counts as credentials, whatever else the URL holds: a
    password with an unescaped ``/`` or ``@`` in it is still hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{f'{user}:***' if colon else '***'}@{host}"


@attrs.frozen(repr=False)
class ServerAddress:
    """One entry of the server list: ``nats://[user:pass@]host[:port]`` or ``tls://...``."""

    host: str
    port: int
    tls: bool = False
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        # The user of a URL without a password is a token: neither is printed.
        if self.user is None:
            return f"ServerAddress({self.url!r})"
        shown = f"{self.user}:***" if self.password is not None else "***"
        return f"ServerAddress({self.url.replace('://', f'://{shown}@', 1)!r})"

    @property
    def url(self) -> str:
        """``nats://host:port`` (or ``tls://``), without credentials: safe to print."""
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"


def parse_servers(servers: str | list[str] | tuple[str, ...]) -> list[ServerAddress]:
    """Parse a URL or a list of URLs (comma-separated strings are split too)."""
    urls = [servers] if isinstance(servers, str) else list(servers)
    result = []
    for entry in urls:
        for raw in entry.split(","):
            raw = raw.strip()
            if not raw:
                continue
            if "://" not in raw:
                raw = "nats://" + raw
            parts = urlsplit(raw)
            shown = redact_url(raw)  # errors never print a password
            if parts.scheme not in ("nats", "tls"):
                raise ValueError(f"bad server URL {shown!r}: the scheme must be nats:// or tls://")
            if not parts.hostname:
                raise ValueError(f"bad server URL {shown!r}: no host")
            try:
                port = parts.port
            except ValueError:  # its message quotes the "port", maybe part of a password
                raise ValueError(
                    f"bad server URL {shown!r}: the port must be a number from 0 to 65535 "
                    "(percent-encode '/', '@' and ':' in a user name or password)"
                ) from None
            result.append(
                ServerAddress(
                    host=parts.hostname,
                    port=port or 4222,
                    tls=parts.scheme == "tls",
                    user=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None,
                )
            )
    if not result:
        raise ValueError("no server URL given: pass e.g. 'nats://127.0.0.1:4222'")
    return result


@attrs.frozen(repr=False)
class Credentials:
    """What :func:`connect` was given to authenticate with (never printed)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed: str | None = None  # the seed itself ("SU...") or a path to a file holding it
    creds: str | os.PathLike[str] | None = None  # a .creds file (user JWT + seed)

    def __repr__(self) -> str:
        return "<Credentials>"

    def connect_fields(self, server: ServerAddress, nonce: str | None) -> dict[str, str]:
        """The CONNECT fields that authenticate us, signing *nonce* where keys are used."""
        fields: dict[str, str] = {}
        if self.creds is not None:
            jwt, seed = _read_creds(self.creds)
            fields["jwt"] = jwt
            fields["sig"] = _sign(seed, nonce)
        elif self.nkeys_seed is not None:
            seed = self.nkeys_seed.strip()
            if not seed.startswith("S") and os.path.exists(seed):
                with open(seed, encoding="ascii") as f:
                    seed = f.read().strip()
            fields["nkey"] = _public_key(seed)
            fields["sig"] = _sign(seed, nonce)
        user = self.user if self.user is not None else server.user
        password = self.password if self.password is not None else server.password
        if user is not None and password is not None:
            fields["user"] = user
            fields["pass"] = password
        elif self.token is not None:
            fields["auth_token"] = self.token
        elif user is not None:  # nats://token@host
            fields["auth_token"] = user
        return fields


def _public_key(seed: str) -> str:
    import nkeys  # type: ignore[import-untyped]

    kp = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return bytes(kp.public_key).decode()
    finally:
        kp.wipe()


def _sign(seed: str, nonce: str | None) -> str:
    if nonce is None:
        raise AuthorizationError(
            "the server sent no nonce to sign: it is not configured for NKEYS/JWT auth"
        )
    import nkeys

    kp = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return base64.urlsafe_b64encode(kp.sign(nonce.encode())).decode().rstrip("=")
    finally:
        kp.wipe()


def _read_creds(path: str | os.PathLike[str]) -> tuple[str, str]:
    with open(path, encoding="ascii") as f:
        lines = [line.strip() for line in f]
    jwt = seed = None
    for i, line in enumerate(lines):
        if "BEGIN NATS USER JWT" in line and i + 1 < len(lines):
            jwt = lines[i + 1]
        elif "BEGIN USER NKEY SEED" in line and i + 1 < len(lines):
            seed = lines[i + 1]
    if not jwt or not seed:
        raise ValueError(f"{os.fspath(path)!r} is not a .creds file (no user JWT and seed)")
    return jwt, seed


async def _read_line(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line
        if len(buf) > _MAX_LINE:
            raise NatsConnectionError("the server sent a protocol line longer than 64 KiB")
        data = await stream.receive_some(_MAX_LINE)
        if not data:
            raise NatsConnectionError("the server closed the connection during the handshake")
        buf += data


async def handshake(
    server: ServerAddress,
    *,
    credentials: Credentials,
    tls: ssl.SSLContext | None,
    name: str | None,
    echo: bool,
    on_info: Callable[[dict[str, object]], None],
) -> tuple[trio.abc.Stream, dict[str, object], bytes]:
    """Connect to *server*: returns the stream, its INFO and bytes read past the PONG."""
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(server.host, server.port)
    except OSError as exc:
        raise NatsConnectionError(f"cannot connect to {server.url}: {exc}") from exc
    try:
        buf = bytearray()
        line = await _read_line(stream, buf)
        if not line.startswith(b"INFO "):
            raise NatsConnectionError(f"{server.url} is not a NATS server (it sent {line[:40]!r})")
        info = json.loads(line[5:])
        if tls is not None or server.tls or info.get("tls_required"):
            if not info.get("tls_required") and not info.get("tls_available"):
                raise NatsConnectionError(
                    f"TLS was asked for but {server.url} does not offer TLS: configure the "
                    "server with a certificate, or connect without tls="
                )
            ctx = tls if tls is not None else ssl.create_default_context()
            ssl_stream = trio.SSLStream(stream, ctx, server_hostname=server.host)
            stream = ssl_stream
            await ssl_stream.do_handshake()
        options: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "lang": _LANG,
            "version": _VERSION,
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "echo": echo,
        }
        if name is not None:
            options["name"] = name
        options.update(credentials.connect_fields(server, info.get("nonce")))
        await stream.send_all(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        while True:
            line = await _read_line(stream, buf)
            if line == b"PONG":
                return stream, info, bytes(buf)
            if line.startswith(b"-ERR"):
                text = line[4:].strip().strip(b"'").decode("utf-8", "replace")
                if "authorization" in text.lower() or "authentication" in text.lower():
                    raise AuthorizationError(
                        f"{server.url} refused the credentials ({text}): check user/password, "
                        "token, nkeys_seed or creds"
                    )
                raise NatsConnectionError(f"{server.url} refused the connection: {text}")
            if line.startswith(b"INFO "):
                info = json.loads(line[5:])
                on_info(info)
            elif line == b"PING":
                await stream.send_all(b"PONG\r\n")
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise NatsConnectionError(f"connection to {server.url} failed: {exc!r}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
