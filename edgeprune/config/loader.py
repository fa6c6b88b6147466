"""YAML -> strict pydantic model, with errors that name the file and key path."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgeprune.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


UNITS = {"_s": "seconds", "_gb": "GB", "_tps": "tokens per second", "_tokens": "tokens"}


def describe_validation_error(err: ValidationError, source: str, flags: dict[str, str] | None = None) -> ConfigError:
    """The first error as one line. `flags` maps an overridden key path (budget.latency_s) to
    the command-line flag that set it (--latency), so the message blames the flag, not the file."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    got = first.get("input")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        fix = "remove it or check its spelling against the documented keys"
    else:
        fix = _unit_hint(loc, got, first["type"]) or "correct the value"
    if first["type"] == "extra_forbidden":
        what = f"{loc}: {msg}"
    elif first["type"] == "value_error":  # a cross-field check: its message names the keys
        what = f"{loc}: {msg.removeprefix('Value error, ')}" if first["loc"] else msg.removeprefix("Value error, ")
        # a model-level check sees the whole mapping; a field's own check sees its value
        fix = "make the values consistent" if isinstance(got, dict) else "correct the value"
    else:
        what = f"{loc}: {msg}, got {got!r}"
    blamed = _blamed_flags(loc, flags or {}, msg if first["type"] == "value_error" else None)
    if blamed:
        key, flag = blamed[0]
        if len(blamed) > 1 or key != loc and first["type"] == "value_error":  # a cross-field check on flags
            flag = " with ".join(f for _, f in blamed)
            return ConfigError(msg.removeprefix("Value error, "), where=flag,
                               fix=f"give one of {' / '.join(f for _, f in blamed)}" if len(blamed) > 1
                               else f"correct the value of {flag}")
        what = f"{msg}, got {got!r} (the flag overrides {key} of {Path(source).name})"
        return ConfigError(what, where=flag, fix=_unit_hint(loc, got, first["type"])
                           or f"correct the value of {flag}")
    return ConfigError(what, where=source, fix=fix)


def _blamed_flags(loc: str, flags: dict[str, str], cross_field_msg: str | None) -> list[tuple[str, str]]:
    """The flags an error at `loc` is about: the one that set `loc` or a key above it (search.quants
    for search.quants.0); for a cross-field check at `loc` (budget), the flags that set a key under it
    which the check's message names (latency_s, latency_fraction)."""
    above = [(k, f) for k, f in flags.items() if loc == k or loc.startswith(k + ".")]
    if above:
        return above[:1]
    if not (cross_field_msg and loc):
        return []
    return [(k, f) for k, f in flags.items() if k.startswith(loc + ".") and k.rsplit(".", 1)[-1] in cross_field_msg]


def _unit_hint(loc: str, got, err_type: str) -> str | None:
    """Wrong units: a string like "2s" where a plain number is expected, or seconds that look
    like milliseconds. Says the unit the key is in."""
    unit = next((u for suffix, u in UNITS.items() if loc.endswith(suffix)), None)
    if unit and isinstance(got, str):
        return f"write a plain number in {unit} (e.g. {loc.rsplit('.', 1)[-1]}: 2.0), without a unit suffix"
    if unit == "seconds" and err_type == "less_than_equal" and isinstance(got, (int, float)):
        return f"the unit is seconds; if {got} was meant as milliseconds, write {got / 1000:g}"
    return None


def load_yaml_model(path: Path, model: type[M], overrides: dict | None = None,
                    flags: dict[str, str] | None = None) -> M:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}", where=str(path), fix="give an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid YAML ({type(exc).__name__})", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", where=str(path), fix="write key: value pairs")
    return validate_dict(data, model, str(path), overrides, flags)


def validate_dict(data: dict, model: type[M], source: str, overrides: dict | None = None,
                  flags: dict[str, str] | None = None) -> M:
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    flags = {k: v for k, v in (flags or {}).items() if k in (overrides or {})}  # only flags actually given
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise describe_validation_error(err, source, flags) from None


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (recipes/NAME.yaml) or a path to a YAML file."""
    from edgeprune.paths import repo_dir

    path = Path(name_or_path)
    if path.suffix:
        return path
    path = repo_dir("recipes") / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in repo_dir("recipes").glob("*.yaml"))
        raise ConfigError(f"unknown recipe '{name_or_path}'", where="--recipe", fix=f"choose one of {', '.join(known)}")
    return path


def load_recipe(name_or_path: str, overrides: dict | None = None, flags: dict[str, str] | None = None):
    """The one recipe loader (plan, predict, recover): a name or a path, overrides on top, errors
    naming the file, key path and the flag that set a value."""
    from edgeprune.config.recipe import Recipe

    return load_yaml_model(recipe_path(name_or_path), Recipe, overrides, flags)
