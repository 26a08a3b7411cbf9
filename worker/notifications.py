"""Deliver notification events from the outbox: e-mail over SMTP, webhooks (CloudEvents 1.0 or Slack text).

The events are written by the `tasks_notification_enqueue` trigger (migration 0004) in the transaction that
records a task's outcome, so a worker dying between the outcome and the send loses nothing. Every worker's
housekeeping starts one `DeliveryService` thread with its own connection: a receiver that is down or slow
costs this thread its timeout per attempt and never touches claiming or executing tasks.

A round claims up to `batch` due events (`FOR UPDATE SKIP LOCKED`), sends them over at most `concurrency`
lanes at once and marks them in one transaction: at least once, and exactly once unless a worker dies after a
receiver accepted and before the round's commit. A lane is a share of one receiver's events sent one after the
other over one connection: webhooks over keep-alive HTTP connections kept across rounds (`Connections`), e-mails
in one SMTP session, so an event costs a request, not a TCP (and TLS, and SMTP login) handshake, and a burst of
events never opens more than `concurrency` connections to a receiver. The event's
`event_id` is the CloudEvents `id` (and the e-mail's Message-ID) for receivers to deduplicate by. A failed
attempt is retried after a doubling backoff, up to `max_attempts`. Delivery wakes on the trigger's NOTIFY, so
latency is a round trip, and scans every `poll_interval` for retries that came due.

Only the standard library talks to receivers (smtplib, urllib): the worker never loads the web stack.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from . import db, notifyrules, protocol, queries
from .settings import NotificationSettings, Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kubetasks-Signature"
USER_AGENT = "kubetasks-notifications/1"


class DeliveryError(Exception):
    """An attempt that failed (refused, timed out, non-2xx); the event is retried."""


# -- Messages ----------------------------------------------------------------------------------------------


def _time(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def _subject_path(event: dict[str, Any]) -> str:
    payload = event["payload"]
    return f"schedules/{payload['schedule']}" if payload.get("schedule") else "tasks"


def _missed(event: dict[str, Any]) -> bool:
    """A schedule's missed tick: its payload names the schedule and the tick, there is no task."""
    return bool(event["event_type"] == notifyrules.EVENT_TYPES[notifyrules.SCHEDULE_MISSED])


def cloudevent(event: dict[str, Any], settings: NotificationSettings) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON of an outbox row."""
    payload = dict(event["payload"])
    data = {**payload, "link": link(payload, settings)}
    missed = _missed(event)
    subject = f"schedule/{payload['schedule']}/tick/{payload['tick']}" if missed else f"task/{payload['id']}"
    return {
        "specversion": "1.0",
        "id": str(event["event_id"]),
        "source": f"{settings.source.rstrip('/')}/{_subject_path(event)}",
        "type": event["event_type"],
        "subject": subject,
        "time": _time(event["created_at"]),
        "datacontenttype": "application/json",
        "data": {k: v for k, v in data.items() if v is not None},
    }


def link(payload: dict[str, Any], settings: NotificationSettings) -> str | None:
    if not settings.dashboard_url or payload.get("id") is None:
        return None
    # The dashboard's API view of the task: its state, error and every attempt's log.
    return f"{settings.dashboard_url.rstrip('/')}/api/v1/tasks/{payload['id']}"


def _what(event: dict[str, Any]) -> str:
    kind: str = event["event_type"]
    return kind.rsplit(".", 1)[-1].replace("_", " ")


def summary(event: dict[str, Any]) -> str:
    """One line: '[kubetasks] task 42 (reports.nightly) failed'."""
    payload = event["payload"]
    if _missed(event):
        return f"[kubetasks] schedule {payload['schedule']} {payload['actor']}: missed tick {payload['tick']}"
    about = f"schedule {payload['schedule']}" if payload.get("schedule") else f"task {payload['id']}"
    if payload.get("schedule"):
        about += f" (task {payload['id']})"
    text = f"[kubetasks] {about} {payload['actor']}: {_what(event)}"
    if event["event_type"].endswith("consecutive_failures"):
        text += f" ({payload.get('consecutiveFailures')} in a row)"
    return text


def body(event: dict[str, Any], settings: NotificationSettings) -> str:
    payload = event["payload"]
    if _missed(event):
        return "\n".join([summary(event), "", f"Schedule:  {payload['schedule']}", f"Actor:     {payload['actor']}",
                          f"Tick:      {payload['tick']}", f"Why:       {payload['why']}", "",
                          f"Event id: {event['event_id']}"]) + "\n"
    duration = payload.get("durationSeconds")
    lines = [
        summary(event), "",
        f"Task:      {payload['id']}",
        f"Actor:     {payload['actor']}",
        f"Queue:     {payload['queue']}",
        f"State:     {payload['state']} ({payload['reason']})",
        f"Attempts:  {payload['attempts']} of {payload['maxRetries'] + 1}",
        f"Duration:  {duration:.3f}s" if isinstance(duration, int | float) else "Duration:  -",
        f"Finished:  {payload.get('finishedAt') or '-'}",
    ]
    if payload.get("schedule"):
        lines.append(f"Schedule:  {payload['schedule']}")
    if payload.get("objectRef"):
        lines.append(f"Object:    {payload['objectRef']}")
    url = link(payload, settings)
    if url:
        lines.append(f"Dashboard: {url}")
    if payload.get("error"):
        lines += ["", "Error:", payload["error"]]
    lines += ["", f"Event id: {event['event_id']}"]
    return "\n".join(lines) + "\n"


def email_message(event: dict[str, Any], settings: NotificationSettings) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = summary(event)
    msg["From"] = settings.smtp_from
    msg["To"] = ", ".join(event["rule"]["email"]["to"])
    msg["Date"] = format_datetime(datetime.now(UTC))
    domain = settings.smtp_from.rpartition("@")[2] or "kubetasks"
    msg["Message-ID"] = f"<{event['event_id']}@{domain}>"  # stable: a resent event is recognisably the same
    msg["X-Kubetasks-Event-Id"] = str(event["event_id"])
    msg["X-Kubetasks-Event-Type"] = event["event_type"]
    msg.set_content(body(event, settings))
    return msg


def sign(secret: str, content: bytes) -> str:
    """The signature header's value: 'sha256=' and the hex HMAC-SHA256 of the exact request body."""
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def webhook_request(event: dict[str, Any], settings: NotificationSettings) -> urllib.request.Request:
    url, content, headers = webhook_parts(event, settings)
    return urllib.request.Request(url, data=content, headers=headers, method="POST")


def webhook_parts(event: dict[str, Any], settings: NotificationSettings) -> tuple[str, bytes, dict[str, str]]:
    """The URL, body and headers of an event's POST."""
    hook = event["rule"]["webhook"]
    if hook.get("format") == "slack":
        content = json.dumps({"text": body(event, settings)}).encode()
        content_type = "application/json"
    else:
        content = json.dumps(cloudevent(event, settings), separators=(",", ":")).encode()
        content_type = "application/cloudevents+json; charset=utf-8"
    headers = {"Content-Type": content_type, "User-Agent": USER_AGENT,
               "X-Kubetasks-Event-Id": str(event["event_id"]), "X-Kubetasks-Event-Type": event["event_type"]}
    if hook.get("secretKey"):
        headers[SIGNATURE_HEADER] = sign(secret(hook["secretKey"], settings), content)
    return hook["url"], content, headers


def secret(key: str, settings: NotificationSettings) -> str:
    if key in settings.webhook_secrets:
        return settings.webhook_secrets[key]
    if settings.secrets_dir is not None:
        path = settings.secrets_dir / key
        if path.is_file():
            return path.read_text().strip()
    raise DeliveryError(f"no webhook secret named {key!r} (KUBETASKS_NOTIFICATIONS__WEBHOOK_SECRETS or "
                        "KUBETASKS_NOTIFICATIONS__SECRETS_DIR)")


# -- Sending -----------------------------------------------------------------------------------------------


Receiver = tuple[str, str, int]  # scheme, host, port


def receiver(url: str) -> Receiver:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


RESPONSE_LIMIT = 65536  # bytes of a receiver's answer read; a longer one closes its connection instead


class Connections:
    """Keep-alive HTTP connections per receiver, reused across events and rounds (one lane uses one at a time).
    A connection the receiver closed meanwhile is noticed at the next request, which is then sent once more over
    a fresh one: at least once allows it, and the receiver deduplicates by event id."""

    def __init__(self, settings: NotificationSettings) -> None:
        self.settings = settings
        self.idle: dict[Receiver, list[http.client.HTTPConnection]] = collections.defaultdict(list)
        self.lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None  # made once: loading the CA store costs milliseconds

    def _open(self, key: Receiver) -> http.client.HTTPConnection:
        scheme, host, port = key
        timeout = self.settings.timeout.total_seconds()
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
        # http.client writes the headers and the body in two sends: without NODELAY (as urllib3 sets it), Nagle's
        # algorithm may hold the body back on a kept connection until the receiver's delayed ACK of the headers.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def post(self, url: str, content: bytes, headers: dict[str, str]) -> int:
        """POST over a kept connection to the URL's receiver; the HTTP status."""
        key = receiver(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self.lock:
            kept = self.idle[key].pop() if self.idle[key] else None
        for conn in ([kept] if kept is not None else []) + [None]:
            fresh = conn is None
            conn = conn or self._open(key)
            try:
                conn.request("POST", target, body=content, headers=headers)
                response = conn.getresponse()
                response.read(RESPONSE_LIMIT)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if fresh:
                    raise
                continue  # the receiver had closed the kept connection: once more over a new one
            except BaseException:
                conn.close()
                raise
            if response.will_close or not response.isclosed():
                conn.close()
            else:
                with self.lock:
                    self.idle[key].append(conn)
            return response.status
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self.lock:
            kept = [conn for conns in self.idle.values() for conn in conns]
            self.idle.clear()
        for conn in kept:
            conn.close()


def _proxied(url: str) -> bool:
    """Whether the environment sends this URL through a proxy (HTTP(S)_PROXY, NO_PROXY): then urllib posts it."""
    parts = urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


def send_webhook(event: dict[str, Any], settings: NotificationSettings,
                 connections: Connections | None = None) -> None:
    url, content, headers = webhook_parts(event, settings)
    if connections is not None and not _proxied(url):
        try:
            status = connections.post(url, content, headers)
        except (http.client.HTTPException, OSError) as exc:
            raise DeliveryError(f"webhook unreachable: {exc or type(exc).__name__}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook answered HTTP {status}")
        return
    request = urllib.request.Request(url, data=content, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout.total_seconds()) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"webhook answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"webhook unreachable: {getattr(exc, 'reason', exc)}") from None


def _smtp_session(settings: NotificationSettings) -> smtplib.SMTP:
    """A connected, logged-in SMTP session (the password file is read now, so a rotated Secret is picked up)."""
    timeout = settings.timeout.total_seconds()
    password = settings.smtp_password
    if settings.smtp_password_file is not None:
        password = settings.smtp_password_file.read_text().strip()
    smtp: smtplib.SMTP
    if settings.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(settings.smtp_host or "", settings.smtp_port, timeout=timeout,
                                context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(settings.smtp_host or "", settings.smtp_port, timeout=timeout)
    try:
        if settings.smtp_security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_username:
            smtp.login(settings.smtp_username, password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_emails(events: Sequence[dict[str, Any]], settings: NotificationSettings) -> Iterator[str | None]:
    """Send e-mails in one SMTP session; for each event, None when sent, else why not. After a failure the next
    e-mail opens a new session."""
    smtp: smtplib.SMTP | None = None
    try:
        for event in events:
            if not settings.smtp_host:
                yield "no SMTP server configured (KUBETASKS_NOTIFICATIONS__SMTP_HOST)"
                continue
            try:
                smtp = smtp or _smtp_session(settings)
                smtp.send_message(email_message(event, settings))
            except (smtplib.SMTPException, OSError) as exc:
                if smtp is not None:
                    smtp.close()
                smtp = None
                yield f"SMTP {settings.smtp_host}:{settings.smtp_port}: {exc}"
                continue
            yield None
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def send_email(event: dict[str, Any], settings: NotificationSettings) -> None:
    error = next(send_emails([event], settings))
    if error is not None:
        raise DeliveryError(error)


def send(event: dict[str, Any], settings: NotificationSettings, connections: Connections | None = None) -> None:
    rule = event["rule"]
    if rule.get("webhook"):
        send_webhook(event, settings, connections)
    elif rule.get("email"):
        send_email(event, settings)
    else:
        raise DeliveryError("rule has no target")


def backoff(attempts: int, settings: NotificationSettings) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, doubling, at most the maximum."""
    base, top = settings.retry_backoff_base.total_seconds(), settings.retry_backoff_max.total_seconds()
    return float(min(top, base * 2 ** max(0, attempts - 1)))


# -- The service -------------------------------------------------------------------------------------------


@dataclass
class Round:
    delivered: int = 0
    failed: int = 0


def lanes(events: Sequence[dict[str, Any]], concurrency: int) -> list[list[dict[str, Any]]]:
    """The round's events in lanes: grouped by receiver (a webhook's scheme, host and port; the SMTP server),
    each receiver's share of `concurrency` lanes (at least one) in proportion to its events."""
    groups: dict[object, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        hook = event["rule"].get("webhook")
        groups[receiver(hook["url"]) if hook else "smtp"].append(event)
    found: list[list[dict[str, Any]]] = []
    for group in groups.values():
        count = max(1, min(len(group), round(concurrency * len(group) / len(events))))
        found += [group[i::count] for i in range(count)]
    return found


def _send_lane(lane: list[dict[str, Any]], settings: NotificationSettings,
               connections: Connections) -> list[str | None]:
    """Why each event of the lane was not delivered (None: it was)."""
    if not lane[0]["rule"].get("email"):
        return [_attempt(event, settings, connections) for event in lane]
    try:
        return list(send_emails(lane, settings))
    except Exception as exc:  # a bug or an odd receiver must not lose the round's other outcomes
        log.exception("notifications %s: unexpected error", [event["event_id"] for event in lane])
        return [f"{type(exc).__name__}: {exc}"] * len(lane)


def deliver_due(conn: db.Conn, settings: NotificationSettings, connections: Connections | None = None) -> Round:
    """One round: claim up to `batch` due events, send them in lanes (at most `concurrency` at once), record the
    outcomes, commit. `connections`: kept HTTP connections to reuse (the service's); else this round's own."""
    done = Round()
    own = connections is None
    connections = connections or Connections(settings)
    try:
        with conn.transaction():
            claimed = list(conn.execute(queries.get("notification_claim"), {"limit": settings.batch}))
            if not claimed:
                return done
            by_lane = lanes(claimed, settings.concurrency)
            with ThreadPoolExecutor(max_workers=min(settings.concurrency, len(by_lane)),
                                    thread_name_prefix="kubetasks-notify") as pool:
                sent = list(pool.map(lambda lane: _send_lane(lane, settings, connections), by_lane))
            outcome = {event["id"]: error for lane, errors in zip(by_lane, sent, strict=True)
                       for event, error in zip(lane, errors, strict=True)}
            _record(conn, claimed, [outcome[event["id"]] for event in claimed], settings, done)
    finally:
        if own:
            connections.close()
    return done


def _record(conn: db.Conn, claimed: list[dict[str, Any]], results: list[str | None],
            settings: NotificationSettings, done: Round) -> None:
    """Mark the delivered events in one statement, and each failed one for its retry (or as given up)."""
    ok = [event["id"] for event, error in zip(claimed, results, strict=True) if error is None]
    if ok:
        conn.execute(queries.get("notification_delivered"), {"ids": ok})
    for event, error in zip(claimed, results, strict=True):
        if error is None:
            done.delivered += 1
            log.info("notification %s (%s, task %s) delivered", event["event_id"], event["event_type"],
                     event["task_id"])
            continue
        delay = backoff(event["attempts"] + 1, settings)
        row = conn.execute(queries.get("notification_failed"), {
            "id": event["id"], "error": error, "delay": delay,
            "max_attempts": settings.max_attempts}).fetchone()
        done.failed += 1
        gave_up = row is not None and row["state"] == "failed"
        log.warning("notification %s (%s, task %s) attempt %s failed: %s; %s", event["event_id"],
                    event["event_type"], event["task_id"], event["attempts"] + 1, error,
                    "given up" if gave_up else f"retrying in {delay:.1f}s")


def _attempt(event: dict[str, Any], settings: NotificationSettings,
             connections: Connections | None = None) -> str | None:
    """Send one event; None when delivered, else why not."""
    try:
        send(event, settings, connections)
    except DeliveryError as exc:
        return str(exc)
    except Exception as exc:  # a bug or an odd receiver must not lose the round's other outcomes
        log.exception("notification %s: unexpected error", event["event_id"])
        return f"{type(exc).__name__}: {exc}"
    return None


def seconds_until_due(conn: db.Conn) -> float | None:
    row = conn.execute(queries.get("notification_next_due")).fetchone()
    return None if row is None or row["seconds"] is None else float(row["seconds"])


def purge(conn: db.Conn, settings: NotificationSettings) -> int:
    return conn.execute(queries.get("notification_purge"),
                        {"older_than": settings.retention.total_seconds()}).rowcount


PURGE_INTERVAL = 300.0  # seconds between purges of old delivered events


class DeliveryService(threading.Thread):
    """The delivery loop on a thread and connection of its own (started by housekeeping)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="kubetasks-notifications", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()
        self.delivered = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        config = self.settings.notifications
        conn: db.Conn | None = None
        backoff_db = db.Backoff.for_database(self.settings.database)
        purged_at = 0.0
        connections = Connections(config)  # kept across rounds: receivers' connections stay open between them
        while not self.stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = db.connect(self.settings.database, application_name="kubetasks-notifications")
                    conn.execute(queries.get("notification_session"))
                    conn.execute(db.listen(protocol.NOTIFICATION_CHANNEL))
                backoff_db.reset()
                done = deliver_due(conn, config, connections)
                self.delivered += done.delivered
                if time.monotonic() - purged_at > PURGE_INTERVAL:
                    purge(conn, config)
                    purged_at = time.monotonic()
                if done.delivered + done.failed >= config.batch:
                    continue  # more may be due now
                due = seconds_until_due(conn)
                wait = config.poll_interval.total_seconds()
                if due is not None:
                    wait = min(wait, max(0.05, due))
                # Wake at the trigger's NOTIFY (a new event committed) or when the next retry is due.
                for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass
            except db.CONNECTION_ERRORS as exc:
                delay = backoff_db.next()
                log.warning("notifications lost the database (%s); retrying in %.1fs", exc, delay)
                if conn is not None:
                    conn.close()
                conn = None
                self.stopping.wait(delay)
            except Exception:
                log.exception("notification delivery failed")
                self.stopping.wait(config.poll_interval.total_seconds())
        connections.close()
        if conn is not None:
            conn.close()
