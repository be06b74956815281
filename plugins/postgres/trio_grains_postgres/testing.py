"""A throwaway PostgreSQL server for tests, benchmarks and development.

    from trio_grains_postgres.testing import start_test_server

    with start_test_server(tmp_path) as dsn:
        ...  # options = {"dsn": dsn}

It uses the PostgreSQL server programs installed on the machine (``initdb`` and
``pg_ctl`` under ``/usr/lib/postgresql/*/bin``, the newest first, or on ``PATH``;
``bash scripts/postgres.sh install`` installs them on Debian/Ubuntu): a fresh cluster in a
new directory, listening on a free port of 127.0.0.1 (and a unix socket in that
directory), trust authentication for 127.0.0.1 and the socket only, fsync off (fast, not
crash-safe). On exit the server is stopped (``pg_ctl stop -m fast``) and the directory
removed. Nothing is downloaded.

PostgreSQL refuses to run as root. As root (CI runs as root), the programs run as the
``postgres`` system user (``runuser -u postgres --``), in a directory owned by it: inside
*tmp_dir* if that user can write there, else in a new directory of the system's
temporary directory (pytest's ``tmp_path`` is private to root). The superuser of the
cluster is named after the user running it, so the DSN's user is ``postgres`` then.

:class:`PostgresTestServer` is the lower-level handle, with ``stop()`` and ``start()``
for tests of a server that goes away and comes back.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = [
    "PostgresTestServer",
    "PostgresUnavailable",
    "find_server_programs",
    "running_test_server",
    "start_test_server",
]

INSTALL_HINT = "run `bash scripts/postgres.sh install` (Debian/Ubuntu: apt-get install postgresql)"
_SERVER_USER = "postgres"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes, with the name ".s.PGSQL.<port>" in it
_SETTINGS = """
# trio-grains test server
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
"""
_HBA = """\
# trio-grains test server: trust, but only over the private socket and 127.0.0.1
local all all trust
host all all 127.0.0.1/32 trust
"""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here: programs missing, or the start failed."""


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def find_server_programs() -> tuple[Path, Path]:
    """``(initdb, pg_ctl)``: the newest under ``/usr/lib/postgresql/*/bin``, else on PATH.

    Raises :class:`PostgresUnavailable` saying how to install them.
    """
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        initdb, pg_ctl = Path(bin_dir, "initdb"), Path(bin_dir, "pg_ctl")
        if initdb.is_file() and pg_ctl.is_file():
            return initdb, pg_ctl
    initdb_path, pg_ctl_path = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb_path and pg_ctl_path:
        return Path(initdb_path), Path(pg_ctl_path)
    raise PostgresUnavailable(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: none under "
        f"/usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class PostgresTestServer:
    """A cluster in *base_dir*: ``init()`` once, then ``start()`` / ``stop()`` freely."""

    initdb: Path
    pg_ctl: Path
    base_dir: Path
    run_as: str | None = None
    port: int = attrs.field(factory=_free_port)

    @property
    def user(self) -> str:
        """The cluster's superuser: the user the server runs as."""
        return self.run_as or getpass.getuser()

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def dsn(self) -> str:
        """A libpq connection string to database ``postgres`` as the superuser, over TCP."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres"

    def _run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [str(arg) for arg in args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            command,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str]) -> PostgresUnavailable:
        output = (result.stdout + result.stderr).strip()
        log = ""
        with contextlib.suppress(OSError):
            log = self.log_file.read_text(errors="replace")[-2000:].strip()
        details = "\n".join(part for part in (output, log) if part)
        return PostgresUnavailable(f"{what} failed (exit {result.returncode}):\n{details}")

    def init(self) -> None:
        """Create the cluster (``initdb``) and write its settings."""
        result = self._run(
            self.initdb,
            "-D",
            self.data_dir,
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        if result.returncode:
            raise self._fail("initdb", result)
        socket_dir = str(self.base_dir)
        if len(socket_dir) > _MAX_SOCKET_PATH:
            socket_dir = ""  # too long for a unix socket path: TCP only
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(_SETTINGS.format(port=self.port, socket_dir=socket_dir))
        (self.data_dir / "pg_hba.conf").write_text(_HBA)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        result = self._run(
            self.pg_ctl, "start", "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "60"
        )
        if result.returncode:
            raise self._fail(f"starting the test server on port {self.port}", result)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``); nothing if it is not running."""
        if not self.is_running():
            return
        result = self._run(self.pg_ctl, "stop", "-D", self.data_dir, "-m", "fast", "-w", "-t", "60")
        if result.returncode and self.is_running():
            raise self._fail("stopping the test server", result)

    def is_running(self) -> bool:
        return self._run(self.pg_ctl, "status", "-D", self.data_dir).returncode == 0


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            "running as root, and PostgreSQL refuses to run as root, but there is no "
            f"{_SERVER_USER!r} system user to run it as; {INSTALL_HINT}, or run as a normal user"
        ) from None


def _base_dir(tmp_dir: Path, run_as: pwd.struct_passwd | None) -> Path:
    parent: Path | None = tmp_dir
    if run_as is not None:
        where = str(tmp_dir)
        check = ["runuser", "-u", run_as.pw_name, "--", "test", "-w", where, "-a", "-x", where]
        if subprocess.run(check, capture_output=True, check=False).returncode:
            parent = None  # the system's temporary directory
    base = Path(tempfile.mkdtemp(prefix="trio-grains-pg-", dir=parent))
    if run_as is not None:
        os.chown(base, run_as.pw_uid, run_as.pw_gid)
    return base


@contextlib.contextmanager
def running_test_server(tmp_dir: str | os.PathLike[str]) -> Iterator[PostgresTestServer]:
    """Run a test server for the ``with`` block; yield its :class:`PostgresTestServer`.

    Raises :class:`PostgresUnavailable` when the programs are missing or it cannot start.
    """
    initdb, pg_ctl = find_server_programs()
    run_as = _server_user() if os.geteuid() == 0 else None
    if run_as is not None and shutil.which("runuser") is None:
        raise PostgresUnavailable(
            "running as root needs `runuser` (util-linux) to run PostgreSQL as postgres"
        )
    base = _base_dir(Path(tmp_dir), run_as)
    server = PostgresTestServer(initdb, pg_ctl, base, run_as.pw_name if run_as else None)
    try:
        server.init()
        for attempt in range(3):
            try:
                server.start()
                break
            except PostgresUnavailable:
                # Another process may have taken the free port meanwhile: try another one.
                log = ""
                with contextlib.suppress(OSError):
                    log = server.log_file.read_text(errors="replace")
                if attempt == 2 or "could not bind" not in log:
                    raise
                server.port = _free_port()
                with open(server.data_dir / "postgresql.conf", "a") as conf:
                    conf.write(f"port = {server.port}\n")
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def start_test_server(tmp_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Run a throwaway PostgreSQL server for the ``with`` block; yield its DSN.

    Raises :class:`PostgresUnavailable` (with how to install PostgreSQL) when it cannot.
    """
    with running_test_server(tmp_dir) as server:
        yield server.dsn
