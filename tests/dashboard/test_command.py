"""`kubetasks dashboard` as a process (until the CLI registers it: the click command run directly) and the
background start `kubetasks dev` uses: bound to 127.0.0.1, a token printed, nothing served without it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx

from kubetasks.worker.dashboard.command import start_background

COMMAND = [sys.executable, "-c", "from kubetasks.worker.dashboard.command import dashboard; dashboard()"]


def test_command_prints_its_url_and_token(dsn: str) -> None:
    proc = subprocess.Popen([*COMMAND, "--port", "0", "--database-url", dsn], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.match(r"kubetasks dashboard: (http://127\.0\.0\.1:\d+)/#token=(\S+)$", first.strip())
        assert match, first
        base, token = match.groups()
        assert httpx.get(f"{base}/api/v1/tasks", timeout=10).status_code == 401
        answer = httpx.get(f"{base}/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"items": [], "next": None}
        assert "<script src=\"/static/app.js\"" in httpx.get(base + "/", timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_start_background_for_dev_mode(dsn: str) -> None:
    running = start_background(dsn, token="a-token-long-enough-1234")
    try:
        assert running.url == f"{running.base_url}/#token=a-token-long-enough-1234"
        assert running.base_url.startswith("http://127.0.0.1:")
        answer = httpx.get(f"{running.base_url}/api/v1/whoami", headers={"Authorization": f"Bearer {running.token}"})
        assert answer.json()["mode"] == "token"
    finally:
        running.stop()
    assert not running.thread.is_alive()


def test_registering_the_command_loads_no_web_stack() -> None:
    """The CLI may import the command at start-up: workers must not pay for (or need) the dashboard extra."""
    code = ("import sys; from kubetasks.worker.dashboard.command import dashboard, start_background;"
            " print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx', 'jinja2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
