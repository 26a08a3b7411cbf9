"""`kubetasks worker`: run the consumer, housekeeping and the HTTP endpoints, in one or several processes.

Concurrency of a replica = processes × threads. With one process everything runs here; with several,
this process supervises children (restarting any that die, with backoff) and serves their metrics
aggregated through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess

import psycopg

from kubetasks.worker import db, registry
from kubetasks.worker.settings import Settings

log = logging.getLogger(__name__)

RESTART_ME = 75  # exit code of a child that wants a fresh process (threads stuck past their time limit)


def wait_for_database(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    """Block until the database answers and the schema is current, logging why while it does not."""
    backoff = 0.5
    url = settings.database.url
    while True:
        try:
            with db.connect(url, connect_timeout=settings.database.connect_timeout) as conn:
                applied = db.migrate(conn)
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
                return
        except psycopg.OperationalError as exc:
            host = psycopg.conninfo.conninfo_to_dict(url).get("host", "?")
            port = psycopg.conninfo.conninfo_to_dict(url).get("port", "5432")
            log.error("cannot reach PostgreSQL at %s:%s (%s); retrying in %.0fs — check "
                      "KUBETASKS_DATABASE__URL and that the server is up",
                      host, port, str(exc).strip().splitlines()[0] if str(exc).strip() else exc, backoff)
            time.sleep(backoff)
            backoff = min(settings.database.reconnect_max_backoff, backoff * 2)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)


def run_process(settings: Settings, *, serve_http: bool = True) -> int:
    """One worker process: consumer + housekeeping (+ HTTP when it is the only process)."""
    from prometheus_client import REGISTRY

    from kubetasks.worker import consumer, housekeeping, http, metrics

    registry.load_modules(settings.worker.modules)
    health = consumer.Health()
    worker = consumer.Consumer(settings, health)
    keeper = housekeeping.Housekeeper(settings)
    server = None
    if serve_http and settings.worker.metrics_port:
        REGISTRY.register(metrics.DatabaseCollector(settings.database.url))
        server = http.serve(settings.worker.metrics_host, settings.worker.metrics_port, REGISTRY,
                            healthz=lambda: (health.alive(60), "consumer loop turning"),
                            readyz=lambda: (health.ready, health.reason))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        return await worker.run()

    keeper.start()
    try:
        return asyncio.run(main())
    finally:
        keeper.stop()
        if server is not None:
            server.shutdown()


def _child_main(settings_json: str) -> None:
    _die_with_parent()
    _configure_logging()
    settings = Settings.model_validate_json(settings_json)
    sys.exit(run_process(settings, serve_http=False))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the supervisor dies, so no orphan keeps running tasks."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(settings: Settings) -> int:
    """Run `processes` children; restart the ones that exit unexpectedly; stop them all on SIGTERM."""
    from prometheus_client import CollectorRegistry, multiprocess

    from kubetasks.worker import http, metrics

    metrics_dir = tempfile.mkdtemp(prefix="kubetasks-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    children: dict[int, BaseProcess] = {}
    restarts: dict[int, float] = {}
    stopping = False

    def start(index: int) -> None:
        proc = ctx.Process(target=_child_main, args=(settings.model_dump_json(),), name=f"kubetasks-worker-{index}")
        proc.start()
        children[index] = proc

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.worker.metrics_port:
        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated)  # type: ignore[no-untyped-call]
        aggregated.register(metrics.DatabaseCollector(settings.database.url))
        http.serve(settings.worker.metrics_host, settings.worker.metrics_port, aggregated,
                   healthz=lambda: (all(p.is_alive() for p in children.values()), "children alive"),
                   readyz=lambda: (any(p.is_alive() for p in children.values()), "children alive"))
    for index in range(settings.worker.processes):
        start(index)
    while not stopping:
        time.sleep(0.2)
        for index, proc in list(children.items()):
            if proc.is_alive() or stopping:
                continue
            code = proc.exitcode
            multiprocess.mark_process_dead(proc.pid or 0)  # type: ignore[no-untyped-call]
            delay = 0.0 if code == RESTART_ME else min(30.0, 2 * restarts.get(index, 0.5))
            log.warning("worker process %s exited with %s; restarting in %.1fs", proc.pid, code, delay)
            restarts[index] = max(delay, 0.5)
            time.sleep(delay)
            start(index)
    for proc in children.values():
        proc.join(30)
    return 0


def run(settings: Settings) -> int:
    """Entry point of `kubetasks worker`."""
    _configure_logging()
    wait_for_database(settings)
    if settings.worker.processes == 1:
        code = run_process(settings)
        return 0 if code == RESTART_ME else code  # a lone process restarts by exiting; its supervisor restarts it
    return supervise(settings)
