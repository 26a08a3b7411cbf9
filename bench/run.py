"""Benchmark kubetasks against its peers on one throwaway PostgreSQL, side by side.

    .venv/bin/python bench/run.py                      # everything, default sizes (--scale 0.05)
    .venv/bin/python bench/run.py --systems kubetasks,pgqueuer --scenarios 2,3 --runs 3 --scale 0.01
    .venv/bin/python bench/run.py --json /tmp/out.json

Run `bench/setup.sh` first (the peers' virtualenv and node_modules). Prints a Markdown table (each
system's median over the runs, and kubetasks/peer ratios) and writes JSON with every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # `systems` and `scenarios` are siblings, whatever the cwd

try:
    import psycopg

    from kubetasks.worker.pgserver import LocalPostgres, find_bindir
except ImportError as exc:  # pragma: no cover - wrong interpreter
    sys.exit(f"bench/run.py needs the project's venv (psycopg, kubetasks): {exc}\n"
             "run it as .venv/bin/python bench/run.py")

from scenarios import METRICS, RUNNERS, SCENARIOS, Env, Sizes, runner_keys  # noqa: E402
from systems import SYSTEMS  # noqa: E402
from systems.base import Ctx, DriverError, Slots, System, Timeout, WorkerDied  # noqa: E402

DEFAULT_SCALE = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, from: {', '.join(SYSTEMS)} (default: all)")
    p.add_argument("--scenarios", default="1,2,3,4,5,6", help="comma-separated scenario numbers 1-6")
    p.add_argument("--runs", type=int, default=3, help="runs per system and scenario; the median is shown")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                   help="fraction of the issue's full sizes (100k tasks, 1M+1M deep rows, 10k schedules)")
    p.add_argument("--tasks", type=int, default=0, help="override: tasks in scenarios 1, 2 and 5")
    p.add_argument("--deep-queued", type=int, default=0, help="override: queued rows in scenario 4")
    p.add_argument("--deep-finished", type=int, default=0, help="override: finished rows in scenario 4")
    p.add_argument("--schedules", type=int, default=0, help="override: schedules in scenario 6")
    p.add_argument("--steady-rate", type=float, default=500.0, help="scenario 3 enqueue rate (tasks/s)")
    p.add_argument("--steady-seconds", type=float, default=10.0, help="scenario 3 duration")
    p.add_argument("--processes", type=int, default=2, help="worker processes per system")
    p.add_argument("--threads", type=int, default=8, help="slots (threads / async tasks) per process")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="deadline of each wait, in seconds (default: 120 + tasks / 50)")
    p.add_argument("--budget-minutes", type=float, default=16.0,
                   help="start no scenario run expected to end past this (0: no limit); runs left out "
                        "are marked in the table (default 16, so `make bench` stays under 20 minutes)")
    p.add_argument("--json", dest="json_path", default=str(BENCH / "results" / "latest.json"),
                   help="write the results here (default: bench/results/latest.json)")
    p.add_argument("--work-dir", help="records and logs (default: bench/results/<timestamp>)")
    p.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                   help="extra PostgreSQL setting, the same for every system (repeatable)")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def admin(server: LocalPostgres, statement: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(statement)


def drop_database(server: LocalPostgres, name: str) -> None:
    with contextlib.suppress(psycopg.Error):
        admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def versions(server: LocalPostgres) -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    with psycopg.connect(server.dsn()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        found["postgresql"] = str(row[0]) if row else "?"
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    return found


def format_value(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes(args.scale, tasks=args.tasks, deep_queued=args.deep_queued,
                           deep_finished=args.deep_finished, schedules=args.schedules,
                           steady_rate=args.steady_rate, steady_seconds=args.steady_seconds)
        self.slots = Slots(args.processes, args.threads)
        # A system slower than 50 tasks/s is reported as a timeout rather than holding up the suite.
        self.timeout = args.timeout or 120.0 + self.sizes.tasks / 50
        self.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
        unknown = self.scenarios - set(SCENARIOS)
        if unknown:
            sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))} (use 1-6)")
        names = [n.strip() for n in args.systems.split(",") if n.strip()]
        bad = [n for n in names if n not in SYSTEMS]
        if bad:
            sys.exit(f"unknown systems: {', '.join(bad)} (known: {', '.join(SYSTEMS)})")
        self.systems: list[System] = [cls() for n, cls in SYSTEMS.items() if n in names]  # table order
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.work = Path(args.work_dir) if args.work_dir else BENCH / "results" / stamp
        # results[system][metric][run] -> a number, or a status word
        self.results: dict[str, dict[str, dict[int, Any]]] = {s.name: {} for s in self.systems}
        self.errors: dict[str, list[str]] = {s.name: [] for s in self.systems}
        self.details: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}
        self.setup_s: dict[str, float] = {}
        self.durations: dict[tuple[str, str], float] = {}  # slowest run seen per (system, scenario)
        self.sched_lead: dict[str, float] = {}  # seconds from worker start to ready, padded
        self.started = time.time()
        self.skipped: list[str] = []  # scenario runs left out to stay within --budget-minutes

    def run(self) -> dict[str, Any]:
        started = time.time()
        bindir = find_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries found (apt-get install postgresql)")
        settings = dict(s.split("=", 1) for s in self.args.pg_setting)
        server = LocalPostgres(bindir, extra_settings=settings)
        self.work.mkdir(parents=True, exist_ok=True)
        log(f"PostgreSQL from {bindir}; work dir {self.work}")
        log(f"sizes: {self.sizes}; slots: {self.slots.processes} x {self.slots.threads}; runs: {self.args.runs}")
        try:
            server.start()
            meta_versions = versions(server)
            ready = self.make_templates(server)
            self.run_all(server, ready)
        finally:
            server.destroy()
        return self.report(meta_versions, time.time() - started)

    def run_all(self, server: LocalPostgres, ready: list[System]) -> None:
        """Run every (run, system, scenario), run-major so slow drifts hit all systems alike.

        Scenario 6 must wait for a wall-clock minute; rather than idle, other scenario runs that are
        expected to end in time run first, and the scheduler workers start just ahead of the minute.
        Only one system's workers ever run at a time.
        """
        keys = runner_keys(self.scenarios)
        runs = range(1, self.args.runs + 1)
        normal = [(run, system, key) for run in runs for system in ready for key in keys if key != "6"]
        sched = [(run, system, "6") for run in runs for system in ready if "6" in keys]
        while normal or sched:
            if not sched:
                self.run_within_budget(server, *normal.pop(0), wait=0.0)
                continue
            system = sched[0][1]
            if not system.has_scheduler:
                self.run_one(server, *sched.pop(0))
                continue
            lead = self.sched_lead.get(system.name, 20.0)
            now = time.time()
            start_at = math.ceil((now + lead) / 60) * 60 - lead
            job = next((j for j in normal if self.estimate(j[1], j[2]) < start_at - now), None)
            if job is not None:
                normal.remove(job)
                self.run_within_budget(server, *job, wait=0.0)
                continue
            self.run_within_budget(server, *sched.pop(0), wait=max(0.0, start_at - now))

    def run_within_budget(self, server: LocalPostgres, run: int, system: System, key: str, wait: float) -> None:
        """Run one scenario run after `wait` seconds, unless it would end past the time budget."""
        budget = self.args.budget_minutes * 60
        expected = wait + self.estimate(system, key)
        if budget and time.time() - self.started + expected > budget:
            self.skipped.append(f"run {run} {system.name} scenario {key}")
            log(f"run {run} {system.name:14} scenario {key:2}: skipped, it would end past --budget-minutes")
            return
        time.sleep(wait)
        self.run_one(server, run, system, key)

    def estimate(self, system: System, key: str) -> float:
        """Expected seconds of one scenario run: the slowest seen so far (of this system, else of any
        system for that scenario), padded; 30 s before any was seen."""
        seen = self.durations.get((system.name, key))
        if seen is None:
            others = [d for (_, k), d in self.durations.items() if k == key]
            seen = max(others) if others else None
        return 30.0 if seen is None else seen * 1.25 + 3.0

    def make_templates(self, server: LocalPostgres) -> list[System]:
        """One schema-installed database per system; each scenario run clones it (a fresh database)."""
        ready = []
        for system in self.systems:
            reason = system.missing()
            if reason:
                log(f"{system.name}: not run: {reason}")
                self.unavailable[system.name] = reason
                continue
            name = f"tmpl_{system.name}"
            logs = self.work / "logs"
            logs.mkdir(exist_ok=True)
            ctx = Ctx(server.create_database(name), self.work, logs)
            t0 = time.time()
            try:
                system.schema(ctx)
            except (DriverError, Timeout) as exc:
                log(f"{system.name}: schema install failed: {exc}")
                self.unavailable[system.name] = f"schema install failed: {exc}"
                continue
            self.setup_s[system.name] = time.time() - t0
            ready.append(system)
        return ready

    def run_one(self, server: LocalPostgres, run: int, system: System, key: str) -> None:
        dbname = f"b_{system.name}_{key}_{run}"
        out = self.work / f"run{run}" / system.name / f"s{key}"
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        metrics = [m.key for m in METRICS if m.scenario in key and m.scenario in self.scenarios
                   and m.key != "retry_rel"]
        if key == "6" and not system.has_scheduler:
            for metric in metrics:
                self.results[system.name].setdefault(metric, {})[run] = "n/a"
            return
        t0 = time.time()
        env: Env | None = None
        status = "ok"
        try:
            dsn = server.create_database(dbname, template=f"tmpl_{system.name}")
            env = Env(system, Ctx(dsn, out, logs), self.sizes, self.slots, self.timeout)
            values = RUNNERS[key](env)
        except (Timeout, TimeoutError) as exc:
            status, values = "timeout", {"error": str(exc)}
        except (DriverError, WorkerDied, RuntimeError, OSError, psycopg.Error) as exc:
            status, values = "failed", {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:  # a bug in an adapter must not stop the other systems' runs
            (logs / "traceback.txt").write_text(traceback.format_exc())
            status, values = "failed", {"error": f"{type(exc).__name__}: {exc} (see {logs}/traceback.txt)"}
        finally:
            if env is not None:
                env.stop_all()
            drop_database(server, dbname)
        elapsed = time.time() - t0
        self.durations[(system.name, key)] = max(elapsed, self.durations.get((system.name, key), 0.0))
        ready_after = values.get("details", {}).get("ready_after_s") if status == "ok" else None
        if ready_after is not None:
            self.sched_lead[system.name] = max(self.sched_lead.get(system.name, 0.0), ready_after * 1.3 + 6.0)
        for metric in metrics:
            self.results[system.name].setdefault(metric, {})[run] = values[metric] if status == "ok" else status
        if status != "ok":
            self.errors[system.name].append(f"run {run} scenario {key}: {values['error']}")
        else:  # the start records are only needed to debug a failure; they grow with the scale
            for path in out.glob("*.txt"):
                path.unlink()
        self.details.append({"system": system.name, "run": run, "scenario": key, "status": status,
                             "seconds": round(time.time() - t0, 2),
                             **{k: v for k, v in values.items() if k not in metrics}})
        shown = ", ".join(f"{m}={format_value(values[m])}" for m in metrics) if status == "ok" else (
            f"{status}: {values['error']}")
        log(f"run {run} {system.name:14} scenario {key:2}: {shown} ({time.time() - t0:.1f}s)")

    def aggregate(self, system: str, metric: str) -> tuple[float | None, str, list[Any]]:
        by_run = self.results.get(system, {}).get(metric, {})
        if metric == "retry_rel":
            # Per run: scenario 5 throughput over the same run's scenario 2 throughput.
            retry = self.results.get(system, {}).get("retry", {})
            e2e = self.results.get(system, {}).get("e2e", {})
            by_run = {run: retry[run] / e2e[run] if isinstance(retry[run], float) and isinstance(e2e[run], float)
                      else (retry[run] if isinstance(retry[run], str) else e2e[run])
                      for run in retry if run in e2e}
        runs = [by_run[run] for run in sorted(by_run)]
        if system in self.unavailable:
            return None, "not run", []
        if not runs:
            skipped = any(f" {system} scenario " in job for job in self.skipped)
            return None, "skipped" if skipped else "not run", []
        for value in runs:
            if isinstance(value, str):
                return None, value, runs
        return statistics.median(runs), "ok", runs

    def report(self, meta_versions: dict[str, str], elapsed: float) -> dict[str, Any]:
        names = [s.name for s in self.systems]
        shown = [m for m in METRICS if m.scenario in self.scenarios and
                 (m.key != "retry_rel" or "2" in self.scenarios)]
        rows = []
        for metric in shown:
            entry: dict[str, Any] = {"key": metric.key, "scenario": metric.scenario, "figure": metric.figure,
                                     "unit": metric.unit, "higher_is_better": metric.higher_is_better,
                                     "systems": {}, "ratio_kubetasks_over": {}}
            for name in names:
                median, status, runs = self.aggregate(name, metric.key)
                entry["systems"][name] = {"median": median, "status": status, "runs": runs}
            kt = entry["systems"].get("kubetasks", {}).get("median")
            for name in names:
                peer = entry["systems"][name]["median"]
                if name != "kubetasks" and kt is not None and peer:
                    entry["ratio_kubetasks_over"][name] = kt / peer
            rows.append(entry)
        result = {
            "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1),
                     "cpus": os.cpu_count(), "versions": meta_versions,
                     "systems": {s.name: {"label": s.label, "concurrency": s.concurrency_note,
                                          "schema_setup_s": self.setup_s.get(s.name)} for s in self.systems},
                     "unavailable": self.unavailable, "runs": self.args.runs,
                     "skipped_for_budget": self.skipped,
                     "slots": {"processes": self.slots.processes, "threads": self.slots.threads},
                     "sizes": vars(self.sizes), "pg_settings": self.args.pg_setting,
                     "work_dir": str(self.work)},
            "metrics": rows, "errors": self.errors, "runs": self.details,
        }
        print(self.table(rows, names))
        return result

    def table(self, rows: list[dict[str, Any]], names: list[str]) -> str:
        labels = {s.name: s.label for s in self.systems}
        s = self.sizes
        lines = [
            f"Sizes: {s.tasks:,} tasks (1, 2, 5); deep queue {s.deep_queued:,} queued + {s.deep_finished:,} "
            f"finished, {s.deep_work:,} worked (4); {s.steady_rate:g}/s for {s.steady_seconds:g}s (3); "
            f"{s.schedules:,} schedules (6). Scale {s.scale:g} of the issue's full sizes. "
            f"{self.slots.processes} x {self.slots.threads} slots per system; median of {self.args.runs} runs. "
            "Peer cells show value (kubetasks/peer).",
            "",
            "| # | figure | unit | better | " + " | ".join(labels[n] for n in names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        short = False
        for row in rows:
            cells = []
            for name in names:
                cell = row["systems"][name]
                if cell["median"] is None:
                    cells.append(cell["status"])
                    continue
                text = format_value(cell["median"])
                if len(cell["runs"]) < self.args.runs:
                    text += " †"
                    short = True
                ratio = row["ratio_kubetasks_over"].get(name)
                if ratio is not None:
                    text += f" ({ratio:.2f}x)"
                cells.append(text)
            better = "higher" if row["higher_is_better"] else "lower"
            lines.append(f"| {row['scenario']} | {row['figure']} | {row['unit']} | {better} | "
                         + " | ".join(cells) + " |")
        if short:
            lines.append(f"\n† median of fewer than {self.args.runs} runs: the others were left out to stay "
                         "within --budget-minutes (see skipped_for_budget in the JSON).")
        if "4" in self.scenarios and any(not SYSTEMS[n].keeps_finished for n in names):
            gone = ", ".join(n for n in names if not SYSTEMS[n].keeps_finished)
            lines.append(f"\nScenario 4: {gone} delete finished jobs, so only their queued backlog was added.")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    result = suite.run()
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    log(f"done in {result['meta']['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
