"""Reading a monitoring threshold file (``drift.json``, ``quality.json`` or a user's copy):
every problem is one error naming the file and, for a bad value, the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Config = TypeVar("Config", bound=BaseModel)


def field_problem(problem: Any) -> str:
    """``field.path: message`` of one pydantic error (dict keys appear as themselves)."""
    where = ".".join(str(part) for part in problem["loc"] if part not in ("", "[key]"))
    return f"{where or '(top level)'}: {problem['msg'].removeprefix('Value error, ')}"


def load_json_config(
    source: Path, model: type[Config], what: str, error: type[Exception]
) -> Config:
    """``model`` validated from the JSON file ``source``; ``error(message)`` otherwise,
    the message starting with ``what`` (e.g. "drift config") and the file."""
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as missing:
        raise error(f"{what} {source}: no such file") from missing
    except (OSError, UnicodeDecodeError) as unreadable:
        raise error(f"{what} {source}: cannot be read ({unreadable})") from unreadable
    try:
        data = json.loads(text)
    except json.JSONDecodeError as bad:
        raise error(
            f"{what} {source}: not valid JSON (line {bad.lineno}, column {bad.colno}: {bad.msg})"
        ) from bad
    try:
        return model.model_validate(data)
    except ValidationError as invalid:
        problems = "; ".join(field_problem(p) for p in invalid.errors())
        raise error(f"{what} {source}: {problems}") from invalid
