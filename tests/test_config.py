"""Targets and recipes: strict validation with the file and key path in the message."""

import pytest

from edgeprune.config import Recipe, Target, load_yaml_model
from edgeprune.errors import ConfigError
from edgeprune.targets import list_targets, load_target


def test_builtin_targets_load():
    assert {"host", "arm16g", "rpi5-8g"} <= set(list_targets())
    t = load_target("arm16g")
    assert t.budget.latency_s == 2.0 and t.budget.answer_tokens == 100 and t.device.ram_gb == 16


def test_overrides_beat_the_yaml():
    t = load_target("arm16g", {"budget.latency_s": 1.0, "budget.answer_tokens": 50})
    assert t.budget.latency_s == 1.0 and t.budget.answer_tokens == 50


def write(tmp_path, text):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


BASE = "version: 1\nname: x\ndevice: {ram_gb: 16, mem_bandwidth_gbs: 40}\n"


def test_unknown_key_names_the_path(tmp_path):
    p = write(tmp_path, BASE + "budget: {latency_s: 2, latncy: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_model(p, Target)
    assert f"{p}: budget.latncy: unknown key" in str(err.value)


def test_wrong_type_names_the_path_and_value(tmp_path):
    p = write(tmp_path, BASE + "budget: {latency_s: fast}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_model(p, Target)
    msg = str(err.value)
    assert "budget.latency_s" in msg and "'fast'" in msg


def test_negative_budget_and_bad_ratio_rejected(tmp_path):
    with pytest.raises(ConfigError, match="budget.latency_s"):
        load_yaml_model(write(tmp_path, BASE + "budget: {latency_s: -1}\n"), Target)
    with pytest.raises(ConfigError, match="budget.max_ppl_ratio"):
        load_yaml_model(write(tmp_path, BASE + "budget: {max_ppl_ratio: 0.5}\n"), Target)


def test_wrong_version_rejected(tmp_path):
    with pytest.raises(ConfigError, match="version"):
        load_yaml_model(write(tmp_path, BASE.replace("version: 1", "version: 2") + "budget: {}\n"), Target)


def test_default_recipe_file_matches_model_defaults():
    from edgeprune.paths import repo_dir

    r = load_yaml_model(repo_dir("recipes") / "default.yaml", Recipe)
    assert r.depth.method == "block-influence" and r.export.quant == "Q4_K_M"
    from edgeprune.config.loader import validate_dict

    with pytest.raises(ConfigError, match="export.quant"):
        validate_dict({"export": {"quant": "Q9_X"}}, Recipe, "recipe.yaml")
