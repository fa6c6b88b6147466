"""The whole pipeline at a real model size, stage by stage, with each stage's wall time and peak memory.

    python bench/scale.py --shape llama-3.2-1b --work /tmp/scale --out bench/out/scale/llama-3.2-1b.json
    python bench/scale.py --shape llama-3.1-8b --work /tmp/scale --out bench/out/scale/llama-3.1-8b.json

Each stage is the CLI command a user runs, in its own process: synth -> prune (depth, streamed) ->
prune (heads) -> prune (FFN) -> export Q4_K_M (imatrix, F16 conversion, verify, quantize) -> bench.
Per stage: wall seconds; peak RSS from the kernel (wait4's ru_maxrss: the largest of the stage's
process and the children it waited for, e.g. the converter); and, sampled every 0.2 s over the
process tree, the peak of anonymous memory (what a device must really hold) and of file-backed
pages (mmapped weights, which the kernel can drop and re-read). RSS / model bytes divides by the
bytes of the stage's input weights.

Every intermediate folder, and the step store the stage imported its input into, is deleted once
the next stage has read it (the 8B run would otherwise need ~90 GB of disk); its size is recorded
first. Calibration is a small slice of the shipped C4
sample (--calib-windows windows of 256 tokens) so that the streamed fp32 passes stay minutes at 8B.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchout import write_json

# Layers removed, KV-group fraction removed, FFN fraction removed. The reference's 8B case study cut
# -8 layers and -20 % heads; transformers' LlamaConfig wants hidden_size to be a multiple of the
# query-head count, so from 32 heads (hidden 2048 or 4096) the next valid count is 16: half the groups.
SHAPE_CUTS = {"llama-3.2-1b": (4, 0.5, 0.2), "llama-3.2-3b": (7, 0.5, 0.2), "llama-3.1-8b": (8, 0.5, 0.2)}


def _status(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of one process in bytes ({} once it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


def run_stage(name: str, argv: list[str], logs: Path, input_bytes: int) -> dict:
    """Run one stage's command to the end; its JSON stdout is parsed into `result`."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "EDGEPRUNE_STORE": str(logs.parent / "store")}
    start = time.perf_counter()
    with open(out, "w") as so, open(err, "w") as se:
        proc = subprocess.Popen(argv, stdout=so, stderr=se, env=env)
    peak = {"anon": 0, "file": 0, "tree_rss": 0}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        procs = [_status(p) for p in _tree(proc.pid)]
        peak["anon"] = max(peak["anon"], *(s.get("RssAnon", 0) for s in procs))
        peak["file"] = max(peak["file"], *(s.get("RssFile", 0) for s in procs))
        peak["tree_rss"] = max(peak["tree_rss"], sum(s.get("VmRSS", 0) for s in procs))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}): {err.read_text().strip().splitlines()[-1:]}")
    text = out.read_text()
    result = json.loads(text[text.index("{"):]) if "{" in text else {}
    rss = usage.ru_maxrss * 1024
    return {"stage": name, "argv": argv[2:], "wall_s": round(wall, 1), "peak_rss_bytes": rss,
            "peak_anon_bytes": peak["anon"], "peak_file_bytes": peak["file"], "peak_tree_rss_bytes": peak["tree_rss"],
            "input_bytes": input_bytes, "rss_per_model_byte": round(rss / input_bytes, 3) if input_bytes else None,
            "result": result}


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def calib_file(path: Path, windows: int) -> Path:
    """About `windows` x 256 tokens of the shipped C4 sample (~4 characters a token, with margin)."""
    from edgeprune.data.texts import calibration_texts

    texts, chars = [], 0
    for t in calibration_texts(None, 400, 0):
        texts.append(t)
        chars += len(t)
        if chars > windows * 256 * 4.6:
            break
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPE_CUTS))
    ap.add_argument("--work", type=Path, required=True, help="scratch folder on a disk with room for the model x3")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--bench-tokens", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep every intermediate folder")
    ap.add_argument("--resume", action="store_true", help="go on after the last stage a killed or failed run finished")
    ap.add_argument("--no-width-stream", dest="width_stream", action="store_false",
                    help="width pruning loads the model (fp32) instead of streaming it")
    args = ap.parse_args()
    remove, heads, ffn = SHAPE_CUTS[args.shape]
    work = args.work / args.shape
    done = work / "stages.json"  # each finished stage's record: --resume goes on after the last one
    saved = {s["stage"]: s for s in json.loads(done.read_text())} if args.resume and done.is_file() else {}
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    calib = calib_file(work / "calib.jsonl", args.calib_windows)
    ep = [sys.executable, "-m", "edgeprune"]
    stages, sizes = [], {}

    def stage(name: str, argv: list[str], src: Path | None, dst: Path) -> None:
        if name in saved:
            stages.append(saved[name])
            sizes[name] = saved[name]["output_bytes"]
            return
        rec = run_stage(name, ep + argv, logs, weights_bytes(src) if src else 0)
        sizes[name] = weights_bytes(dst) if dst.is_dir() else dst.stat().st_size
        rec["output_bytes"] = sizes[name]
        stages.append(rec)
        done.write_text(json.dumps(stages))
        print(f"{name:12} {rec['wall_s']:8.1f} s  peak RSS {rec['peak_rss_bytes'] / 1e9:6.2f} GB  "
              f"anon {rec['peak_anon_bytes'] / 1e9:6.2f} GB  out {sizes[name] / 1e9:6.2f} GB", flush=True)
        if src is not None and not args.keep:
            shutil.rmtree(src)
        shutil.rmtree(work / "store", ignore_errors=True)  # the stage's imported copy and steps

    synth, depth, hd, ff = (work / n for n in ("synth", "depth", "heads", "ffn"))
    stage("synth", ["synth", "--shape", args.shape, "--out", str(synth)], None, synth)
    stage("prune-depth", ["prune", "--model", str(synth), "--method", "block-influence", "--remove", str(remove),
                          "--stream", "--calib", str(calib), "--out", str(depth)], synth, depth)
    wstream = ["--stream"] if args.width_stream else ["--no-stream"]
    stage("prune-heads", ["prune", "--model", str(depth), "--method", "heads", "--fraction", str(heads),
                          *wstream, "--calib", str(calib), "--out", str(hd)], depth, hd)
    stage("prune-ffn", ["prune", "--model", str(hd), "--method", "ffn", "--fraction", str(ffn),
                        *wstream, "--calib", str(calib), "--out", str(ff)], hd, ff)
    gguf = work / f"model.{args.quant}.gguf"
    # --kld-max: the verify gate compares quantized and F16 next-token distributions; random weights
    # carry no signal for it to protect (the 8B synth's Q4_K_M measured 0.62 nats against the 0.5 default)
    stage("export", ["export", "--model", str(ff), "--quant", args.quant, "--calib", str(calib), "--out", str(gguf),
                     "--kld-max", "5"], ff, gguf)
    stage("bench", ["bench", "--model", str(gguf), "--prompt-tokens", "64", "--tokens", str(args.bench_tokens),
                    "--reps", "2", "--warmup", "1"], None, gguf)
    stages[-1]["input_bytes"] = sizes["export"]
    stages[-1]["rss_per_model_byte"] = round(stages[-1]["peak_rss_bytes"] / sizes["export"], 3)
    peak = max(stages, key=lambda s: s["peak_rss_bytes"])
    data = {"shape": args.shape, "cuts": {"layers_removed": remove, "heads_fraction": heads, "ffn_fraction": ffn},
            "quant": args.quant, "calib_windows": args.calib_windows, "machine": _machine(), "stages": stages,
            "peak_stage": peak["stage"], "peak_rss_bytes": peak["peak_rss_bytes"],
            "command": "python bench/scale.py " + " ".join(sys.argv[1:])}
    write_json(args.out, data)
    print(f"peak: {peak['stage']} {peak['peak_rss_bytes'] / 1e9:.2f} GB")


def _machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    main()


SIZES = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")


def _runs(folder: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("llama-*.json"))]
    return sorted(runs, key=lambda r: SIZES.index(r["shape"]))


def table(folder: Path) -> str:
    """Stage x size for every bench/out/scale/<shape>.json (python bench/tables.py scale)."""
    gb = lambda n: f"{n / 1e9:.2f}"  # noqa: E731
    lines = ["| shape | stage | wall s | peak RSS GB | peak anon GB | peak file-backed GB | RSS / input bytes "
             "| input GB | output GB |", "|" + "---|" * 9]
    for run in _runs(folder):
        for s in run["stages"]:
            ratio = f"{s['rss_per_model_byte']:.2f}" if s.get("rss_per_model_byte") is not None else ""
            lines.append(f"| {run['shape']} | {s['stage']} | {s['wall_s']:.0f} | {gb(s['peak_rss_bytes'])} "
                         f"| {gb(s['peak_anon_bytes'])} | {gb(s['peak_file_bytes'])} | {ratio} "
                         f"| {gb(s['input_bytes']) if s['input_bytes'] else ''} | {gb(s['output_bytes'])} |")
    return "\n".join(lines) + "\n"


def phases_table(folder: Path) -> str:
    """Inside export: each phase's wall time and the peak RSS reached by its end."""
    lines = ["| shape | phase | wall s | peak RSS by its end GB | converter peak GB |", "|" + "---|" * 5]
    for run in _runs(folder):
        export = next(s for s in run["stages"] if s["stage"] == "export")
        for name, ph in export["result"]["verify"]["phases"].items():
            lines.append(f"| {run['shape']} | {name} | {ph['s']:.0f} | {ph['peak_rss_mb'] / 1e3:.2f} "
                         f"| {ph['children_peak_rss_mb'] / 1e3:.2f} |")
    return "\n".join(lines) + "\n"
