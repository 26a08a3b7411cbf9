"""`kubetasks worker`: run the consumer, housekeeping and the HTTP endpoints, in one or several processes.

Concurrency of a replica = processes × threads. The first process always works; with several, it also
starts the others, restarts any that die (with backoff) and serves their metrics aggregated through
prometheus-client's multiprocess mode. No idle supervisor process, so memory is spent on workers only.
The others are forked at start-up, before any thread or connection exists, so they work as soon as the
first one does instead of importing everything again; a restarted one is a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, NoReturn

import psycopg

from . import db, registry
from .settings import Settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .consumer import Health

log = logging.getLogger(__name__)

RESTART_ME = 75  # exit code of a child that wants a fresh process (threads stuck past their time limit)


def wait_for_database(settings: Settings, health: Health | None = None) -> None:
    """Block until the database answers and the schema is current, logging why while it does not."""
    backoff = db.Backoff.for_database(settings.database)
    url = settings.database.url
    while True:
        try:
            with db.connect(settings.database) as conn:
                applied = db.migrate(conn)
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
                return
        except psycopg.OperationalError as exc:
            delay = backoff.next()
            host = psycopg.conninfo.conninfo_to_dict(url).get("host", "?")
            port = psycopg.conninfo.conninfo_to_dict(url).get("port", "5432")
            if health is not None:
                health.beat()  # alive, just waiting: /healthz stays green, /readyz says why not ready
                health.reason = f"cannot reach PostgreSQL at {host}:{port}"
            log.error("cannot reach PostgreSQL at %s:%s (%s); retrying in %.1fs — check "
                      "KUBETASKS_DATABASE__URL and that the server is up",
                      host, port, str(exc).strip().splitlines()[0] if str(exc).strip() else exc, delay)
            time.sleep(delay)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)


def serve_http(settings: Settings, health: Health, children: Children | None) -> WSGIServer | None:
    """/metrics, /healthz and /readyz of the replica, served by its first process."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    from . import http, metrics

    if not settings.worker.metrics_port:
        return None
    exposed = REGISTRY
    if children is not None:
        exposed = CollectorRegistry()
        multiprocess.MultiProcessCollector(exposed)  # type: ignore[no-untyped-call]
    exposed.register(metrics.DatabaseCollector(settings.database))
    everyone_alive = children.alive if children is not None else (lambda: True)
    return http.serve(settings.worker.metrics_host, settings.worker.metrics_port, exposed,
                      healthz=lambda: (health.alive(60) and everyone_alive(), "worker loops turning"),
                      readyz=lambda: (health.ready, health.reason))


def run_process(settings: Settings, *, health: Health | None = None, children: Children | None = None,
                server: WSGIServer | None = None) -> int:
    """One worker process: consumer + housekeeping. With `children`, it also supervises the replica's other
    processes; `server` (its HTTP endpoints) is shut down when it ends."""
    from . import consumer, housekeeping

    registry.load_modules(settings.worker.modules)
    health = health or consumer.Health()
    worker = consumer.Consumer(settings, health)
    keeper = housekeeping.Housekeeper(settings)

    def stop() -> None:
        worker.stop()
        if children is not None:
            children.terminate()  # Kubernetes signals only the container's first process: pass it on

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        return await worker.run()

    keeper.start()
    try:
        return asyncio.run(main())
    finally:
        keeper.stop()
        if children is not None:
            children.stop(timeout=settings.worker.shutdown_timeout.total_seconds() + 5)
        if server is not None:
            server.shutdown()


SETTINGS_ENV = "KUBETASKS_RUNNER_SETTINGS"  # how a child process receives the replica's settings


def child_main() -> None:
    """Entry point of the replica's extra worker processes."""
    _die_with_parent()
    _configure_logging()
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    sys.exit(run_process(settings))


def _forked_child_main(settings: Settings) -> NoReturn:
    """A child forked at start-up: the parent's imports are its own, so it only waits for the schema (the
    parent may be migrating it) and works. It never returns into the parent's code (os._exit)."""
    code = 1
    try:
        _die_with_parent()
        wait_for_database(settings)
        code = run_process(settings)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker process %s failed", os.getpid())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkedProcess:
    """A child forked from this process, with the part of subprocess.Popen's interface Children uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = os.pidfd_open(pid)  # readable once it exits: waits without polling

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._exited)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            select.select([self._exited], [], [], timeout)
            if self.poll() is None:
                raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid cannot have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no orphan keeps running tasks."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before we asked
        os._exit(1)


class Children:
    """The replica's extra worker processes (the first process works too): started, restarted with backoff when
    they die, stopped with SIGTERM. Forked at start-up, fresh interpreters when restarted: no multiprocessing
    helper process costs memory."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.env = {**os.environ, SETTINGS_ENV: settings.model_dump_json()}
        self.procs: list[subprocess.Popen[bytes] | ForkedProcess | None] = [None] * count
        self.restart_at: list[float] = [0.0] * count
        self.backoff = [db.Backoff(0.5, 30.0) for _ in range(count)]
        self.stopping = threading.Event()
        self.monitor = threading.Thread(target=self._watch, name="kubetasks-children", daemon=True)

    def start(self) -> None:
        """Fork the children while this process has no other thread (forking then is safe), else spawn them."""
        for index in range(len(self.procs)):
            if threading.active_count() == 1 and hasattr(os, "pidfd_open"):  # pidfd: Linux
                self._fork(index)
            else:
                self._spawn(index)
        self.monitor.start()

    def _fork(self, index: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _forked_child_main(self.settings)
        self.procs[index] = ForkedProcess(pid)

    def _spawn(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-c", "from kubetasks.worker.runner import child_main; child_main()"], env=self.env)

    def alive(self) -> bool:
        return all(p is not None and p.poll() is None for p in self.procs)

    def _watch(self) -> None:
        from prometheus_client import multiprocess

        while not self.stopping.wait(0.2):
            now = time.monotonic()
            for index, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                if self.restart_at[index] == 0.0:
                    multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                    delay = self.backoff[index].next()
                    if proc.returncode == RESTART_ME:
                        delay = 0.0  # it asked for a fresh process: not a crash
                    log.warning("worker process %s exited with %s; restarting in %.1fs", proc.pid, proc.returncode,
                                delay)
                    self.restart_at[index] = now + delay
                elif now >= self.restart_at[index] and not self.stopping.is_set():
                    self.restart_at[index] = 0.0
                    self._spawn(index)

    def terminate(self) -> None:
        self.stopping.set()
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> None:
        self.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(settings: Settings) -> int:
    """Entry point of `kubetasks worker`: processes × threads in this replica, the first process included.
    Exits with 75 when threads stuck past their time limit call for a fresh process."""
    _configure_logging()
    children = None
    if settings.worker.processes > 1:
        # Counters of all processes are aggregated through files; this must precede the metrics import.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="kubetasks-metrics-"))
        if "kubetasks.worker.metrics" in sys.modules:
            log.warning("metrics were imported before the worker started: this process's counters are not "
                        "aggregated with the others'")
        children = Children(settings, settings.worker.processes - 1)
        children.start()  # first of all: no thread, connection or metric exists yet to be forked with it
    from .consumer import Health  # imports the metrics: only now that their directory is set

    health = Health()
    health.reason = "waiting for the database"
    server = serve_http(settings, health, children)  # before the database: probes answer while we wait
    wait_for_database(settings, health)
    return run_process(settings, health=health, children=children, server=server)
