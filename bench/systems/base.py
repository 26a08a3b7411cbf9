"""The small interface every benchmarked system implements, and the process plumbing they share.

An adapter names a driver (a script run in the system's own environment: the peers' venv, node,
or the project's venv for kubetasks), the worker command lines, and the SQL that counts the tasks
not yet finished. Everything else (timing, waiting, RSS) is generic and lives here or in
`scenarios.py`, so every system is measured by the same code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
PEERS_DIR = BENCH / "peers"


class DriverError(RuntimeError):
    """A driver command exited non-zero or printed no JSON answer."""


class WorkerDied(RuntimeError):
    """A worker process exited while the scenario still needed it."""


class Timeout(RuntimeError):
    """A wait ran past its deadline."""


@dataclass
class Ctx:
    """Where one scenario run of one system happens."""

    dsn: str
    out: Path  # task start records (starts-<pid>.txt) and enqueue records
    logs: Path  # driver and worker output


@dataclass(frozen=True)
class Slots:
    """Concurrency of one configuration: `processes` x `threads` slots (the total is equal for all)."""

    processes: int = 1
    threads: int = 8

    @property
    def total(self) -> int:
        return self.processes * self.threads

    def __str__(self) -> str:
        return f"{self.processes}x{self.threads}"


class System:
    """One system under test in one configuration: its settings variant and its process split.

    Subclasses fill in the class attributes, `driver()`, and per variant the exact settings
    (`settings()`, shown in the table) and how they reach the workers (`worker_env`).
    """

    kind: str = ""  # the system: its driver, schema template and table group
    label: str = ""
    python: bool = True  # a Python peer (for the "best Python peer" ratio)
    variants: tuple[str, ...] = ("defaults",)  # the first is the one the other scenarios run with
    has_scheduler: bool = True
    has_workflows: bool = False  # scenario 7 (workflow fan-out) is kubetasks' own: `n/a` for the peers
    keeps_finished: bool = True  # False where finished jobs are deleted (no finished rows to prefill)
    pending_sql: str = ""  # COUNT of tasks queued, running or waiting for a retry
    concurrency_note: str = ""

    def __init__(self, variant: str = "", slots: Slots | None = None) -> None:
        self.variant = variant or self.variants[0]
        if self.variant not in self.variants:
            raise ValueError(f"{self.kind} has no settings variant {self.variant!r} ({', '.join(self.variants)})")
        self.slots = slots or Slots()

    @property
    def name(self) -> str:
        """Unique per configuration; also part of database names (letters, digits, underscores)."""
        return f"{self.kind}_{self.variant}_{self.slots.processes}x{self.slots.threads}"

    @property
    def row_label(self) -> str:
        return f"{self.label}, {self.variant}"

    def settings(self) -> str:
        """The exact worker settings of this configuration, for the table."""
        return self.concurrency_note

    def missing(self) -> str | None:
        """Why this system cannot run here (e.g. bench/setup.sh not run), or None."""
        return None

    def driver(self) -> list[str]:
        raise NotImplementedError

    def env(self, ctx: Ctx, schedules: int = 0) -> dict[str, str]:
        return {**os.environ, "BENCH_DSN": ctx.dsn, "BENCH_OUT": str(ctx.out),
                "BENCH_SCHEDULES": str(schedules), "PYTHONUNBUFFERED": "1"}

    def cwd(self) -> Path:
        return BENCH

    # --- driver commands -------------------------------------------------------------------

    def call(self, ctx: Ctx, command: str, *args: str, timeout: float = 300.0) -> dict[str, object]:
        """Run one driver command to completion and return its JSON answer."""
        log = ctx.logs / f"{self.name}-{command}.log"
        with open(log, "ab") as err:
            try:
                proc = subprocess.run([*self.driver(), command, *args], env=self.env(ctx),
                                      cwd=self.cwd(), stdout=subprocess.PIPE, stderr=err,
                                      timeout=timeout, start_new_session=True)
            except subprocess.TimeoutExpired as exc:
                raise Timeout(f"{self.name} {command} took over {timeout:.0f}s") from exc
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise DriverError(f"{self.name} {command} exited {proc.returncode}: {tail(log)}")
        try:
            answer = json.loads(lines[-1])
        except json.JSONDecodeError as exc:
            raise DriverError(f"{self.name} {command} answered {lines[-1]!r}") from exc
        return dict(answer)

    def schema(self, ctx: Ctx) -> None:
        self.call(ctx, "schema", timeout=120)

    def enqueue(self, ctx: Ctx, n: int, fail_every: int = 0, timeout: float = 600) -> float:
        """Bulk-enqueue n no-op tasks; seconds measured inside the driver (no interpreter start-up)."""
        answer = self.call(ctx, "enqueue", "--n", str(n), "--fail-every", str(fail_every), timeout=timeout)
        return float(answer["seconds"])  # type: ignore[arg-type]

    def prefill(self, ctx: Ctx, queued: int, finished: int, timeout: float = 900) -> None:
        self.call(ctx, "prefill", "--n", str(queued), "--finished", str(finished), timeout=timeout)

    def setup_schedules(self, ctx: Ctx, n: int) -> None:
        """Store n every-minute schedules before the workers start (systems that keep them in the database).

        The peers declare their schedules in code when the worker starts, so the default does nothing.
        """

    def probe(self, ctx: Ctx) -> None:
        """Enqueue the single readiness task (tag -1)."""
        self.call(ctx, "probe", timeout=60)

    def start_steady(self, ctx: Ctx, rate: float, duration: float) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the log's descriptor: ours can be closed at once.
        with open(ctx.logs / f"{self.name}-steady.log", "ab") as log:
            return subprocess.Popen([*self.driver(), "steady", "--rate", str(rate), "--duration", str(duration)],
                                    env=self.env(ctx), cwd=self.cwd(), stdout=subprocess.PIPE, stderr=log,
                                    start_new_session=True)

    # --- workers ---------------------------------------------------------------------------

    def worker_commands(self, schedules: int) -> list[list[str]]:
        """Default: one driver `worker` process per slot process, each with `threads` slots."""
        cmd = [*self.driver(), "worker", "--concurrency", str(self.slots.threads), "--schedules", str(schedules)]
        return [cmd for _ in range(self.slots.processes)]

    def worker_env(self, ctx: Ctx, schedules: int) -> dict[str, str]:
        return self.env(ctx, schedules)

    def start_workers(self, ctx: Ctx, schedules: int = 0) -> WorkerGroup:
        group = WorkerGroup(self.name)
        env = self.worker_env(ctx, schedules)
        for idx, cmd in enumerate(self.worker_commands(schedules)):
            with open(ctx.logs / f"{self.name}-worker{idx}.log", "ab") as log:
                group.procs.append(subprocess.Popen(cmd, env=env, cwd=self.cwd(), stdout=log, stderr=log,
                                                    start_new_session=True))
        return group


@dataclass
class WorkerGroup:
    """The worker processes of one system, each the leader of its own process group."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hwm_kb: dict[int, int] = field(default_factory=dict)  # peak VmHWM seen per pid of the trees
    _last_sample: float = 0.0

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.poll()
            if code is not None:
                raise WorkerDied(f"{self.name} worker pid {proc.pid} exited with {code}")

    def sample(self, every: float = 0.5) -> None:
        """Record VmHWM (peak RSS) of every process in the worker trees, at most every `every` s."""
        now = time.monotonic()
        if now - self._last_sample < every:
            return
        self._last_sample = now
        for pid in descendants([p.pid for p in self.procs]):
            kb = vm_hwm_kb(pid)
            if kb is not None and kb > self.hwm_kb.get(pid, 0):
                self.hwm_kb[pid] = kb

    def peak_rss_mb(self) -> float:
        """Sum over the worker tree of each process's peak RSS."""
        return sum(self.hwm_kb.values()) / 1024.0

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM each worker's process group, SIGKILL what is left after `grace` seconds."""
        self.sample(every=0)
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            # The group may outlive its leader (forked children): kill it in any case.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(roots: list[int]) -> list[int]:
    """The given pids and all their descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-1500:]
