"""Target lookup: a built-in name (targets/NAME.yaml) or a path to a YAML file."""

from __future__ import annotations

import difflib
from pathlib import Path

from edgeprune.config.loader import load_yaml_model
from edgeprune.config.target import Target
from edgeprune.errors import ConfigError
from edgeprune.paths import repo_dir


def targets_dir() -> Path:
    return repo_dir("targets")


def list_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def load_target(name_or_path: str, overrides: dict | None = None, flags: dict[str, str] | None = None) -> Target:
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} or path.exists()):
        path = targets_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = list_targets()
            close = difflib.get_close_matches(name_or_path, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(known)}"
            raise ConfigError(f"unknown target '{name_or_path}'", where="--target", fix=hint)
    return load_yaml_model(path, Target, overrides, flags)
