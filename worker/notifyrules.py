"""Notification rules: when a task's outcome is announced, and where (e-mail over SMTP, or a webhook).

One pydantic model, shared by `enqueue(notify=…)`, `@actor(notify=…)`, the Schedule manifest / CRD
(`spec.notifications`) and the TaskRun CRD, so a bad address or URL is refused where it is written, naming
the field (`spec.notifications[0].webhook.url: …`). The rules are stored as JSON on the task row (camelCase,
exactly `dump`'s output); the `tasks_notification_enqueue` trigger of migration 0004 reads `events` and
`consecutiveFailures` from it, so those two spellings are a contract with the SQL.

Secrets never appear in a rule: a webhook names a `secretKey`, looked up by the worker in its settings or in a
mounted Secret directory (see `settings.NotificationSettings`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .errors import InvalidInput

Event = Literal["succeeded", "warning", "failed", "retriesExhausted", "cancelled", "consecutiveFailures",
                "scheduleMissed"]
EVENTS: Final[tuple[str, ...]] = ("succeeded", "warning", "failed", "retriesExhausted", "cancelled",
                                  "consecutiveFailures", "scheduleMissed")
# Written by the scheduler, not by a task's outcome: a tick of a schedule that got no run (see scheduler.py).
SCHEDULE_MISSED: Final = "scheduleMissed"
# The CloudEvents types the trigger writes (`dev.kubetasks.<subject>.<what>`).
EVENT_TYPES: Final[dict[str, str]] = {
    "succeeded": "dev.kubetasks.task.succeeded",
    "warning": "dev.kubetasks.task.warning",
    "failed": "dev.kubetasks.task.failed",
    "cancelled": "dev.kubetasks.task.cancelled",
    "retriesExhausted": "dev.kubetasks.task.retries_exhausted",
    "consecutiveFailures": "dev.kubetasks.schedule.consecutive_failures",
    "scheduleMissed": "dev.kubetasks.schedule.missed",
}


def wanting(rules: Sequence[dict[str, Any]] | None, event: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, rule) of the stored rules (dump's JSON) that name `event`."""
    return [(index, rule) for index, rule in enumerate(rules or ()) if event in (rule.get("events") or ())]

# Deliberately plain: one '@', no whitespace or control characters (no header injection), a dotted domain.
_EMAIL: Final = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_SECRET_KEY: Final = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


def _custom(problem: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError("notification", "{problem}", {"problem": problem, "fix": fix})


def check_email(address: str) -> str:
    if not _EMAIL.fullmatch(address):
        raise _custom(f"{address!r} is not an e-mail address", "write a plain address such as ops@example.com")
    return address


def check_url(url: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in url):
        raise _custom(f"{url!r} contains whitespace or control characters", "percent-encode them")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _custom(f"{url!r} is not an http(s) URL", "write e.g. https://hooks.example.com/kubetasks")
    try:
        port = parts.port
    except ValueError:
        raise _custom(f"{url!r} has an invalid port", "use a port from 1 to 65535") from None
    if not parts.hostname or port == 0:
        raise _custom(f"{url!r} has no host", "write e.g. https://hooks.example.com/kubetasks")
    if parts.username or parts.password:
        raise _custom(f"{url!r} carries credentials", "set webhook.secretKey for signing instead")
    return url


Address = Annotated[str, AfterValidator(check_email)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True, extra="forbid",
                              frozen=True)


class EmailTarget(_Model):
    """Send an e-mail through the worker's SMTP server (KUBETASKS_NOTIFICATIONS__SMTP_*)."""

    to: list[Address] = Field(min_length=1, max_length=50, description="Recipients' addresses.",
                              json_schema_extra={"items": {"type": "string", "maxLength": 254}})


class WebhookTarget(_Model):
    """POST the event to a URL: a CloudEvents 1.0 structured JSON event, or a Slack-compatible text message."""

    url: str = Field(description="http(s) URL the event is POSTed to.", max_length=2048)
    format: Literal["cloudevents", "slack"] = Field(
        default="cloudevents",
        description="cloudevents: application/cloudevents+json; slack: {\"text\": …} for Slack-style "
                    "incoming webhooks (Slack, Mattermost, Rocket.Chat).")
    secret_key: str | None = Field(
        default=None,
        description="Name of a secret known to the workers (KUBETASKS_NOTIFICATIONS__WEBHOOK_SECRETS or a file "
                    "of that name in KUBETASKS_NOTIFICATIONS__SECRETS_DIR); when set, the body is signed with "
                    "HMAC-SHA256 in the X-Kubetasks-Signature header ('sha256=<hex>').",
        json_schema_extra={"pattern": _SECRET_KEY.pattern})

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_KEY.fullmatch(value):
            raise _custom(f"{value!r} is not a secret key name", "use letters, digits, '_', '.' and '-'")
        return value


class NotificationRule(_Model):
    """When to notify (events) and where (exactly one of email and webhook)."""

    events: list[Event] = Field(
        min_length=1,
        description="Outcomes that notify: succeeded, warning, failed (any final error), retriesExhausted "
                    "(failed after every retry), cancelled, consecutiveFailures (the Nth failed run of a "
                    "schedule in a row), scheduleMissed (a tick of a schedule skipped by Forbid or BufferOne, "
                    "or lost to downtime outside what the missed-run policy runs; one event per tick). One "
                    "event per rule and outcome; the most specific matching type.")
    consecutive_failures: int | None = Field(
        default=None, ge=1, le=1000,
        description="N for consecutiveFailures (default 3): notify when a schedule's Nth run in a row fails.")
    email: EmailTarget | None = Field(default=None, description="Send an e-mail.")
    webhook: WebhookTarget | None = Field(default=None, description="POST to a webhook.")

    @model_validator(mode="after")
    def _one_target(self) -> NotificationRule:
        if (self.email is None) == (self.webhook is None):
            raise _custom("needs exactly one of email and webhook", "give one target per rule")
        return self


Rules = list[NotificationRule]
_RULES: Final = TypeAdapter(Rules)


def parse(rules: Sequence[NotificationRule | dict[str, Any]] | None, field: str = "notify") -> Rules:
    """Validate rules given as models or mappings; InvalidInput names the field of the first problem."""
    if rules is None:
        return []
    if isinstance(rules, dict | str) or not isinstance(rules, Sequence):
        raise InvalidInput(field, "must be a list of notification rules", 'pass e.g. [{"events": ["failed"], …}]')
    try:
        return _RULES.validate_python([r.model_dump(by_alias=True, exclude_none=True)
                                       if isinstance(r, NotificationRule) else r for r in rules])
    except ValidationError as exc:
        err = exc.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{to_camel(str(p))}" for p in err["loc"])
        ctx = err.get("ctx") or {}
        problem = str(ctx.get("problem") or err["msg"])
        raise InvalidInput(f"{field}{path}", problem, str(ctx.get("fix") or "")) from None


def dump(rules: Sequence[NotificationRule]) -> list[dict[str, Any]] | None:
    """The JSON stored on task and schedule rows (None for no rules, so the trigger never runs)."""
    return [rule.model_dump(mode="json", by_alias=True, exclude_none=True) for rule in rules] or None
