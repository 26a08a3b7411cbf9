"""The CLI's settings travel explicitly: `--database-url` reaches commands without touching the environment,
and `kubetasks dev` hands its worker one Settings object built from the environment's."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from click.testing import CliRunner

from kubetasks.worker.cli import dev, main
from kubetasks.worker.settings import Settings


def test_database_url_option_is_used_but_never_written_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETASKS_DATABASE__URL", "postgresql://env@127.0.0.1:2/from_env")
    done = CliRunner().invoke(main, ["--database-url", "postgresql://kt@127.0.0.1:1/from_flag", "tasks", "list"])
    assert done.exit_code == 2
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/from_flag" in done.output
    assert os.environ["KUBETASKS_DATABASE__URL"] == "postgresql://env@127.0.0.1:2/from_env"


def test_dev_settings_keep_the_environment_and_tune_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETASKS_WORKER__ARGS_MAX_BYTES", "1000")
    monkeypatch.delenv("KUBETASKS_WORKER__COMMAND_ALLOWLIST", raising=False)
    settings = dev.dev_settings(Settings(), "postgresql://postgres@127.0.0.1:5555/postgres", ["tasks"], 2)
    assert settings.database.url == "postgresql://postgres@127.0.0.1:5555/postgres"
    assert settings.worker.args_max_bytes == 1000
    assert (settings.worker.modules, settings.worker.threads, settings.worker.metrics_port) == (["tasks"], 2, 0)
    assert settings.worker.consumer_listen_timeout == timedelta(seconds=1)
    assert settings.worker.command_allowlist == dev.DEMO_ALLOWLIST
    env = dev.worker_env(settings, ["/somewhere"])
    assert Settings.model_validate_json(env["KUBETASKS_RUNNER_SETTINGS"]) == settings
    assert env["PYTHONPATH"].split(os.pathsep)[0] == "/somewhere"


def test_dev_keeps_an_allowlist_the_environment_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETASKS_WORKER__COMMAND_ALLOWLIST", json.dumps([]))
    assert dev.dev_settings(Settings(), "postgresql://x", [], 1).worker.command_allowlist == []
