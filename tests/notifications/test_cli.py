"""`kubetasks enqueue --notify-*` stores rules on the task, and refuses bad ones naming the option."""

from __future__ import annotations

import subprocess
import sys

from kubetasks.worker import db

CLI = [sys.executable, "-m", "kubetasks.worker.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_enqueue_with_notification_options(dsn: str, conn: db.Conn) -> None:
    done = run("enqueue", "x.y", "--no-validate", "--notify-webhook", "https://hooks.example.com/a",
               "--notify-email", "ops@example.com", "--notify-on", "failed", "--notify-on", "retriesExhausted")
    assert done.returncode == 0, done.stderr
    row = conn.execute("SELECT notify FROM kubetasks.tasks").fetchone()
    assert row is not None and row["notify"] == [
        {"events": ["failed", "retriesExhausted"], "webhook": {"url": "https://hooks.example.com/a",
                                                               "format": "cloudevents"}},
        {"events": ["failed", "retriesExhausted"], "email": {"to": ["ops@example.com"]}}]


def test_bad_notification_options_are_refused_naming_them(dsn: str, conn: db.Conn) -> None:
    bad = run("enqueue", "x.y", "--no-validate", "--notify-webhook", "hooks.example.com")
    assert bad.returncode != 0 and "--notify-webhook" in bad.stderr and "not an http(s) URL" in bad.stderr
    bad = run("enqueue", "x.y", "--no-validate", "--notify", '[{"events": ["failed"], "email": {"to": ["x"]}}]')
    assert bad.returncode != 0 and "--notify[0].email.to[0]" in bad.stderr
    assert conn.execute("SELECT count(*) AS n FROM kubetasks.tasks").fetchone() == {"n": 0}
