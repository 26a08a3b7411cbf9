"""The JSON request bodies of the dashboard API, as pydantic models: unknown fields are refused, and the
OpenAPI document describes them."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Body):
    actor: str = Field(description="A declared actor's name (see /actors).")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments, checked against the "
                                 "actor's args_schema.")
    queue: str | None = None
    eta: datetime | None = Field(None, description="Run at this time (ISO 8601 with offset); default now.")
    description: str | None = Field(None, max_length=1000)


class ScheduleCreate(_Body):
    name: str = Field(description="'<namespace>/<name>'")
    actor: str
    args: dict[str, Any] = Field(default_factory=dict)
    cron: str
    time_zone: str = "UTC"
    queue: str | None = None


class ScheduleEdit(_Body):
    cron: str | None = None
    time_zone: str | None = None


class Filter(_Body):
    state: list[str] = []
    actor: list[str] = []
    queue: list[str] = []
    schedule: str | None = None
    object: str | None = None
    exclude_successful: bool = False


class Bulk(_Body):
    action: Literal["delete", "retry", "flush"]
    filter: Filter = Filter()
    queue: str | None = Field(None, description="The queue to flush (action flush).")
    include_unfinished: bool = Field(False, description="delete: also queued and running tasks.")
    dry_run: bool = Field(True, description="Only count what would be touched (the default).")


class CancelBody(_Body):
    message: str | None = Field(None, max_length=1000)
