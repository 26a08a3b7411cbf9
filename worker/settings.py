"""Settings, read from the environment with authentik-style nesting.

`KUBETASKS_DATABASE__URL`, `KUBETASKS_WORKER__THREADS=4`, `KUBETASKS_WORKER__TASK_MAX_RETRIES=3` …
Durations accept seconds (`30`), ISO 8601 (`PT30S`) or `HH:MM:SS`.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _seconds(value: Any) -> Any:
    """Environment variables arrive as text: read a bare number as seconds."""
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]


class DatabaseSettings(BaseModel):
    url: str = Field("postgresql://postgres@127.0.0.1:5432/kubetasks",
                     description="libpq DSN or URL of the PostgreSQL database holding the queue.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to wait for one connection attempt.")
    reconnect_max_backoff: float = Field(
        10.0, gt=0, description="Upper bound, in seconds, of the backoff between reconnection attempts.")


class WorkerSettings(BaseModel):
    processes: int = Field(1, ge=1, le=256, description="Worker processes per replica.")
    threads: int = Field(4, ge=1, le=1024, description="Task threads per process.")
    queues: list[str] = Field(["default"], min_length=1,
                              description="Queues this worker consumes, in order of preference.")
    modules: list[str] = Field([], description="Python modules to import for their @actor declarations.")
    task_max_retries: int = Field(3, ge=0, le=1000,
                                  description="Retries after an exception when the actor sets none.")
    task_default_time_limit: Duration = Field(
        timedelta(minutes=10), description="Time limit of a task whose actor and enqueue set none.")
    task_expiration: Duration = Field(
        timedelta(days=30), description="Finished tasks older than this are purged.")
    task_purge_interval: Duration = Field(timedelta(minutes=5), description="How often to purge.")
    task_purge_batch: int = Field(5000, ge=1, description="Rows deleted per purge statement (keeps locks short).")
    scheduler_interval: Duration = Field(timedelta(seconds=10), description="How often to fire due schedules.")
    consumer_listen_timeout: Duration = Field(
        timedelta(seconds=5),
        description="Longest LISTEN wait before scanning the table for tasks no notification announced.")
    rescue_interval: Duration = Field(
        timedelta(seconds=15), description="How often to look for running tasks whose worker died.")
    retry_backoff_base: Duration = Field(timedelta(seconds=1), description="First retry delay; doubles each time.")
    retry_backoff_max: Duration = Field(timedelta(minutes=10), description="Longest retry delay.")
    shutdown_timeout: Duration = Field(
        timedelta(seconds=25), description="On SIGTERM, how long running tasks may finish before they are "
        "requeued; keep it below the pod's terminationGracePeriodSeconds.")
    prefetch: int | None = Field(
        None, ge=0, description="Tasks claimed ahead of free threads. Default: adaptive, about 50 ms of work at "
        "the observed task duration (big batches for tiny tasks, none for long ones); 0 disables it.")
    args_max_bytes: int = Field(1024 * 1024, ge=1, description="Largest JSON encoding of a task's args.")
    abandoned_threads_limit: int = Field(
        8, ge=1, description="Threads stuck past their time limit before the process restarts itself.")
    command_allowlist: list[str] = Field(
        [], description="Executables the built-in `kubetasks.command` actor may run; empty disables it.")
    metrics_port: int = Field(9100, ge=0, le=65535,
                              description="Port of /metrics, /healthz and /readyz; 0 disables it.")
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server binds.")


class NotificationSettings(BaseModel):
    """Delivery of notification events (worker/notifications.py): the SMTP server, webhook secrets, retries."""

    enabled: bool = Field(True, description="Whether this worker's housekeeping delivers notification events.")
    poll_interval: Duration = Field(
        timedelta(seconds=5), description="Longest wait for a new event (each one is also announced on commit).")
    batch: int = Field(50, ge=1, le=1000, description="Events claimed per delivery round (sent, recorded and "
                       "committed together; a worker killed mid-round sends them again).")
    concurrency: int = Field(8, ge=1, le=64, description="Events of a round sent at once (threads).")
    timeout: Duration = Field(
        timedelta(seconds=10), description="Longest SMTP or HTTP exchange for one event; a receiver that hangs "
        "costs at most this per attempt (and never slows tasks: delivery has its own thread and connection).")
    retry_backoff_base: Duration = Field(timedelta(seconds=5), description="First redelivery delay; doubles.")
    retry_backoff_max: Duration = Field(timedelta(minutes=10), description="Longest redelivery delay.")
    max_attempts: int = Field(
        20, ge=1, le=1000, description="Attempts before an event is given up (state 'failed'); with the default "
        "backoff that is about 2.5 hours of receiver downtime.")
    retention: Duration = Field(timedelta(days=7), description="Delivered or failed events older than this "
                                "are deleted.")
    smtp_host: str | None = Field(None, description="SMTP server; unset: e-mail rules fail (and are retried).")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port (587 submission, 465 TLS, 25 plain).")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls upgrades the connection, tls connects with TLS (port 465), none is "
        "plain text (a local relay).")
    smtp_username: str | None = Field(None, description="SMTP login; unset sends without authentication.")
    smtp_password: str | None = Field(None, description="SMTP password (prefer smtp_password_file).")
    smtp_password_file: Path | None = Field(None, description="File holding the SMTP password (a mounted "
                                            "Secret), read at each delivery so a rotated Secret is picked up.")
    smtp_from: str = Field("kubetasks@localhost", description="From: address of notification e-mails.")
    webhook_secrets: dict[str, str] = Field({}, description="HMAC secrets by name, for webhook.secretKey "
                                            "(JSON in KUBETASKS_NOTIFICATIONS__WEBHOOK_SECRETS).")
    secrets_dir: Path | None = Field(None, description="Directory of secrets, one file per name (a mounted "
                                     "Secret), looked up when webhook_secrets has no such name.")
    dashboard_url: str | None = Field(None, description="Base URL of the dashboard, for links in messages.")
    source: str = Field("/kubetasks", description="CloudEvents `source` prefix (e.g. a cluster's name).")


class TracingSettings(BaseModel):
    """OpenTelemetry spans for enqueue and for each attempt (worker/tracing.py; the `tracing` extra)."""

    enabled: bool = Field(
        False, description="Emit spans through the OpenTelemetry API's global tracer provider, which the "
        "application (or a module in KUBETASKS_WORKER__MODULES) configures with the SDK and an exporter. Off: "
        "nothing of OpenTelemetry is imported and tasks pay nothing for it.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBETASKS_", env_nested_delimiter="__",
                                      extra="ignore")

    database: DatabaseSettings = DatabaseSettings()
    worker: WorkerSettings = WorkerSettings()
    notifications: NotificationSettings = NotificationSettings()
    tracing: TracingSettings = TracingSettings()


@cache
def get_settings() -> Settings:
    return Settings()
