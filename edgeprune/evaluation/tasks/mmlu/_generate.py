"""Regenerate the 57 MMLU subject YAMLs from lm-eval's own (lm_eval/tasks/mmlu/default), keeping their
descriptions, tags and aliases and replacing only the dataset loading. Run: python _generate.py"""

from pathlib import Path

import yaml

import lm_eval

HERE = Path(__file__).resolve().parent
SRC = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
SUBFIELDS = ["medical_genetics", "professional_law", "philosophy", "college_mathematics",
             "high_school_physics", "machine_learning"]


def main() -> None:
    for src in sorted(SRC.glob("mmlu_*.yaml")):
        cfg = yaml.safe_load(src.read_text())
        subject = cfg["dataset_name"]
        out = {"include": "_default_template_yaml", "task": cfg["task"], "task_alias": cfg["task_alias"],
               "tag": cfg["tag"], "description": cfg["description"],
               "dataset_kwargs": {"data_files": {"test": f"@PREP@/mmlu/{subject}.test.jsonl",
                                                 "dev": f"@PREP@/mmlu/{subject}.dev.jsonl"}}}
        (HERE / src.name).write_text(yaml.safe_dump(out, sort_keys=False, width=200))
    for name in ("_mmlu.yaml", "_mmlu_humanities.yaml", "_mmlu_other.yaml", "_mmlu_social_sciences.yaml",
                 "_mmlu_stem.yaml"):
        (HERE / name).write_text((SRC / name).read_text())
    group = {"group": "mmlu_subfields", "group_alias": "mmlu (reference study's subfields)",
             "task": [f"mmlu_{s}" for s in SUBFIELDS],
             "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 1}}
    (HERE / "_mmlu_subfields.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


if __name__ == "__main__":
    main()
