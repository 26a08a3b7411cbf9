"""The Schedule manifest models and loader: defaults, every validation error naming its field, YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetasks.worker import manifests
from kubetasks.worker.errors import InvalidInput
from kubetasks.worker.manifests import ScheduleManifest, ScheduleSpec

GOOD = """\
apiVersion: kubetasks.dev/v1alpha1
kind: Schedule
metadata:
  name: {name}
spec:
  actor: kubetasks.http
  schedule: "{cron}"
"""


def doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": manifests.API_VERSION, "kind": "Schedule", "metadata": {"name": "s"},
            "spec": {"actor": "a.b", "schedule": "*/5 * * * *", **spec}}


def test_constants() -> None:
    assert (manifests.GROUP, manifests.API_VERSION, manifests.KIND) == (
        "kubetasks.dev", "kubetasks.dev/v1alpha1", "Schedule")


def test_defaults_of_a_minimal_manifest() -> None:
    manifest = manifests.parse_manifest(doc())
    spec = manifest.spec
    assert manifest.row_name == "default/s"
    assert (spec.args, spec.queue, spec.time_zone, spec.suspend) == ({}, "default", "UTC", False)
    assert (spec.concurrency_policy, spec.missed_run_policy, spec.deduplicate, spec.priority) == (
        "Allow", "RunOnce", False, 0)
    assert (spec.successful_runs_history_limit, spec.failed_runs_history_limit) == (3, 1)
    assert (spec.starting_deadline_seconds, spec.time_limit_seconds, spec.retries.limit,
            spec.retries.backoff_seconds) == (None, None, None, None)


def test_camel_case_out_and_snake_case_in() -> None:
    spec = ScheduleSpec(actor="a", schedule="@daily", time_zone="Europe/Berlin", starting_deadline_seconds=5)
    dumped = spec.model_dump(by_alias=True)
    assert dumped["timeZone"] == "Europe/Berlin" and dumped["startingDeadlineSeconds"] == 5
    assert ScheduleSpec.model_validate(dumped) == spec


@pytest.mark.parametrize("cron", ["* * * * *", "*/5 1-3 * * MON-FRI", "0 0 L * *", "@hourly", "@DAILY",
                                  "@weekly", "@monthly", "@yearly", "@annually", "@midnight", " 0  1 * * * "])
def test_valid_cron(cron: str) -> None:
    assert ScheduleSpec(actor="a", schedule=cron).schedule == manifests.check_cron(cron)


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"schedule": "* *"}, "spec.schedule", "invalid cron '* *': 2 fields instead of 5"),
    ({"schedule": "* * * * * *"}, "spec.schedule", "6 fields instead of 5"),
    ({"schedule": "CRON_TZ=UTC 0 * * * *"}, "spec.schedule", "set spec.timeZone instead"),
    ({"schedule": "61 * * * *"}, "spec.schedule", "invalid cron '61 * * * *'"),
    ({"schedule": "@reboot"}, "spec.schedule", "unknown cron macro"),
    ({"schedule": "0 0 30 2 *"}, "spec.schedule", "never fires"),
    ({"timeZone": "Mars/Olympus"}, "spec.timeZone", "unknown time zone 'Mars/Olympus'"),
    ({"timeZone": "../../etc/passwd"}, "spec.timeZone", "unknown time zone"),
    ({"actor": "has space"}, "spec.actor", "not a valid actor name"),
    ({"queue": "a b"}, "spec.queue", "not a valid queue name"),
    ({"concurrencyPolicy": "Sometimes"}, "spec.concurrencyPolicy", "'BufferOne', 'BufferAll' or 'CancelOther'"),
    ({"missedRunPolicy": "All"}, "spec.missedRunPolicy", "'Skip', 'RunOnce' or 'CatchUp'"),
    ({"startingDeadlineSeconds": 0}, "spec.startingDeadlineSeconds", "greater than 0"),
    ({"timeLimitSeconds": -1.5}, "spec.timeLimitSeconds", "greater than 0"),
    ({"retries": {"limit": -1}}, "spec.retries.limit", "greater than or equal to 0"),
    ({"retries": {"backoffSeconds": 0}}, "spec.retries.backoffSeconds", "greater than 0"),
    ({"retries": {"tries": 3}}, "spec.retries.tries", "unknown field"),
    ({"priority": 40000}, "spec.priority", "less than or equal to 32767"),
    ({"priority": "5"}, "spec.priority", "valid integer"),
    ({"suspend": "yes"}, "spec.suspend", "valid boolean"),
    ({"successfulRunsHistoryLimit": -1}, "spec.successfulRunsHistoryLimit", "greater than or equal to 0"),
    ({"failedRunsHistoryLimit": 1.5}, "spec.failedRunsHistoryLimit", "valid integer"),
    ({"args": ["x"]}, "spec.args", "valid dictionary"),
    ({"schedul": "* * * * *"}, "spec.schedul", "unknown field"),
])
def test_bad_spec_names_the_field_and_the_fix(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(manifests.ManifestError) as info:
        manifests.parse_manifest(doc(**spec))
    [error] = info.value.errors
    assert error.field == field
    assert words in error.problem or words in error.fix
    assert error.fix, "every error says how to fix it"
    assert str(error).startswith(f"{field}: ")


def test_missing_required_fields_are_all_reported() -> None:
    with pytest.raises(manifests.ManifestError) as info:
        manifests.parse_manifest({"apiVersion": manifests.API_VERSION, "kind": "Schedule",
                                  "metadata": {"name": "s"}, "spec": {}})
    assert sorted(e.field for e in info.value.errors) == ["spec.actor", "spec.schedule"]
    actor, schedule = sorted(info.value.errors, key=lambda e: e.field)
    assert (actor.problem, actor.fix) == ("field required", "add it")
    assert schedule.problem == "give exactly one of schedule (cron) and every (an interval)"


@pytest.mark.parametrize(("metadata", "field"), [
    ({"name": "Upper"}, "metadata.name"),
    ({"name": "x" * 254}, "metadata.name"),
    ({"name": "ok", "namespace": "bad_ns"}, "metadata.namespace"),
    ({}, "metadata.name"),
])
def test_bad_metadata(metadata: dict[str, Any], field: str) -> None:
    with pytest.raises(manifests.ManifestError) as info:
        manifests.parse_manifest({**doc(), "metadata": metadata})
    assert [e.field for e in info.value.errors] == [field]


def test_parse_spec_raises_invalid_input_with_the_path() -> None:
    with pytest.raises(InvalidInput, match=r"^spec\.timeZone: unknown time zone"):
        manifests.parse_spec({"actor": "a", "schedule": "@hourly", "timeZone": "Nowhere"})


def test_every_schema_property_has_a_description() -> None:
    schema = ScheduleManifest.model_json_schema(by_alias=True)
    missing = [f"{model}.{prop}" for model, body in [("ScheduleManifest", schema), *schema["$defs"].items()]
               for prop, info in body.get("properties", {}).items() if not info.get("description")]
    assert missing == []
    spec = schema["$defs"]["ScheduleSpec"]["properties"]
    assert spec["concurrencyPolicy"]["enum"] == ["Allow", "Forbid", "Replace", "BufferOne", "BufferAll",
                                                 "CancelOther"]
    assert spec["args"]["x-kubernetes-preserve-unknown-fields"] is True
    assert (spec["priority"]["minimum"], spec["priority"]["maximum"]) == (-32768, 32767)


def test_check_schedule_name() -> None:
    assert manifests.check_schedule_name("team-a/nightly.report") == "team-a/nightly.report"
    for bad in ("nightly", "/x", "a/", "A/b", "a/b/c"):
        with pytest.raises(InvalidInput, match="is not a schedule name"):
            manifests.check_schedule_name(bad)


# --- files ----------------------------------------------------------------------------------------------

def test_directory_loads_yaml_and_yml_sorted_and_multi_document(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(GOOD.format(name="b", cron="@hourly"))
    (tmp_path / "a.yaml").write_text(GOOD.format(name="a1", cron="* * * * *") + "---\n---\n"
                                     + GOOD.format(name="a2", cron="0 * * * *"))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text(GOOD.format(name="c", cron="@daily"))
    loaded = manifests.load_sources(tmp_path)
    assert [(Path(where).name, m.row_name) for where, m in loaded] == [
        ("a.yaml[0]", "default/a1"), ("a.yaml[1]", "default/a2"), ("b.yml[0]", "default/b")]
    assert [m.spec.schedule for m in manifests.load_manifests(tmp_path / "b.yml")] == ["@hourly"]


def test_errors_name_file_index_and_field_and_all_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(GOOD.format(name="ok", cron="* * * * *") + "---\n" + GOOD.format(name="bad", cron="* *")
                    + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n- a list\n")
    with pytest.raises(manifests.ManifestError) as info:
        manifests.load_manifests(path)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{path}[1] spec.schedule: invalid cron '* *'")
    assert "(use 5 fields" in lines[0]
    assert lines[1].startswith(f"{path}[2] kind: 'ConfigMap' of 'v1' is not supported")
    assert lines[2].startswith(f"{path}[3]: is a list, not a mapping")
    assert len(lines) == 3 and isinstance(info.value, InvalidInput)


def test_unquoted_cron_is_a_yaml_error_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "y.yaml"
    path.write_text(GOOD.replace('"{cron}"', "{cron}").format(name="y", cron="*/5 * * * *"))
    with pytest.raises(InvalidInput, match=r"y\.yaml: is not valid YAML: .*quote values that start with"):
        manifests.load_manifests(path)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="same", cron="@daily"))
    (tmp_path / "b.yaml").write_text(GOOD.format(name="same", cron="@hourly"))
    with pytest.raises(InvalidInput, match=r"b\.yaml\[0\] metadata.name: schedule 'default/same' is also "
                                           r"defined in .*a\.yaml\[0\]"):
        manifests.load_manifests(tmp_path)


def test_missing_path_empty_folder_and_no_schedules(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        manifests.load_manifests(tmp_path / "nope.yaml")
    with pytest.raises(InvalidInput, match=r"holds no \*\.yaml or \*\.yml file"):
        manifests.load_manifests(tmp_path)
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(InvalidInput, match="holds no Schedule document"):
        manifests.load_manifests(tmp_path)


def test_examples_folder_is_valid() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    names = [m.row_name for m in manifests.load_manifests(examples)]
    assert len(names) >= 3 and len(set(names)) == len(names)
