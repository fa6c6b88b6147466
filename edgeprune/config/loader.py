"""YAML -> strict pydantic model, with errors that name the file and key path."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgeprune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    got = first.get("input")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        fix = "remove it or check its spelling against the documented keys"
    else:
        fix = "correct the value"
    what = f"{loc}: {msg}, got {got!r}" if first["type"] != "extra_forbidden" else f"{loc}: {msg}"
    return ConfigError(what, where=source, fix=fix)


def load_yaml_model(path: Path, model: type[M], overrides: dict | None = None) -> M:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}", where=str(path), fix="give an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid YAML ({type(exc).__name__})", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", where=str(path), fix="write key: value pairs")
    return validate_dict(data, model, str(path), overrides)


def validate_dict(data: dict, model: type[M], source: str, overrides: dict | None = None) -> M:
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise describe_validation_error(err, source) from None


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
