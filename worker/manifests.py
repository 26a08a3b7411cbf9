"""The `Schedule` manifest: pydantic models that are the single source of truth of its shape.

The same models validate YAML files for `kubetasks apply`, parse Schedule custom resources in the operator,
and generate the CRD's OpenAPI schema (hence a `description` on every field). Errors are turned into
`InvalidInput` naming the file, the document index and the field path in the manifest's own camelCase
spelling, e.g. `examples/x.yaml[0] spec.schedule: invalid cron '* *' (use 5 fields …)`.

Validation here is pure (no database, no actor registry): whether the actor exists is checked where the
schedule is stored, because only a process that imported the actor modules can know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from . import cron, durations, notifyrules, overlap, protocol, registry
from .errors import InvalidInput

GROUP = "kubetasks.dev"
VERSION = "v1alpha1"
API_VERSION: Final = "kubetasks.dev/v1alpha1"  # GROUP/VERSION, spelled out so its type is a Literal
KIND: Final = "Schedule"
PLURAL = "schedules"

# The macros Kubernetes CronJob accepts, plus @midnight; croniter expands them.
CRON_FIX = ("use 5 fields 'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *', "
            "or one of " + ", ".join(protocol.CRON_MACROS) + "; quote it in YAML")


def _custom(kind: str, problem: str, fix: str) -> PydanticCustomError:
    # The fix travels in the error's context so `as_invalid_input` can keep problem and fix apart.
    return PydanticCustomError(kind, "{problem}", {"problem": problem, "fix": fix})


def check_cron(expression: str) -> str:
    """Return the normalised cron expression or raise a `PydanticCustomError` saying what is wrong."""
    cron = " ".join(expression.split())
    if cron.startswith("@"):
        if cron.lower() not in protocol.CRON_MACROS:
            raise _custom("cron", f"unknown cron macro {expression!r}", CRON_FIX)
        return cron.lower()
    if "TZ=" in cron.upper():
        raise _custom("cron", f"invalid cron {expression!r}: a time zone prefix is not supported",
                      "remove CRON_TZ=/TZ= and set spec.timeZone instead")
    fields = cron.split(" ")
    if len(fields) != 5:
        raise _custom("cron", f"invalid cron {expression!r}: {len(fields)} fields instead of 5", CRON_FIX)
    try:
        croniter(cron).get_next(float)
    except CroniterBadDateError:
        raise _custom("cron", f"cron {expression!r} never fires (no such date)",
                      "check day-of-month against month, e.g. February has no 30th") from None
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise _custom("cron", f"invalid cron {expression!r}: {exc}", CRON_FIX) from None
    return cron


def check_duration(value: str, *, minimum: int = 1) -> str:
    """Refuse what `durations.parse` cannot read, or a duration below `minimum` seconds."""
    try:
        seconds = durations.parse(value)
    except ValueError as exc:
        raise _custom("duration", str(exc), durations.FIX) from None
    if seconds < minimum:
        raise _custom("duration", f"{value!r} is shorter than {minimum}s", f"give at least {minimum}s")
    return value


TIME_FIX = "write e.g. '2026-01-31T02:00:00Z' or '2026-01-31T03:00:00+01:00'"


def parse_time(value: str) -> datetime:
    """An RFC 3339 time with a UTC offset; ValueError (saying what is wrong) otherwise."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset (end it with 'Z' or an offset like '+01:00')")
    return parsed


def check_time(value: str | datetime) -> str:
    """A startTime / endTime, kept as text (the CRD's `date-time`)."""
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        value = value.isoformat()
    try:
        parse_time(value)
    except ValueError as exc:
        raise _custom("time", str(exc), TIME_FIX) from None
    return value


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _custom("time_zone", f"unknown time zone {name!r}",
                      "use an IANA name such as 'UTC', 'Europe/Berlin' or 'America/New_York'") from None
    return name


class _Model(BaseModel):
    # Strict: a manifest saying `priority: "5"` or `suspend: "yes"` is a mistake, as Kubernetes would say.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, strict=True,
                              extra="forbid", allow_inf_nan=False)


class RetryPolicy(_Model):
    """Retry settings of a schedule's runs."""

    limit: int | None = Field(
        default=None, ge=0, le=1000,
        description="Retries after a failed attempt; unset uses the actor's setting, then the worker's "
                    "KUBETASKS_WORKER__TASK_MAX_RETRIES.")
    backoff_seconds: float | None = Field(
        default=None, gt=0,
        description="First retry delay in seconds, doubling each retry; unset uses the worker's "
                    "KUBETASKS_WORKER__RETRY_BACKOFF_BASE.")


class ScheduleSpec(_Model):
    """The desired state of a Schedule: which actor runs with which arguments, and when."""

    actor: str = Field(
        description="Name of the actor to run, as declared with @actor (e.g. 'kubetasks.http').",
        json_schema_extra={"pattern": protocol.ACTOR_PATTERN, "maxLength": 256})
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to the actor, as a JSON object.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    queue: str = Field(
        default="default",
        description="Queue the runs are put on; only workers consuming it run them.",
        json_schema_extra={"pattern": protocol.QUEUE_PATTERN, "maxLength": 128})
    every: str | None = Field(
        default=None,
        description="A plain interval instead of cron, e.g. '90m', '1h30m', '45s' (at least 1s): ticks at "
                    "startTime plus whole intervals, or at whole intervals since 1970-01-01T00:00:00Z "
                    "without a startTime.")
    schedule: str | None = Field(
        default=None, validate_default=True,
        description="Unix cron expression with 5 fields (minute hour day-of-month month day-of-week) or a "
                    "macro (@hourly, @daily, @weekly, @monthly, @yearly), evaluated in timeZone. Give this or "
                    "every.")
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone the schedule is evaluated in, e.g. 'Europe/Berlin'. A time skipped by a "
                    "daylight-saving change runs at the end of the gap; a wall-clock time repeated when "
                    "clocks go back runs once (unless the hour field is '*').")
    suspend: bool = Field(
        default=False,
        description="When true no new runs are started; runs already started are not affected.")
    concurrency_policy: overlap.Policy = Field(
        default="Allow",
        description="What to do when a tick comes while a previous run is queued or running: Allow starts "
                    "another, Forbid skips the tick, Replace cancels the previous run and starts a new one, "
                    "CancelOther cancels the previous run and starts the new one once it has stopped, "
                    "BufferOne queues the new run until the previous one ends (at most one waits; further "
                    "ticks are skipped), BufferAll queues every tick's run, started one at a time in order.")
    missed_run_policy: Literal["Skip", "RunOnce", "CatchUp"] = Field(
        default="RunOnce",
        description="What to do with ticks missed while no scheduler ran: Skip drops them, RunOnce starts "
                    "one run for all of them (if within startingDeadlineSeconds), CatchUp starts one run for "
                    "each missed tick inside catchupWindow, oldest first, at most maxCatchupRuns.")
    catchup_window: str | None = Field(
        default=None, validate_default=True,
        description="With missedRunPolicy CatchUp (required then): how far back missed ticks are still run, "
                    "e.g. '6h'; older ticks are dropped.")
    max_catchup_runs: int = Field(
        default=100, ge=1, le=1000,
        description="With missedRunPolicy CatchUp: the most runs one catch-up starts (the newest ticks "
                    "inside the window win).")
    jitter: str | None = Field(
        default=None,
        description="A random delay of each run, at most this long (e.g. '30s', '5m'), the same for a tick "
                    "whichever scheduler fires it; the run's tick stays the nominal time.")
    start_time: str | None = Field(
        default=None,
        description="RFC 3339 time before which no tick runs (and the anchor of every).",
        json_schema_extra={"format": "date-time"})
    end_time: str | None = Field(
        default=None,
        description="RFC 3339 time after which no tick runs; the schedule then has no next run.",
        json_schema_extra={"format": "date-time"})
    pause_after_failures: int | None = Field(
        default=None, ge=1, le=1000,
        description="Pause the schedule after this many failed runs in a row (cancelled runs do not "
                    "count); the Suspended condition and an Event say why. Resume it to go on.")
    starting_deadline_seconds: int | None = Field(
        default=None, gt=0, le=2_147_483_647,
        description="A tick not fired within this many seconds of its time is skipped; unset means no "
                    "deadline for RunOnce, and about a minute of tolerance for Skip.")
    time_limit_seconds: float | None = Field(
        default=None, gt=0,
        description="Seconds one attempt may run before it is stopped; unset uses the actor's or the "
                    "worker's default.")
    retries: RetryPolicy = Field(default_factory=lambda: RetryPolicy(),
                                 description="How a failed run is retried.")
    deduplicate: bool = Field(
        default=False,
        description="When true a tick starts no run while the previous run is still queued or running "
                    "(a dedup key per schedule); manual triggers obey it too.")
    priority: int = Field(default=0, ge=-32768, le=32767,
                          description="Priority of the runs within their queue; higher runs first.")
    successful_runs_history_limit: int = Field(
        default=3, ge=0, le=1000,
        description="Finished successful runs kept; older ones are deleted.")
    failed_runs_history_limit: int = Field(
        default=1, ge=0, le=1000,
        description="Finished failed or cancelled runs kept; older ones are deleted.")
    notifications: list[notifyrules.NotificationRule] = Field(
        default_factory=list, max_length=20,
        description="Who hears about the runs' outcomes: each rule names events (succeeded, warning, failed, "
                    "retriesExhausted, cancelled, consecutiveFailures) and one target (email or webhook).")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        return None if value is None else check_duration(value)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "every" in info.data and (info.data["every"] is None) == (value is None):
            raise _custom("schedule", "give exactly one of schedule (cron) and every (an interval)",
                          "e.g. schedule: \"*/5 * * * *\" or every: 90m")
        return None if value is None else check_cron(value)

    @field_validator("catchup_window")
    @classmethod
    def _window(cls, value: str | None, info: ValidationInfo) -> str | None:
        policy = info.data.get("missed_run_policy")
        if policy == "CatchUp" and value is None:
            raise _custom("catchup", "missedRunPolicy CatchUp needs a catchupWindow",
                          "add catchupWindow, e.g. catchupWindow: 6h")
        if value is not None and policy is not None and policy != "CatchUp":
            raise _custom("catchup", "is only used with missedRunPolicy CatchUp",
                          "set missedRunPolicy: CatchUp, or remove catchupWindow")
        return None if value is None else check_duration(value)

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, value: str | None) -> str | None:
        return None if value is None else check_duration(value, minimum=0)

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> object:
        return value if value is None or not isinstance(value, str | datetime) else check_time(value)

    @field_validator("end_time")
    @classmethod
    def _end_after_start(cls, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get("start_time")
        if value is not None and start is not None and parse_time(value) <= parse_time(start):
            raise _custom("time", f"{value} is not after startTime {start}",
                          "move endTime after startTime, or remove one of them")
        return value

    @property
    def expression(self) -> str:
        """What the row's `cron` column stores: the cron expression, or `@every <interval>`."""
        if self.schedule is not None:
            return self.schedule
        return cron.every(durations.parse(self.every if self.every is not None else 0))

    @property
    def times(self) -> tuple[datetime | None, datetime | None]:
        """(startTime, endTime) as instants."""
        return (parse_time(self.start_time) if self.start_time else None,
                parse_time(self.end_time) if self.end_time else None)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("actor")
    @classmethod
    def _actor(cls, value: str) -> str:
        try:
            return registry.validate_name(value)
        except InvalidInput as exc:
            raise _custom("actor", exc.problem, exc.fix) from None

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        try:
            return registry.validate_queue(value)
        except InvalidInput as exc:
            raise _custom("queue", exc.problem, exc.fix) from None


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata a Schedule uses; the rest (uid, resourceVersion…) is ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", strict=True)

    name: str = Field(description="Schedule name, a DNS subdomain (lowercase letters, digits, '-', '.').")
    namespace: str = Field(default="default",
                           description="Namespace; the stored name is '<namespace>/<name>'.")
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Kubernetes annotations.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not protocol.DNS_SUBDOMAIN.fullmatch(value):
            raise _custom("name", f"{value!r} is not a valid name",
                          "use up to 253 lowercase letters, digits, '-' and '.', starting and ending "
                          "with a letter or digit")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not protocol.DNS_LABEL.fullmatch(value):
            raise _custom("namespace", f"{value!r} is not a valid namespace",
                          "use up to 63 lowercase letters, digits and '-', starting and ending "
                          "with a letter or digit")
        return value


class ScheduleManifest(BaseModel):
    """A whole `Schedule` document: what `kubetasks apply -f` reads and the operator watches."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", strict=True)

    api_version: Literal["kubetasks.dev/v1alpha1"] = Field(
        default=API_VERSION, description="API version of this object.")
    kind: Literal["Schedule"] = Field(default=KIND, description="Always 'Schedule'.")
    metadata: ObjectMeta = Field(description="Name and namespace of the schedule.")
    spec: ScheduleSpec = Field(description="What to run and when.")

    @property
    def row_name(self) -> str:
        """Key of the schedule's row: '<namespace>/<name>'."""
        return schedule_name(self.metadata.namespace, self.metadata.name)


def schedule_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def check_schedule_name(name: str, field: str = "name") -> str:
    """Refuse a stored schedule name that is not '<namespace>/<name>' in Kubernetes spelling."""
    namespace, _, short = name.partition("/") if isinstance(name, str) else ("", "", "")
    if not (protocol.DNS_LABEL.fullmatch(namespace) and protocol.DNS_SUBDOMAIN.fullmatch(short)):
        raise InvalidInput(field, f"{name!r} is not a schedule name",
                           "write '<namespace>/<name>' in lowercase letters, digits and '-', "
                           "e.g. 'default/nightly-report'")
    return name


# Fixes for pydantic's own error types, which carry none.
_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": "use one of the values listed",
    "int_type": "give a whole number without quotes",
    "float_type": "give a number without quotes",
    "bool_type": "give true or false without quotes",
    "string_type": "give a string (quote it in YAML)",
    "dict_type": "give a mapping of keys to values",
    "model_type": "give a mapping of keys to values",
    "greater_than": "give a larger value",
    "greater_than_equal": "give a larger value",
    "less_than": "give a smaller value",
    "less_than_equal": "give a smaller value",
    "finite_number": "give a finite number",
}


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + to_camel(part))
    return out


def as_invalid_input(exc: ValidationError, where: str = "", prefix: str = "") -> list[InvalidInput]:
    """One `InvalidInput` per pydantic error, its field named `<where> <prefix>.<camelCasePath>`."""
    found = []
    for err in exc.errors():
        path = _path(err["loc"])
        field = ".".join(p for p in (prefix, path) if p)
        if where:
            field = f"{where} {field}"
        ctx = err.get("ctx") or {}
        fix = str(ctx.get("fix") or _FIXES.get(err["type"], ""))
        problem = str(ctx.get("problem") or err["msg"][0].lower() + err["msg"][1:])
        if err["type"] == "extra_forbidden":
            problem = "unknown field"
        found.append(InvalidInput(field, problem, fix))
    return found


class ManifestError(InvalidInput):
    """Every problem found in a set of manifests, one per line; `.errors` holds them one by one."""

    def __init__(self, errors: list[InvalidInput]) -> None:
        super().__init__(errors[0].field, errors[0].problem, errors[0].fix)
        self.errors = errors
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


def parse_spec(data: Mapping[str, Any], where: str = "spec") -> ScheduleSpec:
    """Validate a spec mapping (a custom resource's `.spec`), raising `InvalidInput` on the first problem."""
    try:
        return ScheduleSpec.model_validate(data)
    except ValidationError as exc:
        raise as_invalid_input(exc, prefix=where)[0] from None


def parse_manifest(document: Any, where: str = "") -> ScheduleManifest:
    errors = _check_document(document, where)
    if errors:
        raise ManifestError(errors)
    return ScheduleManifest.model_validate(document)


def _check_document(document: Any, where: str) -> list[InvalidInput]:
    if not isinstance(document, dict):
        return [InvalidInput(where or "document", f"is a {type(document).__name__}, not a mapping",
                             f"write a Schedule: apiVersion: {API_VERSION}, kind: Schedule, metadata, spec")]
    kind, version = document.get("kind"), document.get("apiVersion")
    if kind != KIND or version != API_VERSION:
        field = "kind" if kind != KIND else "apiVersion"
        return [InvalidInput(f"{where} {field}".strip(), f"{kind!r} of {version!r} is not supported",
                             f"only kind: {KIND} with apiVersion: {API_VERSION} can be applied")]
    try:
        ScheduleManifest.model_validate(document)
    except ValidationError as exc:
        return as_invalid_input(exc, where)
    return []


def manifest_files(path: str | Path) -> list[Path]:
    """The YAML files named by `path`: the file itself, or a directory's *.yaml and *.yml, sorted."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))
        if not files:
            raise InvalidInput(str(path), "holds no *.yaml or *.yml file",
                               "point -f at a manifest or a folder of them")
        return files
    if not root.is_file():
        raise InvalidInput(str(path), "does not exist", "check the path given to -f")
    return [root]


def load_manifests(path_or_dir: str | Path | Iterable[str | Path]) -> list[ScheduleManifest]:
    """Read and validate every Schedule in the given files/directories; all problems are reported at once.

    Raises `ManifestError` (an `InvalidInput`) listing each problem as `file[index] field: problem (fix)`.
    """
    return [manifest for _, manifest in load_sources(path_or_dir)]


def load_sources(path_or_dir: str | Path | Iterable[str | Path]) -> list[tuple[str, ScheduleManifest]]:
    """Like `load_manifests`, each manifest paired with where it came from ('file[index]')."""
    paths = [path_or_dir] if isinstance(path_or_dir, str | Path) else list(path_or_dir)
    files = [file for path in paths for file in manifest_files(path)]
    errors: list[InvalidInput] = []
    found: list[tuple[str, ScheduleManifest]] = []
    seen: dict[str, str] = {}
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            errors.append(InvalidInput(
                str(file), f"is not valid YAML: {' '.join(str(exc).split())}",
                "quote values that start with '*' or '@', e.g. schedule: \"*/5 * * * *\""))
            continue
        index = -1
        for document in documents:
            if document is None:  # an empty document between '---' separators
                continue
            index += 1
            where = f"{file}[{index}]"
            problems = _check_document(document, where)
            if problems:
                errors.extend(problems)
                continue
            manifest = ScheduleManifest.model_validate(document)
            if manifest.row_name in seen:
                errors.append(InvalidInput(
                    f"{where} metadata.name",
                    f"schedule {manifest.row_name!r} is also defined in {seen[manifest.row_name]}",
                    "give each Schedule its own name or namespace"))
                continue
            seen[manifest.row_name] = where
            found.append((where, manifest))
    if errors:
        raise ManifestError(errors)
    if not found:
        raise InvalidInput(", ".join(map(str, paths)), "holds no Schedule document",
                           f"add documents with apiVersion: {API_VERSION} and kind: Schedule")
    return found
