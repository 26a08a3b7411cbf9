"""JSON Schemas of actors' parameters, from their type hints (pydantic), and validation of args against them.

A parameter without a hint is `Any`; `*args` is not expressible in keyword args and is left out; `**kwargs`
makes the schema accept extra keys. An actor whose hints cannot be turned into a schema gets an open object.
"""

from __future__ import annotations

import inspect
import warnings
from functools import cache
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .. import registry
from ..errors import InvalidInput

_FIXES = {"missing": "add it", "extra_forbidden": "remove it or check its spelling (see args_schema)",
          "int_parsing": "give a whole number", "int_type": "give a whole number",
          "string_type": "give a string", "bool_parsing": "give true or false", "float_parsing": "give a number"}


@cache
def _model(actor: registry.Actor) -> type[BaseModel] | None:
    try:
        signature = inspect.signature(actor.fn)
        hints = get_type_hints(actor.fn)
    except (TypeError, ValueError, NameError):
        return None
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        hint = hints.get(name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hint, default)
    try:
        with warnings.catch_warnings():  # a parameter called e.g. `json` shadows a BaseModel attribute: fine here
            warnings.simplefilter("ignore")
            model: type[BaseModel] = create_model(
                f"{actor.name}.args", __config__=ConfigDict(extra=extra, arbitrary_types_allowed=False), **fields)
            model.model_json_schema()
    except Exception:
        return None
    return model


def args_schema(actor: registry.Actor) -> dict[str, Any]:
    model = _model(actor)
    if model is None:
        return {"type": "object", "additionalProperties": True, "title": f"{actor.name}.args"}
    schema: dict[str, Any] = model.model_json_schema()
    return schema


def validate_args(actor: registry.Actor, args: Any) -> dict[str, Any]:
    """The args as the actor will receive them, JSON-compatible; InvalidInput naming `args.<field>`."""
    if not isinstance(args, dict):
        raise InvalidInput("args", f"must be a JSON object, not {type(args).__name__}", 'pass e.g. {"url": "…"}')
    model = _model(actor)
    if model is None:
        return args
    try:
        checked = model.model_validate(args)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(["args", *(str(part) for part in err["loc"])])
        problem = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"][0].lower() + err["msg"][1:]
        raise InvalidInput(field, problem, _FIXES.get(err["type"], "see the actor's args_schema")) from None
    dumped: dict[str, Any] = checked.model_dump(mode="json", exclude_unset=True)
    return dumped


def describe(actor: registry.Actor) -> dict[str, Any]:
    return {"name": actor.name, "queue": actor.queue, "max_retries": actor.max_retries,
            "time_limit": actor.time_limit, "priority": actor.priority,
            "doc": inspect.getdoc(actor.fn) or "", "args_schema": args_schema(actor)}
