"""The CRDs are generated from the pydantic models and must be structural, as the apiserver demands.

`crds/*.yaml` and the chart's `crds/` copy are never edited by hand: a stale file fails here, with the command
that regenerates it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_generator import generate as crdgen

from kubetasks.operator import resources
from kubetasks.worker import manifests

REPO = Path(__file__).resolve().parents[2]


def _crd(plural: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "crds" / f"{plural}.yaml").read_text()))


def _schema(plural: str) -> dict[str, Any]:
    return dict(_crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


def test_committed_crds_match_the_models() -> None:
    stale = crdgen.stale()
    assert not stale, f"regenerate with `python crds/generate.py`: {stale}"
    assert crdgen.main(["--check"]) == 0


def test_the_generator_runs_as_a_script() -> None:
    done = subprocess.run([sys.executable, str(REPO / "crds" / "generate.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_chart_carries_the_same_crds() -> None:
    for name in crdgen.files():
        assert (REPO / "charts/kubetasks/crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes()


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    crdgen.write((tmp_path,))
    assert crdgen.stale((tmp_path,)) == []
    (tmp_path / "taskruns.yaml").write_text("edited by hand\n")
    assert crdgen.stale((tmp_path,)) == [tmp_path / "taskruns.yaml"]


@pytest.mark.parametrize("kind", resources.KINDS, ids=lambda k: k.kind)
def test_schemas_are_structural(kind: resources.Kind) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "uniqueItems", "const", "examples"}
    for path, node in _nodes(_schema(kind.plural)):
        assert not forbidden & set(node), f"{kind.kind}{path}: {forbidden & set(node)}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{kind.kind}{path}: no type"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind.kind}{path}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, f"{kind.kind}{path}"
        if "default" in node and "enum" in node:
            assert node["default"] in node["enum"], f"{kind.kind}{path}"


@pytest.mark.parametrize("kind", resources.KINDS, ids=lambda k: k.kind)
def test_every_kind_has_status_subresource_and_names(kind: resources.Kind) -> None:
    spec = _crd(kind.plural)["spec"]
    assert spec["group"] == "kubetasks.dev" and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["kind"] == kind.kind and "kubetasks" in spec["names"]["categories"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    # Kopf keeps its progress in status.kopf, which must survive pruning.
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def _columns(plural: str) -> list[tuple[str, int]]:
    version = _crd(plural)["spec"]["versions"][0]
    return [(c["name"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]]


def test_printer_columns() -> None:
    assert [n for n, _ in _columns("schedules")] == [
        "Schedule", "TimeZone", "Suspend", "Active", "Last Schedule", "Last Success", "Next", "Age"]
    assert _columns("taskruns") == [("Actor", 0), ("State", 0), ("Attempt", 0), ("Started", 0), ("Duration", 0),
                                    ("Progress", 0), ("Age", 0), ("Workflow", 1), ("Queue", 1), ("Schedule", 1),
                                    ("Message", 1)]
    assert _columns("workerpools") == [("Target", 0), ("Min", 0), ("Max", 0), ("Desired", 0), ("Queued", 0),
                                       ("Running", 0), ("Age", 0), ("Held", 1), ("Paused", 1)]
    assert _crd("taskruns")["spec"]["names"]["shortNames"] == ["tr"]


def test_schedule_spec_is_the_manifest_model() -> None:
    spec = _schema("schedules")["properties"]["spec"]
    aliases = {f.alias or name for name, f in manifests.ScheduleSpec.model_fields.items()}
    assert set(spec["properties"]) == aliases
    assert spec["required"] == ["actor"]  # and one of schedule / every, by a CEL rule
    assert {r["rule"] for r in spec["x-kubernetes-validations"]} >= {"has(self.schedule) != has(self.every)"}
    assert spec["properties"]["timeZone"]["default"] == "UTC"
    assert spec["properties"]["concurrencyPolicy"]["enum"] == [
        "Allow", "Forbid", "Replace", "BufferOne", "BufferAll", "CancelOther"]
    assert spec["properties"]["missedRunPolicy"]["enum"] == ["Skip", "RunOnce", "CatchUp"]
    assert spec["properties"]["startTime"]["format"] == "date-time"
    assert spec["properties"]["startingDeadlineSeconds"]["nullable"] is True
    assert spec["properties"]["args"]["x-kubernetes-preserve-unknown-fields"] is True
    retries = spec["properties"]["retries"]
    assert retries["type"] == "object" and set(retries["properties"]) == {"limit", "backoffSeconds"}


def test_cel_rules_sit_where_they_apply() -> None:
    assert "size(self.metadata.name) <= 52" in [r["rule"] for r in _schema("schedules")["x-kubernetes-validations"]]
    taskrun_rules = [r["rule"] for r in _schema("taskruns")["properties"]["spec"]["x-kubernetes-validations"]]
    assert "!oldSelf.cancel || self.cancel" in taskrun_rules
    pool = _schema("workerpools")["properties"]["spec"]
    assert pool["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
    assert pool["properties"]["minReplicas"]["minimum"] == 0


def test_conditions_are_a_map_list_keyed_by_type() -> None:
    for plural in ("schedules", "taskruns", "workerpools"):
        conditions = _schema(plural)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]


def test_structural_rewrites() -> None:
    optional = {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}], "default": None,
                "title": "X"}
    assert crdgen.structural(optional) == {"type": "integer", "nullable": True, "minimum": 0,
                                           "exclusiveMinimum": True}
    ref = {"properties": {"a": {"$ref": "#/$defs/A", "description": "field"}}, "type": "object",
           "$defs": {"A": {"type": "object", "description": "model", "properties": {"b": {"type": "string"}}}}}
    assert crdgen.structural(ref)["properties"]["a"] == {
        "description": "field", "type": "object", "properties": {"b": {"type": "string"}}}
    assert crdgen.structural({"type": "array", "uniqueItems": True, "items": {"type": "string"}}) == {
        "type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}
    assert crdgen.structural({"type": "object", "additionalProperties": True}) == {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_structural_refuses_what_the_apiserver_would() -> None:
    with pytest.raises(crdgen.SchemaError, match="union of 2 types"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, path="spec.x")
    with pytest.raises(crdgen.SchemaError, match="no type"):
        crdgen.structural({"description": "anything"}, path="spec.y")
    with pytest.raises(crdgen.SchemaError, match="unsupported keys"):
        crdgen.structural({"type": "object", "patternProperties": {}, "discriminator": {}}, path="spec.z")
