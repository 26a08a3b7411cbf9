"""Profile one kubetasks worker while it drains N queued no-op tasks: where the CPU per task goes.

    .venv/bin/python bench/profile.py                          # 100 000 tasks, 1 process x 8 threads, py-spy
    .venv/bin/python bench/profile.py --tasks 20000 --no-py-spy --runs 3   # CPU and SQL figures only
    .venv/bin/python bench/profile.py --tasks 20000 --no-py-spy --runs 3 --limit-concurrency 1000000
                                           # the same queue with a concurrency limit: the limited claim's cost

A throwaway PostgreSQL with `pg_stat_statements` (the same settings as bench/run.py), the tasks
written server-side, then `kubetasks worker --module bench.tasks_kubetasks`, with `py-spy record`
attached once it has connected (start-up stays out of the samples) unless --no-py-spy; py-spy comes
from PyPI into the project's venv (`.venv/bin/pip install py-spy`) and needs root or ptrace rights.
Reports, per task: the worker replica's CPU (its processes, from /proc, utime + stime), the PostgreSQL backends'
CPU, the server execution time per statement (`pg_stat_statements`), and py-spy's top functions
(self and inclusive samples turned into microseconds per task). Writes profile.md (and the raw
py-spy stacks) into the work directory.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from kubetasks.worker import db
from kubetasks.worker.pgserver import LocalPostgres, find_bindir

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from systems.kubetasks import Kubetasks, import_root  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def replica_cpu_seconds(pid: int) -> float:
    """CPU of a worker replica: its first process and the processes it started (--processes)."""
    children = [int(child) for tid in os.listdir(f"/proc/{pid}/task")
                for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children)


def backends(conn: psycopg.Connection) -> list[int]:
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name LIKE 'kubetasks-worker %%'").fetchall()
    return [int(r[0]) for r in rows]


def pending(conn: psycopg.Connection) -> int:
    row = conn.execute(Kubetasks.pending_sql).fetchone()
    return int(row[0]) if row else -1


# What the profiler polls every few ms while the worker runs, kept to an index probe: a count of the live tasks
# (or a sequential scan, which the planner picks while most rows are live) would take CPU from the 2 cores.
STARTED_SQL = "SELECT EXISTS (SELECT FROM kubetasks.tasks WHERE worker IS NOT NULL OR finished_at IS NOT NULL)"
LEFT_SQL = "SELECT EXISTS (SELECT FROM kubetasks.tasks WHERE finished_at IS NULL)"


def poll(conn: psycopg.Connection, sql: str) -> bool:
    row = conn.execute(sql).fetchone()
    return bool(row and row[0])


def top_functions(raw: Path, cpu_us: float, limit: int = 20) -> tuple[list[str], list[str], int]:
    """py-spy's raw (collapsed) stacks: self and inclusive share of the samples per function, and that
    share of the measured worker CPU per task (py-spy runs with --gil: only the thread holding the GIL is
    sampled, so a thread waiting for it or blocked in a system call counts nothing)."""
    self_s: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("thread (") and not f.startswith("process ")]
        if frames:
            self_s[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    def table(counter: collections.Counter[str]) -> list[str]:
        return [f"| {name} | {cpu_us * n / total:.1f} | {100 * n / total:.1f} % |"
                for name, n in counter.most_common(limit)]
    return table(self_s), table(incl), total


def code_path(checkout: str) -> str:
    """A PYTHONPATH entry that makes `kubetasks.worker` the worker/ folder of another checkout (e.g. the
    commit before a change, from `git archive`): it is found before the project's editable install."""
    root = Path(checkout).resolve()
    pkg = root / ".pypath-kubetasks" / "kubetasks"
    if not (pkg / "worker").exists():
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "worker").symlink_to(root / "worker", target_is_directory=True)
    return str(pkg.parent)


def run_once(args: argparse.Namespace, server: LocalPostgres, work: Path, index: int,
             code: str = "") -> dict[str, object]:
    name = f"prof{index}"
    dsn = server.create_database(name)
    if code:  # the other checkout's own migrations: its schema, not this one's
        subprocess.run([sys.executable, "-c", "import sys; from kubetasks.worker import db; db.migrate(sys.argv[1])",
                        dsn], env={**os.environ, "PYTHONPATH": code_path(code)}, check=True)
    else:
        db.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("INSERT INTO kubetasks.tasks (actor, args) SELECT %s, "
                     "jsonb_build_object('i', g, 'f', 0) FROM generate_series(0, %s - 1) AS g",
                     (args.actor, args.tasks))
        conn.execute("ANALYZE kubetasks.tasks")
        if args.limit_concurrency and not code:  # the queue's claims go through task_claim_limited
            conn.execute("INSERT INTO kubetasks.queues (name, concurrency_limit) VALUES ('default', %s)",
                         (args.limit_concurrency,))
        conn.execute("SELECT pg_stat_statements_reset()")
    out = work / f"run{index}"
    out.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join([*([code_path(code)] if code else []), str(import_root())])
    env = {**os.environ, "KUBETASKS_DATABASE__URL": dsn, "PYTHONPATH": pythonpath, "BENCH_OUT": str(out),
           "KUBETASKS_WORKER__PROCESSES": str(args.processes), "KUBETASKS_WORKER__THREADS": str(args.threads),
           "KUBETASKS_WORKER__METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    kubetasks = str(Path(sys.executable).with_name("kubetasks"))
    cmd = [kubetasks, "worker", "--module", "bench.tasks_kubetasks"]
    raw = out / "py-spy.txt"
    spy = None if args.no_py_spy else shutil.which("py-spy", path=str(Path(sys.executable).parent))
    sampler: subprocess.Popen[bytes] | None = None
    fds = [os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for name in ("worker.log", "py-spy.log")]
    log = fds[0]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
    t_spawn = time.time()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            worker_pid = None
            while worker_pid is None:  # the replica's first process, once one of its processes has connected
                row = conn.execute("SELECT pid, application_name FROM pg_stat_activity "
                                   "WHERE application_name LIKE 'kubetasks-worker %%' LIMIT 1").fetchone()
                if row is not None:
                    worker_pid = proc.pid  # not the pid in the name: with --processes, a child may connect first
                elif proc.poll() is not None:
                    raise RuntimeError(f"worker exited {proc.returncode}: see {out / 'worker.log'}")
                elif time.time() - t_spawn > 60:
                    raise RuntimeError("worker did not connect within 60 s")
                time.sleep(0.005)
            if spy:  # attached now, so that imports and start-up stay out of the samples
                sampler = subprocess.Popen([spy, "record", "--nonblocking", "--gil", "-r", str(args.rate), "-f", "raw",
                                            "-o", str(raw), "--pid", str(worker_pid)],
                                           stdout=subprocess.DEVNULL, stderr=fds[1])
            conn.execute("SET enable_seqscan = off")
            while not poll(conn, STARTED_SQL):
                time.sleep(0.002)
            t0 = time.time()
            cpu0 = replica_cpu_seconds(worker_pid)
            server0 = {pid: cpu_seconds(pid) for pid in backends(conn)}
            deadline = t0 + 600
            while poll(conn, LEFT_SQL) and time.time() < deadline:
                time.sleep(0.02)
            t1 = time.time()
            left = pending(conn)
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
                sampler.wait(timeout=30)
            cpu1 = replica_cpu_seconds(worker_pid)
            server1 = {pid: cpu_seconds(pid) for pid in backends(conn)}
            done = args.tasks - left
            statements = conn.execute(
                "SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g') "
                "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) "
                "AND query NOT LIKE '%%pg_stat_%%' "
                "AND query NOT LIKE 'SELECT EXISTS (SELECT FROM kubetasks.tasks WHERE%%' "
                "ORDER BY total_exec_time DESC LIMIT 12", (name,)).fetchall()
    finally:
        if sampler is not None and sampler.poll() is None:
            sampler.kill()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for fd in fds:
            os.close(fd)
    server_cpu = sum(server1[p] - server0.get(p, 0.0) for p in server1)
    result: dict[str, object] = {
        "drained": done, "seconds": t1 - t0, "per_s": done / (t1 - t0),
        "worker_cpu_us": (cpu1 - cpu0) * 1e6 / done, "server_cpu_us": server_cpu * 1e6 / done,
        "load": os.getloadavg()[0],
        "statements": [(int(c), float(t) * 1000 / done, int(r), int(c) and float(t) * 1000 / int(c), q[:160])
                       for c, t, r, q in statements],
    }
    if spy and raw.exists():
            result["self"], result["inclusive"], result["samples"] = top_functions(
                raw, float(result["worker_cpu_us"]))  # type: ignore[arg-type]
    return result


def report(args: argparse.Namespace, results: list[dict[str, object]], what: str) -> str:
    med = {k: statistics.median(float(r[k]) for r in results)  # type: ignore[arg-type]
           for k in ("per_s", "worker_cpu_us", "server_cpu_us")}
    last = results[-1]
    lines = [f"{what}: {args.tasks:,} queued no-op tasks, {args.processes} x {args.threads}, median of "
             f"{len(results)} run(s): {med['per_s']:,.0f} tasks/s, worker CPU {med['worker_cpu_us']:.1f} µs/task, "
             f"PostgreSQL backends' CPU {med['server_cpu_us']:.1f} µs/task (1-min load {last['load']:.2f}).", "",
             "Server execution time per statement of the worker (pg_stat_statements, last run; the profiler's "
             "own polling left out):", "",
             "| calls | µs per task | rows | µs per call | statement |", "|---|---|---|---|---|"]
    for calls, per_task, rows, per_call, query in last["statements"]:  # type: ignore[attr-defined]
        lines.append(f"| {calls:,} | {per_task:.1f} | {rows:,} | {per_call:.0f} | `{query}` |")
    if "self" in last:
        lines += ["", f"py-spy ({args.rate} Hz during the drain, {last['samples']} samples, idle threads "
                  "excluded), self time; µs per task = share x the measured worker CPU per task:", "",
                  "| function | µs per task | share |", "|---|---|---|", *last["self"],  # type: ignore[list-item]
                  "", "Inclusive time:", "", "| function | µs per task | share |", "|---|---|---|",
                  *last["inclusive"]]  # type: ignore[list-item]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--actor", default="bench.noop", choices=["bench.noop", "bench.noop_async"],
                   help="the sync no-op actor (task threads) or the async one (the worker's event loop)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--no-py-spy", action="store_true", help="CPU and pg_stat_statements only (no sampling)")
    p.add_argument("--work-dir", default="")
    p.add_argument("--limit-concurrency", type=int, default=0, metavar="N",
                   help="give the queue a concurrency limit of N (this checkout only, not the --baseline)")
    p.add_argument("--baseline", default="", metavar="DIR",
                   help="another checkout (e.g. `git archive COMMIT | tar -x -C DIR`): its worker runs in turn "
                        "with this one, --runs times each, and both medians are printed side by side")
    args = p.parse_args()
    work = Path(args.work_dir or BENCH / "results" / time.strftime("profile-%Y%m%dT%H%M%S"))
    work.mkdir(parents=True, exist_ok=True)
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL binaries found")
    server = LocalPostgres(bindir, extra_settings={"shared_preload_libraries": "pg_stat_statements"})
    results = []
    baseline: list[dict[str, object]] = []
    try:
        server.start()
        for index in range(1, args.runs + 1):
            for code, into in ([(args.baseline, baseline)] if args.baseline else []) + [("", results)]:
                res = run_once(args, server, work, len(results) + len(baseline) + 1, code)
                into.append(res)
                print(f"run {index}{' baseline' if code else ''}: {res['drained']} tasks in {res['seconds']:.2f}s = "
                      f"{res['per_s']:.0f}/s; worker CPU {res['worker_cpu_us']:.1f} µs/task, PostgreSQL CPU "
                      f"{res['server_cpu_us']:.1f} µs/task (load {res['load']:.2f})", file=sys.stderr)
    finally:
        server.destroy()

    def medians(of: list[dict[str, object]]) -> dict[str, float]:
        return {k: statistics.median(float(r[k]) for r in of)  # type: ignore[arg-type]
                for k in ("per_s", "worker_cpu_us", "server_cpu_us")}
    med = medians(results)
    texts = [("profile.md", report(args, results, "this checkout"))]
    if baseline:
        base = medians(baseline)
        texts.append(("profile-baseline.md", report(args, baseline, f"baseline {args.baseline}")))
        texts.append(("ab.md", f"A/B, medians of {args.runs}: baseline {base['per_s']:,.0f}/s, worker "
                      f"{base['worker_cpu_us']:.1f} µs/task, server {base['server_cpu_us']:.1f} µs/task -> this "
                      f"checkout {med['per_s']:,.0f}/s, worker {med['worker_cpu_us']:.1f} µs/task, server "
                      f"{med['server_cpu_us']:.1f} µs/task"))
    for filename, text in texts:
        (work / filename).write_text(text + "\n")
        print(text + "\n")
    print(f"\nwritten to {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
