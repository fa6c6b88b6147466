"""One strict base model for every config section and one recipe loader."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pydantic
import pytest

import edgeprune
import edgeprune.config
from edgeprune.config.loader import load_recipe, recipe_path
from edgeprune.config.strict import Strict
from edgeprune.errors import ConfigError

ROOT = Path(edgeprune.__file__).parent


def config_models() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(edgeprune.config.__path__):
        module = importlib.import_module(f"edgeprune.config.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if issubclass(c, pydantic.BaseModel) and c.__module__ == module.__name__]
    return found


def test_every_config_model_is_strict():
    models = config_models()
    assert {"Recipe", "Target", "Recovery", "Evaluate", "Export"} <= {m.__name__ for m in models}
    loose = [m.__name__ for m in models if not issubclass(m, Strict) or m.model_config.get("extra") != "forbid"]
    assert not loose, f"derive these from edgeprune.config.strict.Strict: {loose}"


def test_strict_is_defined_once():
    """Mutant caught: a module growing its own `class Strict(BaseModel)` again."""
    own = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
           if 'extra="forbid"' in p.read_text(encoding="utf-8") and p.name != "strict.py"]
    assert not own, f"use edgeprune.config.strict.Strict instead of a model_config of their own: {own}"


def test_yaml_configs_are_read_by_the_loader_only():
    readers = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if "yaml.safe_load" in p.read_text(encoding="utf-8")}
    # the model card's front matter and the MMLU task generator are not configs
    assert readers == {"config/loader.py", "report/card.py", "evaluation/tasks/mmlu/_generate.py"}


def test_recipe_by_name_is_the_file(tmp_path):
    assert recipe_path("default").name == "default.yaml"
    assert load_recipe("default") == load_recipe(str(recipe_path("default")))
    with pytest.raises(ConfigError, match="unknown recipe 'defualt'") as err:
        load_recipe("defualt")
    assert err.value.where == "--recipe"
    bad = tmp_path / "r.yaml"
    bad.write_text("version: 1\ncalibration: {samples: 4, sampels: 8}\n")
    with pytest.raises(ConfigError, match="calibration.sampels: unknown key"):
        load_recipe(str(bad))


def test_recover_reads_its_section_through_the_recipe_loader(tmp_path):
    from edgeprune.stages.recover import load_recovery

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrecovery: {train: {steps: 3, lr: 0.001}}\n")
    assert load_recovery(str(path), {}).train.lr == load_recipe(str(path)).recovery.train.lr == 0.001
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recovery("nope", {})
