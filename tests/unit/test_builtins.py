"""Built-in actors against a real local HTTP server and real programs (no mocks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetasks.worker import builtins, context
from kubetasks.worker.context import TaskContext, TaskError
from kubetasks.worker.executor import Executor, Job
from kubetasks.worker.settings import Settings, get_settings


class _Hook(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        _Hook.seen.append({"method": self.command, "path": self.path, "body": body,
                           "content_type": self.headers.get("Content-Type"), "token": self.headers.get("X-Token")})
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "ftp://example.com/file")
            self.end_headers()
            return
        status = int(self.path.strip("/").split("/")[0] or 200)
        payload = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_posts_json_with_headers(hook: str) -> None:
    result = builtins.http(url=f"{hook}/200", json={"a": 1}, headers={"X-Token": "t"})
    assert result == {"status": 200, "body": '{"status": 200}'}
    assert _Hook.seen == [{"method": "POST", "path": "/200", "body": '{"a": 1}',
                           "content_type": "application/json", "token": "t"}]


def test_http_get_by_default_and_custom_method_and_body(hook: str) -> None:
    builtins.http(url=f"{hook}/204")
    builtins.http(url=f"{hook}/201", method="put", body="raw")
    assert [(s["method"], s["body"]) for s in _Hook.seen] == [("GET", ""), ("PUT", "raw")]


def test_http_unexpected_status_raises_a_retryable_error(hook: str) -> None:
    with pytest.raises(builtins.UnexpectedStatus, match=r"answered 503, expected \[200, 201"):
        builtins.http(url=f"{hook}/503")
    assert builtins.http(url=f"{hook}/404", expected_status=[404])["status"] == 404


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"url": "file:///etc/passwd"}, "not an http(s) URL"),
    ({"url": "http:///nohost"}, "not an http(s) URL"),
    ({"url": "http://x", "json": {}, "body": "b"}, "either json or body"),
    ({"url": "http://x", "method": "BREW"}, "method 'BREW'"),
    ({"url": "http://x", "timeout": 0}, "timeout 0"),
])
def test_http_bad_arguments_fail_without_retry(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(TaskError, match=words.replace("(", r"\(").replace(")", r"\)")):
        builtins.http(**kwargs)


def test_http_refuses_redirects_off_http(hook: str) -> None:
    with pytest.raises(TaskError, match="refusing to follow a redirect to 'ftp://"):
        builtins.http(url=f"{hook}/redirect")


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KUBETASKS_WORKER__COMMAND_ALLOWLIST", json.dumps(["echo", "false", "sleep", "env"]))
    monkeypatch.setenv("KUBETASKS_DATABASE__URL", "postgresql://u:secret@db/x")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_command_refused_unless_allowed_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBETASKS_WORKER__COMMAND_ALLOWLIST", raising=False)
    get_settings.cache_clear()
    with pytest.raises(TaskError, match=r"'echo' is not allowed; .*COMMAND_ALLOWLIST='\[\"echo\"\]'"):
        builtins.command(argv=["echo", "hi"])


@pytest.mark.usefixtures("allow")
def test_command_runs_without_a_shell() -> None:
    result = builtins.command(argv=["echo", "$HOME; rm -rf /"])
    assert result == {"returncode": 0, "stdout": "$HOME; rm -rf /\n", "stderr": ""}


@pytest.mark.usefixtures("allow")
def test_command_sees_only_a_minimal_environment() -> None:
    out = builtins.command(argv=["env"], env={"GREETING": "hi"})["stdout"]
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert "GREETING" in names and not any(n.startswith("KUBETASKS_") for n in names)
    assert "secret" not in out


@pytest.mark.usefixtures("allow")
def test_command_failure_and_timeout_are_retryable() -> None:
    with pytest.raises(builtins.CommandFailed, match="false exited with 1"):
        builtins.command(argv=["false"])
    with pytest.raises(builtins.CommandFailed, match=r"did not finish within 0\.2s"):
        builtins.command(argv=["sleep", "30"], timeout=0.2)


@pytest.mark.usefixtures("allow")
@pytest.mark.parametrize("argv", ["echo hi", [], [1, 2], None])
def test_command_bad_argv_fails_without_retry(argv: Any) -> None:
    with pytest.raises(TaskError, match="argv must be a non-empty list of strings"):
        builtins.command(argv=argv)


def test_inside_a_task_the_workers_allowlist_decides_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETASKS_WORKER__COMMAND_ALLOWLIST", json.dumps(["echo"]))
    worker = Settings.model_validate({"worker": {"command_allowlist": ["true"]}})
    context.bind(TaskContext(task_id=1, actor="kubetasks.command", attempt=1, max_retries=0, time_limit=5,
                             settings=worker))
    try:
        assert builtins.command(argv=["true"])["returncode"] == 0
        with pytest.raises(TaskError, match=r"'echo' is not allowed; .*COMMAND_ALLOWLIST='\[\"true\", \"echo\"\]'"):
            builtins.command(argv=["echo", "hi"])
    finally:
        context.bind(None)


def test_the_executor_hands_its_settings_to_every_task() -> None:
    worker = Settings.model_validate({"worker": {"command_allowlist": ["true"]}})
    executor = Executor(1, lambda job, outcome: None, backoff_base=1, backoff_max=1, settings=worker)
    job = Job(1, "kubetasks.command", {"argv": ["true"]}, 1, 0, 5.0, datetime.now(UTC))
    executor.submit(job)  # not started: the job only waits in the executor's queue
    assert job.ctx.settings is worker
