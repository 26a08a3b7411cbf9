"""The folders `worker/` and `operator/` install as `kubetasks.worker` and `kubetasks.operator`, both from a
wheel and editable, and nothing shadows the standard library's `operator` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A few of the operator's named queries (operator/sql/*.sql): the files must ship in the wheel too.
OPERATOR_QUERIES = {"lock_key", "task_views", "schedule_kept_runs", "max_task_id"}

PROBE = """
import importlib.resources, json, operator, sys, sysconfig
import kubetasks.worker, kubetasks.operator
from kubetasks.worker import cli, db, queries
from kubetasks.worker.cli import dev
from kubetasks.operator import store
print(json.dumps({
    "cli": cli.__file__,
    "commands": sorted(cli.main.commands),
    "worker": kubetasks.worker.__file__,
    "operator_pkg": kubetasks.operator.__file__,
    "stdlib_operator": operator.__file__,
    "stdlib": sysconfig.get_paths()["stdlib"],
    "migrations": [m.name for m in db.migrations()],
    "queries": len(queries.all_queries()),
    "operator_queries": sorted(store.all_queries()),
}))
"""


def probe(*python_args: str, cwd: Path) -> dict[str, object]:
    import json

    out = subprocess.run([sys.executable, *python_args, "-c", PROBE], cwd=cwd, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_editable_install_maps_folders_into_one_namespace() -> None:
    found = probe(cwd=ROOT)  # even from the repository root, whose `operator/` folder must not win
    assert found["worker"] == str(ROOT / "worker" / "__init__.py")
    assert found["operator_pkg"] == str(ROOT / "operator" / "__init__.py")
    assert str(found["stdlib_operator"]).startswith(str(found["stdlib"]))
    assert found["migrations"] and found["queries"]
    assert set(found["operator_queries"]) >= OPERATOR_QUERIES
    assert found["cli"] == str(ROOT / "worker" / "cli" / "__init__.py") and "dev" in found["commands"]


@pytest.mark.slow
def test_wheel_contains_packages_and_sql(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("kubetasks-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    assert not (site / "operator").exists()  # no top-level `operator` package is ever installed
    assert not (site / "kubetasks" / "operator" / "crdgen.py").exists()  # developer tooling: crds/generate.py
    assert sorted(p.name for p in (site / "kubetasks" / "operator" / "sql").glob("*.sql")) == [
        "schedules.sql", "tasks.sql"]
    code = f"import sys; sys.path.insert(0, {str(site)!r}); exec({PROBE!r})"
    import json

    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True)
    found = json.loads(out.stdout)
    assert found["worker"] == str(site / "kubetasks" / "worker" / "__init__.py")
    assert found["operator_pkg"] == str(site / "kubetasks" / "operator" / "__init__.py")
    assert str(found["stdlib_operator"]).startswith(str(found["stdlib"]))
    assert found["migrations"] and found["queries"]
    assert set(found["operator_queries"]) >= OPERATOR_QUERIES
    assert found["cli"] == str(site / "kubetasks" / "worker" / "cli" / "__init__.py")
    assert found["commands"] == ["apply", "dashboard", "dev", "enqueue", "migrate", "operator", "queue", "queues",
                                 "schedules", "tasks", "worker"]
