"""What every section of the pipeline file shares: the strict base model, and how a rejected
value or a broken rule is reported (messages shown verbatim, several problems raised at once,
each with its own location, "did you mean" suggestions, values described as YAML shows them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]

CONFIG_ERROR = "wanda_config"
_PLAIN_MESSAGES = {
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
}
RULES_ERROR = "pipeline_rules"
_SHOWN_BITS = 200  # longer integers (about 60 digits) are described by their length


def custom_error(message: str) -> PydanticCustomError:
    """A validation error whose message is shown verbatim (no "Value error, " prefix)."""
    return PydanticCustomError(CONFIG_ERROR, "{message}", {"message": message})


def problem(loc: Loc, message: str, *, at_key: bool = False) -> dict[str, Any]:
    """One rule violation: `loc` relative to the validated object, `at_key` to point at the key."""
    return {"loc": tuple(loc), "message": message, "at_key": at_key}


def rules_error(problems: list[dict[str, Any]]) -> PydanticCustomError:
    """Raise several rule violations at once; the loader expands them into separate lines."""
    summary = "; ".join(
        f"{' -> '.join(map(str, p['loc']))}: {p['message']}" if p["loc"] else p["message"]
        for p in problems
    )
    return PydanticCustomError(RULES_ERROR, "{summary}", {"summary": summary, "problems": problems})


def _fspath(value: Any) -> Any:
    """Accept a `Path` where a path string is expected (for configs built in Python)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[str | None, BeforeValidator(_fspath)]


def yaml_kind(value: Any) -> str:
    """The YAML word for a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    return "string" if isinstance(value, str) else "number"


def describe_value(value: Any) -> str:
    """A rejected value as YAML shows it: `the string 'int8'`, `1.2`, `true`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > _SHOWN_BITS:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    return (
        f"a {yaml_kind(value)}" if isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    )


class StrictModel(BaseModel):
    """Base of every section: unknown keys are errors, values are not coerced, and a number
    must be finite (.nan and .inf are refused everywhere)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def only_with(fields: BaseModel, keys: tuple[str, ...], condition: bool, owner: str) -> list[dict]:
    """Problems for each of `keys` given a non-default value although `condition` (its owner)
    is off. An explicit default is accepted, so a dumped config validates again."""
    if condition:
        return []
    defined = type(fields).model_fields
    return [problem((key,), f"only {owner} takes {key!r}", at_key=True) for key in keys
            if getattr(fields, key) != defined[key].get_default(call_default_factory=True)]


def readable_errors(error: ValidationError, unknown_key: Callable[[Loc], str]
                    ) -> list[tuple[Loc, str, bool]]:
    """Every pydantic error as (location, readable message, whether it points at the key): the
    rules' own problems expanded, `unknown_key(loc)` for a key not allowed, the value described
    as YAML shows it. The pipeline file's loader and the library's settings both report so."""
    found: list[tuple[Loc, str, bool]] = []
    for item in error.errors(include_url=False):
        loc, kind = tuple(item["loc"]), item["type"]
        if kind == RULES_ERROR:
            found += [((*loc, *p["loc"]), p["message"], p["at_key"])
                      for p in item["ctx"]["problems"]]
        elif kind == "extra_forbidden":
            found.append((loc, unknown_key(loc), True))
        elif kind == "missing":
            found.append((loc, "this required key is missing", False))
        elif kind == CONFIG_ERROR:
            found.append((loc, item["msg"], False))
        else:
            message = _PLAIN_MESSAGES.get(kind, item["msg"].removeprefix("Value error, "))
            found.append((loc, f"{message}, got {describe_value(item['input'])}", False))
    return found
