"""Built-in actors, usable from a Schedule manifest without writing Python: a webhook and a command runner.

Failures that a retry can fix (a 503, a timeout, a non-zero exit) raise ordinary exceptions so the retry
policy applies; mistakes in the arguments, and commands the operator did not allow, raise `TaskError`,
which fails the task at once (retrying the same mistake would only repeat it).

The command allow-list is the running worker's (from the task's context), never something a task can pass:
called outside a worker, as in a test or a script, the environment's KUBETASKS_* settings apply.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from . import context
from .context import TaskError
from .registry import actor
from .settings import Settings

log = logging.getLogger(__name__)

BODY_KEPT = 4096  # characters of a response or of command output kept in the task result
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# The environment a command sees: enough to run, never the worker's own secrets (database URL…).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class UnexpectedStatus(Exception):
    """The webhook answered with a status outside `expected_status`; retried like any failure."""


class CommandFailed(Exception):
    """The command exited non-zero; retried like any failure."""


def _tail(text: str, limit: int = BODY_KEPT) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


@actor(name="kubetasks.http")
def http(url: str, method: str | None = None, headers: Mapping[str, str] | None = None, json: Any = None,
         body: str | None = None, timeout: float = 30.0, expected_status: Sequence[int] | None = None,
         ) -> dict[str, Any]:
    """Call a webhook. `json` is sent as application/json, `body` as-is; GET without either, else POST.

    Any status in `expected_status` (default: 2xx) succeeds; others raise so that the task is retried.
    """
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise TaskError(f"kubetasks.http: url {url!r} is not an http(s) URL; pass e.g. 'https://example.com/hook'")
    if json is not None and body is not None:
        raise TaskError("kubetasks.http: pass either json or body, not both")
    verb = (method or ("POST" if json is not None or body is not None else "GET")).upper()
    if verb not in _METHODS:
        raise TaskError(f"kubetasks.http: method {method!r} is not one of {', '.join(_METHODS)}")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise TaskError(f"kubetasks.http: timeout {timeout!r} must be a positive number of seconds")
    wanted = set(expected_status) if expected_status else set(range(200, 300))
    data: bytes | None = None
    sent = {str(k): str(v) for k, v in (headers or {}).items()}
    if json is not None:
        data = jsonlib.dumps(json).encode()
        sent.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = str(body).encode()
    sent.setdefault("User-Agent", "kubetasks")
    request = urllib.request.Request(url, data=data, headers=sent, method=verb)
    log.info("%s %s", verb, url)
    try:
        with _opener.open(request, timeout=timeout) as response:
            status, text = response.status, _read(response)
    except urllib.error.HTTPError as exc:  # urllib raises for 4xx/5xx; they may still be expected
        status, text = exc.code, _read(exc)
    log.info("%s %s -> %s", verb, url, status)
    if status not in wanted:
        raise UnexpectedStatus(f"{verb} {url} answered {status}, expected {sorted(wanted)[:10]}: {_tail(text, 500)}")
    return {"status": status, "body": _tail(text)}


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect to ftp://; a webhook has no business there."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise TaskError(f"kubetasks.http: refusing to follow a redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No file:// or ftp:// handler is reachable: the URL scheme is checked before, redirects here.
_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def _read(response: Any) -> str:
    raw: bytes = response.read(1024 * 1024) if response is not None else b""
    charset = response.headers.get_content_charset() if response is not None else None
    return raw.decode(charset or "utf-8", errors="replace")


def _settings() -> Settings:
    """The settings of the worker running this task; outside one, those the environment gives now."""
    ctx = context.current_or_none()
    return ctx.settings if ctx is not None and ctx.settings is not None else Settings()


@actor(name="kubetasks.command")
def command(argv: Sequence[str], timeout: float = 60.0, cwd: str | None = None,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a program without a shell, when `argv[0]` is in KUBETASKS_WORKER__COMMAND_ALLOWLIST.

    The program sees PATH, HOME, LANG, LC_ALL, TZ and TMPDIR from the worker plus `env`, nothing else.
    """
    if (isinstance(argv, str) or not isinstance(argv, Sequence) or not argv
            or not all(isinstance(a, str) for a in argv)):
        raise TaskError(f"kubetasks.command: argv must be a non-empty list of strings, not {argv!r}; "
                        "pass e.g. ['echo', 'hello'] (no shell is used)")
    allowed = _settings().worker.command_allowlist
    if argv[0] not in allowed:
        listed = jsonlib.dumps([*allowed, argv[0]])
        raise TaskError(f"kubetasks.command: {argv[0]!r} is not allowed; allow it on the worker with "
                        f"KUBETASKS_WORKER__COMMAND_ALLOWLIST='{listed}' (exact argv[0] match)")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise TaskError(f"kubetasks.command: timeout {timeout!r} must be a positive number of seconds")
    # The program is looked up on the worker's own PATH, never the task's, and run by absolute path:
    # a task must not be able to put another `echo` first on the PATH or preload a library into it.
    unsafe = sorted(k for k in (env or {}) if k == "PATH" or k.startswith(("LD_", "DYLD_")))
    if unsafe:
        raise TaskError(f"kubetasks.command: env may not set {', '.join(unsafe)}; the worker's PATH is used "
                        "and loader variables are refused")
    executable = shutil.which(argv[0], path=os.environ.get("PATH", os.defpath))
    if executable is None:
        raise TaskError(f"kubetasks.command: {argv[0]!r} was not found on the worker's PATH")
    child_env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    log.info("running %s (%s)", list(argv), executable)
    try:
        done = subprocess.run([executable, *argv[1:]], shell=False, capture_output=True, text=True, errors="replace",
                              timeout=timeout, cwd=cwd, env=child_env, check=False)
    except FileNotFoundError as exc:
        raise TaskError(f"kubetasks.command: {argv[0]!r} was not found on the worker: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{argv[0]} did not finish within {timeout}s and was killed") from exc
    for line in done.stdout.splitlines()[-200:]:
        log.info("stdout: %s", line)
    for line in done.stderr.splitlines()[-200:]:
        log.info("stderr: %s", line)
    if done.returncode != 0:
        raise CommandFailed(f"{argv[0]} exited with {done.returncode}: {_tail(done.stderr.strip(), 500)}")
    return {"returncode": done.returncode, "stdout": _tail(done.stdout), "stderr": _tail(done.stderr)}
