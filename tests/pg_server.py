"""A real PostgreSQL server for the tests: Debian's binaries, a private data directory,
a free 127.0.0.1 port and a unix socket in a temporary directory.

PostgreSQL refuses to run as root (tests and CI run as root), so when the euid is 0 the
server runs as the `postgres` user that Debian's package creates, and its directory is
handed to that user. It is stopped by its PID (a fast shutdown, SIGINT).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_WAIT_S = 30.0
_names = itertools.count()


def find_postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin holding initdb and postgres."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    for postgres in reversed(found):
        if (postgres.parent / "initdb").exists():
            return postgres.parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    workdir: Path
    port: int
    process: subprocess.Popen
    user: str | None  # the OS user it runs as, when we are root

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, bindir: Path) -> PostgresServer:
        workdir = Path(tempfile.mkdtemp(prefix="fedge-pg-"))  # not under root's 0700 tmp
        user = "postgres" if os.geteuid() == 0 else None
        data, sock = workdir / "data", workdir / "sock"
        sock.mkdir()
        if user is not None:
            account = pwd.getpwnam(user)
            for path in (workdir, sock):
                os.chown(path, account.pw_uid, account.pw_gid)
        as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid} if user else {}
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-instructions"],
                       check=True, capture_output=True, **as_user)
        for attempt in range(3):  # another process may take the free port first
            port = free_port()
            with open(workdir / "server.log", "wb") as log:
                process = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                     "-c", "listen_addresses=127.0.0.1",
                     "-c", f"unix_socket_directories={sock}",
                     "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
                    stdout=log, stderr=subprocess.STDOUT, **as_user)
            server = cls(bindir, workdir, port, process, user)
            try:
                server._wait_ready()
                return server
            except RuntimeError:
                if attempt == 2 or "could not bind" not in server.log_tail():
                    server.stop()
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_WAIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}): "
                                   f"{self.log_tail()}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "server.log").read_text()[-2000:]
        return ""

    def create_database(self, template: str | None = None) -> str:
        """A new database, empty or a copy of `template` (a URL of this server; nobody
        may be connected to it); its URL."""
        import psycopg

        name = f"fedge_{os.getpid()}_{next(_names)}"
        copy = f" TEMPLATE {template.rsplit('/', 1)[1]}" if template else ""
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}{copy}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT: roll back open transactions, then exit)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
