"""Pruning-methods benchmark on SmolLM2-135M-Instruct (HF model, float32, CPU).

Every job runs in its own subprocess (so peak RSS is per job): load the model, run the scoring /
pruning pass (wall time and peak RSS of that pass alone: VmHWM is reset through
/proc/self/clear_refs just before it), then WikiText-2 test perplexity of the pruned HF model.

Perplexity protocol: wiki.test.raw tokenized (first 400k characters, no BOS), cut into
non-overlapping windows of CTX tokens, the first WINDOWS windows scored; every token after the
first of a window is predicted from its in-window prefix; ppl = exp(mean NLL).
Results go to bench/out/methods.jsonl (one line per result, a rerun skips finished jobs),
bench/out/methods.json, bench/out/methods.png and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
PARTIAL = OUT / "methods.jsonl"
# Standard protocol: non-overlapping 2048-token windows (SmolLM2's training context), the first
# WINDOWS of them; WINDOWS is sized so every row fits a 2-core machine shared with other jobs.
CTX, WINDOWS = 2048, 2
CALIB = dict(samples=8, seq_len=256)             # every scoring pass except the two below: 2048 tokens
CALIB_TAYLOR = dict(samples=4, seq_len=256)      # forward + backward: 1024 tokens
CALIB_GREEDY = dict(samples=2, seq_len=64)       # ~L^2/2 partial forward passes: 128 tokens
CALIB_8K = dict(samples=16, seq_len=512)         # the sparsity calibration-size rows: 8,192 tokens
CALIB_32K = dict(samples=64, seq_len=512)        # and 32,768 tokens (SparseGPT paper: 128 x 2048)
DEPTH_KS = (2, 4, 6, 8)

JOBS = {
    "baseline": ("none", {}),
    **{f"depth:{m}": ("depth", {"method": m}) for m in ("block-influence", "angular", "attention-norm",
                                                          "ppl-greedy")},
    "width:heads-1/3-groups": ("width", {"method": "heads", "fraction": 1 / 3}),
    "width:heads-1/3-groups-taylor": ("width", {"method": "heads", "fraction": 1 / 3, "importance": "taylor"}),
    "width:ffn-20%": ("width", {"method": "ffn", "fraction": 0.2}),
    "width:ffn-40%": ("width", {"method": "ffn", "fraction": 0.4}),
    "width:taylor-20%": ("width", {"method": "taylor", "fraction": 0.2}),
    # separate the importance from the structure: channels alone by Taylor, coupled cut by norms
    "width:ffn-20%-taylor": ("width", {"method": "ffn", "fraction": 0.2, "importance": "taylor"}),
    "width:taylor-20%-by-activation": ("width", {"method": "taylor", "fraction": 0.2, "importance": "activation"}),
    **{f"sparsity:{m}-{t}": ("sparsity", {"method": m, "target": t}) for m in ("magnitude", "wanda", "sparsegpt")
       for t in ("50%", "2:4")},
    # calibration-size study: SparseGPT's Hessian from 2,048 tokens overfits (bench/methods_checks.py)
    **{f"sparsity:{m}-{t}-calib8k": ("sparsity", {"method": m, "target": t, "calib": CALIB_8K})
       for t in ("50%", "2:4") for m in ("wanda", "sparsegpt")},
    **{f"sparsity:{m}-50%-calib32k": ("sparsity", {"method": m, "target": "50%", "calib": CALIB_32K})
       for m in ("wanda", "sparsegpt")},
    # the streaming question: whole-process peak RSS of a BI scoring pass, model in memory vs streamed
    "memory:in-memory": ("memory", {"method": "block-influence", "stream": False}),
    "memory:streamed": ("memory", {"method": "block-influence", "stream": True}),
}


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


class Pass:
    """Wall time and peak RSS of one block; peak RSS counts from the reset, model included."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        self.rss_before = _status("VmRSS:")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.t0
        self.peak_rss = _status("VmHWM:")

    def record(self) -> dict:
        return {"wall_s": round(self.wall_s, 1), "rss_before_mb": round(self.rss_before / 2**20),
                "peak_rss_mb": round(self.peak_rss / 2**20), "load_avg_1m": os.getloadavg()[0]}


def hf_ppl(model, ids: list[int]) -> float:
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for w in range(WINDOWS):
            chunk = torch.tensor([ids[w * CTX:(w + 1) * CTX]])
            logits = model(input_ids=chunk, use_cache=False).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
            count += CTX - 1
    return math.exp(nll / count)


def eval_ids(tok) -> list[int]:
    from edgeprune.data import eval_text

    ids = tok(eval_text()[:400_000], add_special_tokens=False)["input_ids"]
    assert len(ids) >= CTX * WINDOWS
    return ids


def layer_params(model) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


def run_job(name: str, hf_dir: Path) -> list[dict]:
    import torch

    from edgeprune.config.recipe import Calibration
    from edgeprune.stages.calib import calibration_windows
    from edgeprune.toolchain.hf import load_model

    torch.manual_seed(0)
    family, cfg = JOBS[name]
    if family == "memory":
        return memory_job(name, hf_dir, cfg)
    model, tok = load_model(hf_dir)
    ids = eval_ids(tok)
    base_params = layer_params(model)
    if family == "none":
        return [{"job": name, "family": "baseline", "label": "unpruned", "removed": 0.0, "ppl": hf_ppl(model, ids)}]
    gradients = cfg.get("importance", "taylor" if cfg["method"] == "taylor" else None) == "taylor"
    calib = cfg.get("calib") or (CALIB_GREEDY if cfg["method"] == "ppl-greedy" else CALIB_TAYLOR if gradients else CALIB)
    windows = calibration_windows(tok, Calibration(**calib))
    common = {"job": name, "family": family, "method": cfg["method"], "calib_tokens": windows.numel()}
    if family == "depth":
        return depth_job(model, windows, cfg["method"], hf_dir, ids, common)
    if family == "width":
        from edgeprune.stages.width import prune_width

        with Pass() as p:
            info = prune_width(model, windows, cfg["method"], cfg["fraction"], importance=cfg.get("importance"))
        shape = {k: info[k] for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size")}
        return [{**common, "label": name.split(":", 1)[1], "removed": 1 - layer_params(model) / base_params,
                 "scoring": p.record(), "shape": shape, "ppl": hf_ppl(model, ids)}]
    from edgeprune.methods.sparsity import parse_nm
    from edgeprune.stages.sparsify import sparsify

    nm = parse_nm(cfg["target"]) if ":" in cfg["target"] else None
    with Pass() as p:
        rep = sparsify(model, windows, cfg["method"], 0.5, nm)
    return [{**common, "label": name.split(":", 1)[1], "removed": rep["sparsity"], "scoring": p.record(),
             "ppl": hf_ppl(model, ids)}]


def depth_job(model, windows, method: str, hf_dir: Path, ids: list[int], common: dict) -> list[dict]:
    from edgeprune import registry
    from edgeprune.stages.score import depth_stats
    from edgeprune.surgery.layers import remove_layers
    from edgeprune.toolchain.hf import load_model

    with Pass() as p:
        stats = depth_stats(model, windows, method, max_remove=max(DEPTH_KS))
    del model
    rows = []
    for k in DEPTH_KS:
        remove = registry.get("depth", method).select(stats, k)
        pruned, _ = load_model(hf_dir)
        remove_layers(pruned, remove)
        rows.append({**common, "label": f"{method} -{k}", "k": k, "removed_layers": remove, "removed": k / 30,
                     "scoring": p.record(), "ppl": hf_ppl(pruned, ids)})
    return rows


def memory_job(name: str, hf_dir: Path, cfg: dict) -> list[dict]:
    """Peak RSS of the whole process (imports + model or shards + calibration + scoring); the
    VmHWM is not reset here, on purpose."""
    import torch
    from transformers import AutoTokenizer

    from edgeprune.config.recipe import Calibration
    from edgeprune.stages.calib import calibration_windows

    rss_imports = _status("VmRSS:")
    windows = calibration_windows(AutoTokenizer.from_pretrained(hf_dir), Calibration(**CALIB))
    t0 = time.perf_counter()
    if cfg["stream"]:
        from edgeprune.streaming.stream import streamed_depth_stats

        stats = streamed_depth_stats(hf_dir, windows, cfg["method"])
    else:
        from edgeprune.stages.score import depth_stats
        from edgeprune.toolchain.hf import load_model

        stats = depth_stats(load_model(hf_dir)[0], windows, cfg["method"])
    weights = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    return [{"job": name, "family": "memory", "label": "streamed" if cfg["stream"] else "in-memory",
             "method": cfg["method"], "removed": 0.0, "ppl": float("nan"), "calib_tokens": windows.numel(),
             "wall_s": round(time.perf_counter() - t0, 1), "rss_after_imports_mb": round(rss_imports / 2**20),
             "peak_rss_mb": round(_status("VmHWM:") / 2**20), "model_bytes_mb": round(weights / 2**20),
             "bi": [round(float(x), 6) for x in stats]}]


def _selects(pattern: str, name: str) -> bool:
    """Exact job name, or a family prefix ending in ':' (e.g. 'depth:')."""
    return name == pattern or (pattern.endswith(":") and name.startswith(pattern))


def done_jobs() -> set[str]:
    if not PARTIAL.is_file():
        return set()
    return {json.loads(line)["job"] for line in PARTIAL.read_text().splitlines() if line.strip()}


def ensure_hf(path: Path) -> Path:
    """The default GGUF dequantized once to a float32 HF folder (loading it takes seconds)."""
    if not (path / "config.json").is_file():
        from edgeprune.toolchain.hf import default_model_path, load_model, save_model

        model, tok = load_model(default_model_path())
        save_model(model, tok, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", help="run one job in this process (internal)")
    ap.add_argument("--only", nargs="*", help="job names or family prefixes like 'depth:' (default: all)")
    ap.add_argument("--hf", default=str(OUT / "smollm2-hf"), help="cached float32 HF copy of SmolLM2")
    ap.add_argument("--report", action="store_true", help="only aggregate finished jobs")
    ap.add_argument("--rerun", action="store_true", help="run the --only jobs even if finished (last row wins)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.job:
        rows = run_job(args.job, Path(args.hf))
        with open(PARTIAL, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        return
    if not args.report:
        ensure_hf(Path(args.hf))
        for name in JOBS:
            if (name in done_jobs() and not args.rerun) or (args.only and not any(_selects(o, name) for o in args.only)):
                continue
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, __file__, "--job", name, "--hf", args.hf], check=False,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    from bench_methods_report import report  # noqa: E402  (same folder)

    report(PARTIAL, OUT, {"ctx": CTX, "windows": WINDOWS, "scored_tokens": WINDOWS * (CTX - 1),
                          "text": "wiki.test.raw, first 400k characters, no BOS, non-overlapping windows"})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
