"""Notification rules are validated where they are written, naming the field; the CRDs carry them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetasks.operator import resources
from kubetasks.worker import manifests, notifyrules, registry
from kubetasks.worker.errors import InvalidInput

HOOK = {"events": ["failed"], "webhook": {"url": "https://hooks.example.com/x"}}


def test_good_rules_round_trip_as_stored_json() -> None:
    rules = notifyrules.parse([HOOK, {"events": ["succeeded", "retriesExhausted"], "email": {"to": ["a@b.io"]}},
                               {"events": ["consecutiveFailures"], "consecutiveFailures": 2,
                                "webhook": {"url": "http://127.0.0.1:9/x", "format": "slack", "secretKey": "k"}}])
    assert notifyrules.dump(rules) == [
        {"events": ["failed"], "webhook": {"url": "https://hooks.example.com/x", "format": "cloudevents"}},
        {"events": ["succeeded", "retriesExhausted"], "email": {"to": ["a@b.io"]}},
        {"events": ["consecutiveFailures"], "consecutiveFailures": 2,
         "webhook": {"url": "http://127.0.0.1:9/x", "format": "slack", "secretKey": "k"}}]
    assert notifyrules.dump([]) is None


@pytest.mark.parametrize(("rule", "field", "words"), [
    ({"events": ["failed"], "email": {"to": ["not-an-address"]}}, "notify[0].email.to[0]", "not an e-mail"),
    ({"events": ["failed"], "email": {"to": ["a@b.io\r\nBcc: x@y.io"]}}, "notify[0].email.to[0]", "not an e-mail"),
    ({"events": ["failed"], "webhook": {"url": "ftp://x.io/"}}, "notify[0].webhook.url", "not an http(s) URL"),
    ({"events": ["failed"], "webhook": {"url": "https:///nohost"}}, "notify[0].webhook.url", "no host"),
    ({"events": ["failed"], "webhook": {"url": "https://u:p@x.io/"}}, "notify[0].webhook.url", "credentials"),
    ({"events": ["failed"], "webhook": {"url": "https://x.io/a b"}}, "notify[0].webhook.url", "whitespace"),
    ({"events": ["exploded"], "webhook": {"url": "https://x.io/"}}, "notify[0].events[0]", "Input should be"),
    ({"events": [], "webhook": {"url": "https://x.io/"}}, "notify[0].events", "at least 1"),
    ({"events": ["failed"]}, "notify[0]", "exactly one of email and webhook"),
    ({"events": ["failed"], "webhook": {"url": "https://x.io/", "secret": "plain"}}, "notify[0].webhook.secret",
     "Extra inputs"),
])
def test_bad_rules_are_refused_naming_the_field(rule: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        notifyrules.parse([rule])
    assert caught.value.field == field
    assert words in caught.value.problem


def test_a_schedule_manifest_with_a_bad_url_names_the_manifest_field() -> None:
    document = {"apiVersion": manifests.API_VERSION, "kind": "Schedule", "metadata": {"name": "nightly"},
                "spec": {"actor": "a.b", "schedule": "@daily",
                         "notifications": [{"events": ["failed"], "webhook": {"url": "mailto:x@y.io"}}]}}
    with pytest.raises(manifests.ManifestError) as caught:
        manifests.parse_manifest(document, "x.yaml[0]")
    assert str(caught.value).startswith("x.yaml[0] spec.notifications[0].webhook.url: 'mailto:x@y.io' is not")


def test_the_taskrun_spec_and_the_actor_take_rules() -> None:
    spec = resources.TaskRunSpec.model_validate({"actor": "a.b", "notifications": [HOOK]})
    assert spec.notifications[0].webhook is not None
    with pytest.raises(InvalidInput) as caught:
        registry.actor("t.rules.bad", notify=[{"events": ["failed"], "email": {"to": ["@"]}}])(lambda: None)
    assert caught.value.field == "notify[0].email.to[0]"


def test_the_generated_crds_carry_the_notifications_field() -> None:
    import yaml

    for kind in ("schedules", "taskruns"):
        crd = yaml.safe_load(Path(f"crds/{kind}.yaml").read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        rule = spec["properties"]["notifications"]["items"]
        assert set(rule["properties"]) == {"events", "consecutiveFailures", "email", "webhook"}, kind
        assert rule["properties"]["events"]["items"]["enum"] == list(notifyrules.EVENTS)
