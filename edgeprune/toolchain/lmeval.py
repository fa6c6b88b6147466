"""lm-eval, offline, on the task YAMLs shipped in edgeprune/evaluation/tasks.

The YAMLs are lm-eval's standard task definitions with only the dataset loading changed to local
JSONL files. They name the data folder as `@DATA@` (and `@PREP@` for MMLU, which is split per
subject here); `prepare_tasks` renders them into a cache folder with real paths, once per data folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path

from edgeprune.errors import ConfigError, DataError, ToolchainError
from edgeprune.paths import cache_dir, data_dir

TASKS_SRC = Path(__file__).resolve().parent.parent / "evaluation" / "tasks"
BASIC_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "lambada_openai",
               "openbookqa")
NEEDED_FILES = ("arc_easy_test.jsonl", "arc_challenge_test.jsonl", "piqa_validation.jsonl", "boolq_validation.jsonl",
                "winogrande_dev.jsonl", "lambada_openai_test.jsonl", "openbookqa_test.jsonl", "mmlu_dev.jsonl")


def offline_env() -> None:
    """Nothing here may reach the Hub: the data are local files, the models local paths."""
    for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _source_digest(data: Path) -> str:
    h = hashlib.sha256(str(data.resolve()).encode())
    for f in sorted(TASKS_SRC.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _split_mmlu(data: Path, out: Path) -> None:
    rows: dict[tuple[str, str], list[str]] = defaultdict(list)
    sources = [("test", p) for p in sorted(data.glob("mmlu_test.part*.jsonl"))] + [("dev", data / "mmlu_dev.jsonl")]
    if len(sources) < 2:
        raise DataError("MMLU test files (mmlu_test.part*.jsonl) not found", where=str(data),
                        fix="point --data-dir at a folder holding the shared MMLU files")
    for split, path in sources:
        for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: rows hold U+2028
            if line.strip():
                rows[(json.loads(line)["subject"], split)].append(line)
    out.mkdir(parents=True)
    for (subject, split), lines in rows.items():
        (out / f"{subject}.{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare_tasks(data: Path | None = None) -> Path:
    """Render the packaged YAMLs for `data` (default: the shared data folder); cached by content."""
    data = Path(data) if data else data_dir()
    missing = [f for f in NEEDED_FILES if not (data / f).is_file()]
    if missing:
        raise DataError(f"evaluation data missing: {', '.join(missing)}", where=str(data),
                        fix="give --data-dir a folder laid out like ../shared/data (see its README)")
    target = cache_dir() / "lmeval-tasks" / _source_digest(data)
    if (target / ".complete").is_file():
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(TASKS_SRC, tmp, ignore=shutil.ignore_patterns("__pycache__", "_generate.py"))
    _split_mmlu(data, tmp / "mmlu-data")
    for yml in list(tmp.rglob("*.yaml")) + list(tmp.rglob("*_yaml")):
        text = yml.read_text(encoding="utf-8")
        text = text.replace("@DATA@", str(data.resolve())).replace("@PREP@/mmlu", str(target / "mmlu-data"))
        yml.write_text(text, encoding="utf-8")
    (tmp / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def task_manager(data: Path | None = None):
    from lm_eval.tasks import TaskManager

    offline_env()
    # Only our YAMLs: lm-eval's built-ins would point at the Hub under the same names.
    return TaskManager(include_path=str(prepare_tasks(data)), include_defaults=False)


def check_task_names(names: list[str], manager) -> None:
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        hints = [difflib.get_close_matches(n, known, n=1) for n in unknown]
        hint = "; ".join(f"'{n}' -> '{h[0]}'?" for n, h in zip(unknown, hints) if h)
        raise ConfigError(f"unknown task(s): {', '.join(unknown)}" + (f" (did you mean: {hint})" if hint else ""),
                          where="--tasks", fix=f"choose from {', '.join(BASIC_TASKS)}, mmlu, mmlu_subfields, "
                                               "mmlu_<subject>")


BACKENDS = ("llama.cpp", "torch")


def model_for(model: Path, threads: int | None, ctx: int, backend: str = "llama.cpp", dtype: str = "bfloat16"):
    """An lm-eval LM. A .gguf: our llama.cpp adapter (the deployed runtime), or with backend 'torch' the
    same file's dequantized weights batched in PyTorch (lmeval_torch.py: ~10x faster on CPUs with
    bf16 units, same token ids). A HF folder: lm-eval's own 'hf' model."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'", where="--backend", fix=f"choose {' or '.join(BACKENDS)}")
    if model.suffix == ".gguf" and backend == "torch":
        from edgeprune.toolchain.lmeval_torch import TorchGGUFLM

        return TorchGGUFLM(model, n_ctx=ctx, threads=threads, dtype=dtype)
    if model.suffix == ".gguf":
        from edgeprune.toolchain.lmeval_gguf import GGUFLM

        return GGUFLM(model, n_ctx=ctx, threads=threads)
    from lm_eval.models.huggingface import HFLM

    import torch

    if threads:
        torch.set_num_threads(threads)
    return HFLM(pretrained=str(model), dtype="float32" if backend == "llama.cpp" else dtype, device="cpu",
                batch_size=8, max_length=ctx)


def run_tasks(model: Path, tasks: list[str], limit: int | None, data: Path | None = None,
              threads: int | None = None, ctx: int = 2048, backend: str = "llama.cpp",
              dtype: str = "bfloat16", lm=None) -> dict:
    """Scores, per-item correctness (for paired comparison) and the lm-eval config of each task.
    `lm`: an already loaded model_for(...) to reuse across calls (loading a GGUF into torch takes ~25 s)."""
    from lm_eval import simple_evaluate

    manager = task_manager(data)
    check_task_names(tasks, manager)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    try:
        out = simple_evaluate(model=lm or model_for(model, threads, ctx, backend, dtype), tasks=tasks,
                              task_manager=manager, limit=limit, num_fewshot=0, log_samples=True, bootstrap_iters=0,
                              random_seed=0)
    except (FileNotFoundError, ValueError) as exc:
        raise ToolchainError(f"lm-eval failed: {str(exc).splitlines()[0][:200]}", where=",".join(tasks),
                             fix="check the data files and task names") from None
    scorer = {"backend": backend if model.suffix == ".gguf" else "hf",
              "dtype": dtype if backend == "torch" else "float32"}
    return summarize(out) | {"scorer": scorer}


def summarize(out: dict) -> dict:
    scores = {}
    for name, res in out["results"].items():
        scores[name] = {k.split(",")[0]: v for k, v in res.items()
                        if "," in k and "stderr" not in k and isinstance(v, (int, float))}
    items = {}
    for name, samples in out.get("samples", {}).items():
        items[name] = {str(s["doc_id"]): {m: float(s[m]) for m in ("acc", "acc_norm") if m in s}
                       for s in samples}
    n = {name: v.get("effective", v.get("original")) for name, v in out.get("n-samples", {}).items()}
    return {"scores": scores, "items": items, "n": n,
            "versions": {k: v for k, v in out.get("versions", {}).items()},
            "higher_is_better": out.get("higher_is_better", {})}
