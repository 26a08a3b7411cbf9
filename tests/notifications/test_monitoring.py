"""The chart's Prometheus and Grafana parts: rendered with every option on, the alert rules and dashboard
queries parse with real PromQL parsers (promql-parser from PyPI always; promtool, built from Prometheus' Go
module by charts/promtool.sh, when it is cached), and every metric they use is one the workers export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from kubetasks.worker import db, metrics, queue, schedules
from kubetasks.worker.manifests import parse_spec
from kubetasks.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetasks"
ALL_ON = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
          "--set", "monitoring.grafanaDashboard.enabled=true", "--set", "database.url=postgresql://u@db/kt"]
KUBE_VERSION = "1.37.0"
PROMETHEUS_OWN = {"up"}  # series Prometheus itself records for each target
METRIC = re.compile(r"\bkubetasks_[a-z0-9_]+\b|\bup(?=\{)")  # no label name starts with kubetasks_


def tool(env: str, cached: str) -> str | None:
    """A binary from $ENV, PATH, or the cache charts/helm.sh and charts/promtool.sh build into."""
    found = os.environ.get(env) or shutil.which(env.lower())
    cache = Path(os.environ.get("KUBETASKS_CACHE", Path.home() / ".cache" / "kubetasks"))
    candidates = [found, *sorted(str(p) for p in cache.glob(cached))]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = tool("HELM", "helm/v*/helm")
    if helm is None:
        pytest.skip("helm not found (run charts/helm.sh)")
    out = subprocess.run([helm, "template", "kt", str(CHART), "--namespace", "tasks", "--kube-version",
                          KUBE_VERSION, *ALL_ON], check=True, capture_output=True, text=True).stdout
    lint = subprocess.run([helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *ALL_ON],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kind(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == name]
    assert len(found) == 1, name
    return found[0]


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in kind(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config = next(d for d in docs
                  if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("grafana-dashboard"))
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    board: dict[str, Any] = json.loads(config["data"]["kubetasks.json"])
    return board


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    queries += [v["query"]["query"] for v in board["templating"]["list"] if isinstance(v.get("query"), dict)]
    return queries


def test_every_part_renders_and_the_service_monitor_targets_the_metrics_port(rendered: list[dict[str, Any]]) -> None:
    monitor = kind(rendered, "ServiceMonitor")
    service = next(d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == "kt-kubetasks-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert {r["alert"] for r in alert_rules(rendered)} == {
        "KubetasksActorFailureRatioHigh", "KubetasksQueueGrowingAtCapacity", "KubetasksOldestRunnableTaskTooOld",
        "KubetasksScheduleNoRecentSuccess", "KubetasksWorkersDown", "KubetasksTasksStuckPastTimeLimit",
        "KubetasksNotificationsBacklog"}


def test_rules_and_dashboard_queries_parse_as_promql(rendered: list[dict[str, Any]]) -> None:
    for rule in alert_rules(rendered):
        promql_parser.parse(rule["expr"])
    for expr in dashboard_queries(dashboard(rendered)):
        if expr.startswith("label_values("):  # a Grafana function, not PromQL: check its metric argument
            expr = expr[len("label_values("):].split(",")[0]
        promql_parser.parse(expr.replace("$namespace", "tasks"))
    with pytest.raises(ValueError, match="parenthesis"):  # the parser does refuse a typo
        promql_parser.parse("sum by (actor (rate(kubetasks_tasks_finished_total[5m]))")


def test_promtool_checks_the_rules(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    promtool = tool("PROMTOOL", "promtool/v*/promtool")
    if promtool is None:
        pytest.skip("promtool not built (run charts/promtool.sh: it builds it from Prometheus' Go module)")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": kind(rendered, "PrometheusRule")["spec"]["groups"]}))
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def exported(conn: db.Conn, settings: Settings) -> set[str]:
    """The sample names the workers' /metrics shows: the process's metrics and the database collector's."""
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    families = [m.describe()[0] for m in (metrics.FINISHED, metrics.RETRIES, metrics.IN_PROGRESS, metrics.DURATION)]
    families += metrics.DatabaseCollector(settings.database, cache_seconds=0)._read()
    for family in families:
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_every_metric_used_is_exported(rendered: list[dict[str, Any]], conn: db.Conn, settings: Settings) -> None:
    schedules.apply(conn, "tasks/nightly", parse_spec({"actor": "t.x", "schedule": "@daily"}), validate_actor=False)
    queue.enqueue(conn, "t.x", {}, validate=False)
    available = exported(conn, settings)
    assert {"kubetasks_queue_oldest_runnable_age_seconds", "kubetasks_tasks_overdue",
            "kubetasks_schedule_period_seconds", "kubetasks_notifications"} <= available
    used: dict[str, set[str]] = {
        "rules": {m for r in alert_rules(rendered) for m in METRIC.findall(r["expr"])},
        "dashboard": {m for q in dashboard_queries(dashboard(rendered)) for m in METRIC.findall(q)}}
    for where, names in used.items():
        assert len(names) >= 5, (where, names)
        assert names - available - PROMETHEUS_OWN == set(), where
    assert METRIC.findall('rate(kubetasks_tasks_finishd_total{a="b"}[5m])') == ["kubetasks_tasks_finishd_total"]
