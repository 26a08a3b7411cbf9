"""Benchmark kubetasks against its peers on one throwaway PostgreSQL, side by side.

    .venv/bin/python bench/run.py                      # everything, default sizes (--scale 0.05)
    .venv/bin/python bench/run.py --systems kubetasks,graphile --scenarios 2,2L --runs 3
    .venv/bin/python bench/run.py --scale 0.01 --json /tmp/out.json

Run `bench/setup.sh` first (the peers' virtualenv and node_modules). Every system runs in each of
its settings variants (its documented best for throughput, and its defaults where they differ) and
each process split of the same total slots. Prints two Markdown tables (throughput per
configuration with ratios to graphile-worker at its best and to the best Python peer; the other
scenarios per system) and writes JSON with every run; `--readme` puts the tables into a file.
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

MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
OTHER = ("1", "3", "4", "5", "6", "7")  # run with each system's primary configuration only

DEFAULT_SCALE = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, from: {', '.join(SYSTEMS)} (default: all)")
    p.add_argument("--scenarios", default="1,2,2L,3,4,5,6,7",
                   help="comma-separated, from 1, 2 (drain, small queue), 2L (drain, large queue), 3-7 "
                        "(7: workflow fan-out, kubetasks only)")
    p.add_argument("--runs", type=int, default=3, help="runs of scenarios 1 and 2; the median is shown")
    p.add_argument("--runs-large", type=int, default=2, help="runs of scenario 2L (the large queue)")
    p.add_argument("--runs-other", type=int, default=1, help="runs of scenarios 3-6")
    p.add_argument("--slow-seconds", type=float, default=20.0,
                   help="a configuration whose first small-queue run took longer than this runs it only once "
                        "(procrastinate needs about a minute per run; 0: always --runs)")
    p.add_argument("--large-peers", choices=["best", "all"], default="best",
                   help="scenario 2L for every Python peer configuration, or (default) only for the "
                        "one that drained the small queue fastest; kubetasks and graphile always all")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                   help="fraction of the issue's full sizes (100k tasks, 1M+1M deep rows, 10k schedules)")
    p.add_argument("--tasks", type=int, default=0, help="override: the large queue (scenario 2L)")
    p.add_argument("--small", type=int, default=0,
                   help="override: the small queue (scenarios 1, 2, 5; default a fifth of --tasks)")
    p.add_argument("--deep-queued", type=int, default=0, help="override: queued rows in scenario 4")
    p.add_argument("--deep-finished", type=int, default=0, help="override: finished rows in scenario 4")
    p.add_argument("--schedules", type=int, default=0, help="override: schedules in scenario 6")
    p.add_argument("--steady-rate", type=float, default=50.0, help="scenario 3 enqueue rate (tasks/s)")
    p.add_argument("--steady-seconds", type=float, default=10.0, help="scenario 3 duration")
    p.add_argument("--fanout-children", type=int, default=10_000, help="children of scenario 7's fan-out")
    p.add_argument("--slots", type=int, default=8, help="total slots (threads / async tasks), every system")
    p.add_argument("--splits", default="1,2",
                   help="worker process counts to run the slots in (each must divide --slots); the "
                        "first is the one scenarios 1 and 3-6 use")
    p.add_argument("--variants", default="all", help="'all', or a comma-separated list of settings "
                   "variants to run (best, capped, default, defaults)")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="deadline of each wait, in seconds (default: 120 + tasks / 50)")
    p.add_argument("--budget-minutes", type=float, default=16.0,
                   help="start no scenario run expected to end past this (0: no limit); runs left out "
                        "are marked in the table (default 16, so `make bench` stays under 20 minutes)")
    p.add_argument("--readme", help="replace the generated part of this Markdown file (between "
                   "<!-- bench:start --> and <!-- bench:end -->) with the tables")
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


Job = tuple[int, System, str]  # (run, configuration, scenario key)


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = Sizes(args.scale, tasks=args.tasks, small=args.small, deep_queued=args.deep_queued,
                           deep_finished=args.deep_finished, schedules=args.schedules,
                           steady_rate=args.steady_rate, steady_seconds=args.steady_seconds,
                           fanout=args.fanout_children)
        # A system slower than 50 tasks/s is reported as a timeout rather than holding up the suite.
        self.timeout = args.timeout or 120.0 + self.sizes.tasks / 50
        self.scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
        unknown = self.scenarios - set(SCENARIOS)
        if unknown:
            sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))} (use {', '.join(SCENARIOS)})")
        kinds = [n.strip() for n in args.systems.split(",") if n.strip()]
        bad = [n for n in kinds if n not in SYSTEMS]
        if bad:
            sys.exit(f"unknown systems: {', '.join(bad)} (known: {', '.join(SYSTEMS)})")
        splits = [int(p) for p in args.splits.split(",") if p.strip()]
        if not splits or any(p < 1 or args.slots % p for p in splits):
            sys.exit(f"--splits {args.splits}: each process count must divide --slots {args.slots}")
        wanted = None if args.variants == "all" else {v.strip() for v in args.variants.split(",")}
        # Every configuration, in table order; the first of each kind is its primary one.
        self.configs: list[System] = []
        for kind, cls in SYSTEMS.items():
            if kind not in kinds:
                continue
            variants = [v for v in cls.variants if wanted is None or v in wanted] or [cls.variants[0]]
            for variant in variants:
                for p in splits:
                    self.configs.append(cls(variant, Slots(p, args.slots // p)))
        self.primary: dict[str, System] = {}
        for config in self.configs:
            self.primary.setdefault(config.kind, config)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.work = Path(args.work_dir) if args.work_dir else BENCH / "results" / stamp
        # results[config name][metric][run] -> a number, or a status word
        self.results: dict[str, dict[str, dict[int, Any]]] = {c.name: {} for c in self.configs}
        self.errors: dict[str, list[str]] = {c.name: [] for c in self.configs}
        self.details: list[dict[str, Any]] = []
        self.unavailable: dict[str, str] = {}  # kind -> why
        self.setup_s: dict[str, float] = {}
        self.durations: dict[tuple[str, str], float] = {}  # slowest run seen per (config, scenario)
        self.sched_lead: dict[str, float] = {}  # seconds from worker start to ready, padded
        self.started = time.time()
        self.skipped: list[str] = []  # scenario runs left out to stay within --budget-minutes
        self.load: list[float] = []  # 1-minute load average before each scenario run

    def runs_of(self, key: str) -> int:
        if key == "2L":
            return self.args.runs_large
        return self.args.runs if key in ("1", "2") else self.args.runs_other

    def run(self) -> dict[str, Any]:
        started = time.time()
        bindir = find_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries found (apt-get install postgresql)")
        settings = dict(s.split("=", 1) for s in self.args.pg_setting)
        server = LocalPostgres(bindir, extra_settings=settings)
        self.work.mkdir(parents=True, exist_ok=True)
        log(f"PostgreSQL from {bindir}; work dir {self.work}")
        log(f"sizes: {self.sizes}; {len(self.configs)} configurations of {self.args.slots} slots")
        try:
            server.start()
            meta_versions = versions(server)
            ready = self.make_templates(server)
            self.run_all(server, [c for c in self.configs if c.kind in ready])
        finally:
            server.destroy()
        return self.report(meta_versions, time.time() - started)

    def jobs(self, configs: list[System]) -> list[Job]:
        """Every (run, configuration, scenario) in order: the small-queue drains run-major (so slow
        drifts hit all configurations alike), then one run of the large queue and of each other scenario,
        then their repeats (so that a tight --budget-minutes drops repeats, not whole scenarios)."""
        keys = runner_keys(self.scenarios)
        primaries = [self.primary[k] for k in dict.fromkeys(c.kind for c in configs)]
        out: list[Job] = []
        for run in range(1, self.runs_of("2") + 1):
            for config in configs:
                if "1" in keys and config in primaries and run <= self.runs_of("1"):
                    out.append((run, config, "1"))
                if "2" in keys:
                    out.append((run, config, "2"))
        repeats: list[Job] = []
        for key in ("2L", "3", "4", "5", "6", "7"):
            if key in keys:
                runs = [(run, config, key) for run in range(1, self.runs_of(key) + 1)
                        for config in (configs if key == "2L" else primaries)]
                out.extend(job for job in runs if job[0] == 1)
                repeats.extend(job for job in runs if job[0] > 1)
        return out + repeats

    def large_wanted(self, config: System, pending: list[Job]) -> bool | None:
        """Whether a Python peer's large-queue run is wanted: only the best Python configuration at the
        small queue (unless --large-peers all). None while small-queue runs are still to come."""
        if not config.python or self.args.large_peers == "all" or "2" not in self.scenarios:
            return True
        if any(key == "2" for _, _, key in pending):
            return None
        best = self.best_python("drain")
        return best is not None and best.name == config.name

    def run_all(self, server: LocalPostgres, configs: list[System]) -> None:
        """Run the jobs in order: scenarios 1 and 2 first, strictly in order. Scenario 6 must wait for a
        wall-clock minute; rather than idle, other runs that are expected to end in time run first, and
        the scheduler workers start just ahead of the minute. Only one configuration's workers ever run
        at a time."""
        todo = self.jobs(configs)
        normal = [j for j in todo if j[2] != "6"]
        sched = [j for j in todo if j[2] == "6"]

        def pop_normal(fits: float | None) -> Job | None:
            for job in normal:
                if job[2] == "2L":
                    wanted = self.large_wanted(job[1], normal)
                    if wanted is None:
                        continue
                    if not wanted:
                        normal.remove(job)
                        return pop_normal(fits)
                if fits is None or self.estimate(job[1], job[2]) < fits:
                    normal.remove(job)
                    return job
            return None

        while normal or sched:
            # The small-queue drains (and bulk enqueues) first, in order, so every configuration's runs are
            # side by side; only then does the wait for a minute interleave with the other scenarios.
            first = next((j for j in normal if j[2] in ("1", "2")), None)
            if first is not None:
                normal.remove(first)
                slow = self.durations.get((first[1].name, "2"), 0.0) > self.args.slow_seconds > 0
                if first[2] == "2" and first[0] > 1 and slow:
                    self.skipped.append(f"run {first[0]} {first[1].name} scenario 2 (slow: one run only)")
                    log(f"run {first[0]} {first[1].name:24} scenario 2 : left out, its first run took over "
                        f"--slow-seconds {self.args.slow_seconds:g}")
                    continue
                self.run_within_budget(server, *first, wait=0.0)
                continue
            if not sched:
                job = pop_normal(None)
                if job is None:
                    break
                self.run_within_budget(server, *job, wait=0.0)
                continue
            system = sched[0][1]
            if not system.has_scheduler:
                self.run_one(server, *sched.pop(0))
                continue
            lead = self.sched_lead.get(system.name, 20.0)
            now = time.time()
            start_at = math.ceil((now + lead) / 60) * 60 - lead
            job = pop_normal(start_at - now)
            if job is not None:
                self.run_within_budget(server, *job, wait=0.0)
                continue
            self.run_within_budget(server, *sched.pop(0), wait=max(0.0, start_at - now))

    def run_within_budget(self, server: LocalPostgres, run: int, system: System, key: str, wait: float) -> None:
        """Run one scenario run after `wait` seconds, unless it would end past the time budget."""
        budget = self.args.budget_minutes * 60
        expected = wait + self.estimate(system, key)
        if budget and time.time() - self.started + expected > budget:
            self.skipped.append(f"run {run} {system.name} scenario {key}")
            log(f"run {run} {system.name:24} scenario {key:2}: skipped, it would end past --budget-minutes")
            return
        time.sleep(wait)
        self.run_one(server, run, system, key)

    def estimate(self, system: System, key: str) -> float:
        """Expected seconds of one scenario run: the slowest seen so far (of this configuration, else of
        its kind, else of any for that scenario), padded; 30 s before any was seen (5x for 2L)."""
        seen = self.durations.get((system.name, key))
        if seen is None:
            kin = [d for (n, k), d in self.durations.items() if k == key and n.startswith(system.kind + "_")]
            others = kin or [d for (_, k), d in self.durations.items() if k == key]
            seen = max(others) if others else None
        if seen is None and key == "2L":
            small = [d for (n, k), d in self.durations.items() if k == "2" and n == system.name]
            seen = small[0] * self.sizes.tasks / self.sizes.small if small else None
        return 30.0 if seen is None else seen * 1.25 + 3.0

    def make_templates(self, server: LocalPostgres) -> list[str]:
        """One schema-installed database per system kind; each scenario run clones it (a fresh database)."""
        ready = []
        for system in self.primary.values():
            reason = system.missing()
            if reason:
                log(f"{system.kind}: not run: {reason}")
                self.unavailable[system.kind] = reason
                continue
            name = f"tmpl_{system.kind}"
            logs = self.work / "logs"
            logs.mkdir(exist_ok=True)
            ctx = Ctx(server.create_database(name), self.work, logs)
            t0 = time.time()
            try:
                system.schema(ctx)
            except (DriverError, Timeout) as exc:
                log(f"{system.kind}: schema install failed: {exc}")
                self.unavailable[system.kind] = f"schema install failed: {exc}"
                continue
            self.setup_s[system.kind] = time.time() - t0
            ready.append(system.kind)
        return ready

    def run_one(self, server: LocalPostgres, run: int, system: System, key: str) -> None:
        dbname = f"b_{system.name}_{key}_{run}".lower()
        out = self.work / f"run{run}" / system.name / f"s{key}"
        logs = out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        metrics = [m.key for m in METRICS if m.scenario == key and m.key != "retry_rel"]
        if (key == "6" and not system.has_scheduler) or (key == "7" and not system.has_workflows):
            for metric in metrics:
                self.results[system.name].setdefault(metric, {})[run] = "n/a"
            return
        load = os.getloadavg()[0]
        self.load.append(load)
        t0 = time.time()
        env: Env | None = None
        status = "ok"
        try:
            dsn = server.create_database(dbname, template=f"tmpl_{system.kind}")
            env = Env(system, Ctx(dsn, out, logs), self.sizes, self.timeout)
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
                             "seconds": round(time.time() - t0, 2), "load_1min_before": load,
                             **{k: v for k, v in values.items() if k not in metrics}})
        shown = ", ".join(f"{m}={format_value(values[m])}" for m in metrics) if status == "ok" else (
            f"{status}: {values['error']}")
        log(f"run {run} {system.name:24} scenario {key:2}: {shown} ({time.time() - t0:.1f}s, load {load:.2f})")

    # --- aggregation -----------------------------------------------------------------------

    def aggregate(self, config: System, metric: str) -> tuple[float | None, str, list[Any]]:
        if config.kind in self.unavailable:
            return None, "not run", []
        if metric == "retry_rel":  # scenario 5's drain rate over scenario 2's, both medians
            retry, _, _ = self.aggregate(config, "retry")
            drain, _, _ = self.aggregate(config, "drain")
            if retry is None or not drain:
                return None, "not run", []
            return retry / drain, "ok", [retry / drain]
        by_run = self.results.get(config.name, {}).get(metric, {})
        runs = [by_run[run] for run in sorted(by_run)]
        if not runs:
            skipped = any(f" {config.name} scenario " in job for job in self.skipped)
            return None, "skipped" if skipped else "not run", []
        numbers = [v for v in runs if not isinstance(v, str)]
        if not numbers:
            return None, str(runs[0]), runs
        return statistics.median(numbers), "ok", runs

    def median(self, config: System, metric: str) -> float | None:
        return self.aggregate(config, metric)[0]

    def best_of(self, configs: list[System], metric: str) -> System | None:
        scored = [(m, c) for c in configs if (m := self.median(c, metric)) is not None]
        return max(scored, key=lambda mc: mc[0])[1] if scored else None

    def best_python(self, metric: str) -> System | None:
        return self.best_of([c for c in self.configs if c.python], metric)

    def graphile_best(self, metric: str) -> System | None:
        return self.best_of([c for c in self.configs if c.kind == "graphile" and c.variant == "best"], metric)

    def report(self, meta_versions: dict[str, str], elapsed: float) -> dict[str, Any]:
        rows = []
        for config in self.configs:
            row: dict[str, Any] = {"configuration": config.name, "kind": config.kind, "variant": config.variant,
                                   "processes": config.slots.processes, "threads": config.slots.threads,
                                   "settings": config.settings(), "metrics": {}}
            for metric in METRICS:
                median, status, runs = self.aggregate(config, metric.key)
                if runs or median is not None:
                    row["metrics"][metric.key] = {"median": median, "status": status, "runs": runs}
            rows.append(row)
        text = self.tables(elapsed)
        result = {
            "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1),
                     "cpus": os.cpu_count(), "versions": meta_versions,
                     "load_1min": {"min": min(self.load, default=None), "max": max(self.load, default=None),
                                   "median": statistics.median(self.load) if self.load else None},
                     "schema_setup_s": self.setup_s, "unavailable": self.unavailable,
                     "runs": {"small": self.args.runs, "large": self.args.runs_large, "other": self.args.runs_other},
                     "skipped_for_budget": self.skipped, "slots": self.args.slots, "splits": self.args.splits,
                     "sizes": vars(self.sizes), "pg_settings": self.args.pg_setting,
                     "work_dir": str(self.work)},
            "configurations": rows, "errors": self.errors, "runs": self.details, "table": text,
        }
        print(text)
        return result

    # --- tables ----------------------------------------------------------------------------

    def cell(self, config: System, metric: str, ratios: bool = False) -> str:
        median, status, runs = self.aggregate(config, metric)
        if median is None:
            return status
        text = format_value(median)
        want = self.runs_of(next(m.scenario for m in METRICS if m.key == metric))
        failed = sum(1 for v in runs if isinstance(v, str))
        if len(runs) - failed < want:
            text += " †"
        if ratios:
            parts = []
            for tag, ref in (("G", self.graphile_best(metric)), ("Py", self.best_python(metric))):
                base = self.median(ref, metric) if ref is not None else None
                if base:
                    parts.append(f"{median / base:.2f}x {tag}")
            if parts:
                text += " (" + ", ".join(parts) + ")"
        return text

    def tables(self, elapsed: float) -> str:
        s = self.sizes
        loads = f"{min(self.load):.2f}-{max(self.load):.2f} (median {statistics.median(self.load):.2f})" \
            if self.load else "n/a"
        lines = [
            f"Run of {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {elapsed / 60:.1f} min, "
            f"{os.cpu_count()} cores, 1-minute load average before the runs {loads}. "
            f"Sizes: small queue {s.small:,} and large queue {s.tasks:,} tasks (2, 2L; 1 and 5 use the small "
            f"one); deep queue {s.deep_queued:,} queued + {s.deep_finished:,} finished, {s.deep_work:,} worked "
            f"(4); {s.steady_rate:g}/s for {s.steady_seconds:g}s (3); {s.schedules:,} schedules (6); "
            f"{s.fanout:,} workflow children (7). "
            f"Scale {s.scale:g} of the issue's full sizes. {self.args.slots} slots in every configuration. "
            f"Medians of {self.args.runs} (2), {self.args.runs_large} (2L) and {self.args.runs_other} (1, 3-7) runs.",
            "",
            "### Throughput, every configuration",
            "",
            "No-op tasks queued before the workers start. Start-up: spawn to the first task start (small queue). "
            "Drained: tasks over the time from the first task start until a `COUNT` of unfinished tasks is 0. "
            "In brackets: the ratio to graphile-worker at its best settings (G, its faster split) and to the "
            "fastest Python peer configuration (Py).",
            "",
            f"| system | settings | processes x slots | start-up (s) | drained/s, {s.small:,} queued | "
            f"drained/s, {s.tasks:,} queued |",
            "|---|---|---|---|---|---|",
        ]
        short = False
        for config in self.configs:
            cells = [self.cell(config, "startup"), self.cell(config, "drain", True),
                     self.cell(config, "drain_big", True)]
            short = short or any("†" in c for c in cells)
            lines.append(f"| {config.row_label} | {config.settings()} | {config.slots} | " + " | ".join(cells) + " |")
        primaries = [c for c in self.primary.values() if c.kind not in self.unavailable]
        other = [m for m in METRICS if m.scenario in OTHER and m.scenario in self.scenarios
                 and (m.key != "retry_rel" or "2" in self.scenarios)]
        if other and primaries:
            lines += ["", "### Other scenarios, each system's first configuration above", "",
                      "Cells of the peers show value (kubetasks/peer).", "",
                      "| # | figure | unit | better | " + " | ".join(c.label for c in primaries) + " |",
                      "|---|---|---|---|" + "---|" * len(primaries)]
            kt = self.primary.get("kubetasks")
            for metric in other:
                cells = []
                for config in primaries:
                    text = self.cell(config, metric.key)
                    short = short or "†" in text
                    mine = self.median(kt, metric.key) if kt is not None else None
                    theirs = self.median(config, metric.key)
                    if config is not kt and mine is not None and theirs:
                        text += f" ({mine / theirs:.2f}x)"
                    cells.append(text)
                lines.append(f"| {metric.scenario} | {metric.figure} | {metric.unit} | "
                             f"{'higher' if metric.higher_is_better else 'lower'} | " + " | ".join(cells) + " |")
            if "4" in self.scenarios and any(not c.keeps_finished for c in primaries):
                gone = ", ".join(c.kind for c in primaries if not c.keeps_finished)
                lines.append(f"\nScenario 4: {gone} delete finished jobs, so only their queued backlog was added.")
        if short:
            lines.append("\n† median of fewer runs than asked: the others failed, or were left out to stay "
                         "within --budget-minutes or because a run took over --slow-seconds (see "
                         "skipped_for_budget and errors in the JSON).")
        lines += self.verdict()
        return "\n".join(lines)

    def verdict(self) -> list[str]:
        """One line per throughput target: kubetasks' fastest configuration against the references."""
        out = []
        kts = [c for c in self.configs if c.kind == "kubetasks"]
        for metric, size in (("drain", self.sizes.small), ("drain_big", self.sizes.tasks)):
            best = self.best_of(kts, metric)
            if best is None:
                continue
            mine = self.median(best, metric) or 0.0
            parts = [f"kubetasks {best.slots} drained {size:,} queued at {format_value(mine)}/s"]
            for what, ref in (("graphile-worker best", self.graphile_best(metric)),
                              ("best Python peer", self.best_python(metric))):
                base = self.median(ref, metric) if ref is not None else None
                if ref is not None and base:
                    parts.append(f"{mine / base:.2f}x {what} ({ref.kind} {ref.variant} {ref.slots}, "
                                 f"{format_value(base)}/s)")
            out.append("- " + "; ".join(parts))
        return (["", "Targets (issue 10: >= 1.0x graphile-worker best, >= 4x the best Python peer):", *out]
                if out else [])


def write_readme(path: Path, text: str) -> None:
    doc = path.read_text()
    if MARK_START not in doc or MARK_END not in doc:
        sys.exit(f"{path} has no {MARK_START} ... {MARK_END} section to replace")
    before, rest = doc.split(MARK_START, 1)
    _, after = rest.split(MARK_END, 1)
    path.write_text(f"{before}{MARK_START}\n{text}\n{MARK_END}{after}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    result = suite.run()
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    if args.readme:
        write_readme(Path(args.readme), result["table"])
        log(f"updated {args.readme}")
    log(f"done in {result['meta']['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
