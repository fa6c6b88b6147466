"""The cost model against DRAM-bound decode: predicted vs measured tok/s of pruned 1B-shaped models.

    python bench/scale_cost.py --work /tmp/scale-cost --out bench/out/scale/cost-llama-3.2-1b.json

A 1B model's Q4_K_M (~0.8 GB) does not fit this CPU's 300 MB L3, so its decode reads DRAM, as an
edge device's does. The run, on the `host` target with no cache eviction:
  1. `edgeprune synth --shape llama-3.2-1b`, then candidates made with the CLI: the unpruned model
     at Q4_K_M (the reference), Q4_0 and Q3_K_M, -4 layers at Q4_K_M, -4 layers with -20 % FFN at Q4_K_M
     (6,560 channels: ffn_down falls back to Q5_0 / Q8_0) and with -18.75 % (6,656, a multiple of 256),
     and -4 layers with half the KV groups and -20 % FFN at Q3_K_M (streamed prunes, no imatrix:
     it changes no byte count and no speed).
  2. Each candidate benchmarked paired with the reference in one process (alternating every 10
     decoded tokens; devices/bench_worker.run_paired), so both see the same minute.
  3. Predictions from the cost model (targets/costmodel.py) three ways:
     - prior: the host target's datasheet numbers and the prior efficiencies;
     - per-model: calibrated on this model's reference alone, measured in the candidate's own
       paired run (the planner's situation after it measured its baseline);
     - per-model per-type: on the reference and the unpruned model at the candidate's quant type
       (a plan that measures the quant-only front first has it; the unpruned models of other
       types are what calibrates it, so they get no such prediction);
     - leave-one-out: calibrated on the reference and every other candidate, not this one;
     - per tensor type: on the reference and pure-type probes of the unpruned model (every weight
       of one ggml type: Q4_K, Q6_K, Q5_0, Q8_0, Q3_K, Q4_0, the types the candidates' files are
       made of), one decode efficiency per tensor type (calibration.fit_per_tensor_type). No
       candidate is in this fit, so each is predicted from what a plan could measure before it
       prunes anything.
Every measurement is paired with the reference; the probes enter the fit at their paired ratio
times the reference's speed in the predicted candidate's own run, so all samples share its minute.
Errors are predicted / measured - 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchout import write_json

from edgeprune.devices.runners import BenchSpec, run_local
from edgeprune.targets import load_target
from edgeprune.targets.calibration import factors_dict, fit, sample_from
from edgeprune.targets.costmodel import Candidate, DeviceSpec, Factors, features, predict
from edgeprune.targets.gguf_size import ModelShape

# name: (layers removed, KV-group fraction removed, FFN fraction removed, quant)
CANDIDATES = {"full Q4_K_M": (0, 0, 0, "Q4_K_M"), "full Q4_0": (0, 0, 0, "Q4_0"), "full Q3_K_M": (0, 0, 0, "Q3_K_M"),
              "-4L Q4_K_M": (4, 0, 0, "Q4_K_M"), "-4L ffn-20% Q4_K_M": (4, 0, 0.2, "Q4_K_M"),
              "-4L ffn-18.75% Q4_K_M": (4, 0, 0.1875, "Q4_K_M"),  # 6,656 channels: on the 256 grid
              "-4L kv-50% ffn-20% Q3_K_M": (4, 0.5, 0.2, "Q3_K_M")}
REFERENCE = "full Q4_K_M"
# the ggml types the candidates' decode bytes are made of (a 6,560-wide FFN sends ffn_down to the
# Q5_0 / Q8_0 fallbacks); Q5_K, 2 % of the Q3_K_M bytes, reads at the device-wide efficiency
PROBES = ("Q4_K", "Q6_K", "Q5_0", "Q8_0", "Q3_K", "Q4_0")


def edgeprune(*args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"edgeprune {args[0]} failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout[res.stdout.index("{"):])


def checkpoint(work: Path, synth: Path, calib: Path, removed: int, kv: float, ffn: float) -> Path:
    """The pruned HF folder for one cut, each prune streamed from the previous folder."""
    folder, name = synth, "synth"
    for method, flag, value in (("block-influence", "--remove", removed), ("heads", "--fraction", kv),
                                ("ffn", "--fraction", ffn)):
        if not value:
            continue
        name += f"_{method}{value}"
        out = work / name
        if not out.is_dir():
            edgeprune("prune", "--model", str(folder), "--method", method, flag, str(value), "--stream",
                      "--calib", str(calib), "--out", str(out))
        folder = out
    return folder


def candidate_of(base: ModelShape, folder: Path, quant: str) -> Candidate:
    cfg = json.loads((folder / "config.json").read_text())
    return Candidate(layers_removed=base.layers - cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                     kv_heads=cfg["num_key_value_heads"], ffn=cfg["intermediate_size"], quant=quant)


def probe_gguf(work: Path, synth: Path, base: ModelShape, ggml_type: str) -> tuple[Path, list]:
    """The unpruned model with every weight matrix of one ggml type, and its (name, type, bytes)
    rows as written (read back from the file, so a fallback would show)."""
    from edgeprune.quants import tensor_bytes
    from edgeprune.targets.gguf_size import tensor_list
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf, gguf_tensor_types, quantize

    f16 = work / "synth-f16.gguf"
    if not f16.is_file():
        convert_hf_to_gguf(synth, f16)
    dst = work / f"probe_{ggml_type}.gguf"
    shapes = tensor_list(base)
    if not dst.is_file():
        weights = {name: ggml_type for name, ncols, n in shapes if n != ncols and not name.endswith("_norm.weight")}
        quantize(f16, dst, "Q4_K_M", types=weights)
    written = gguf_tensor_types(dst)
    return dst, [(name, written[name], tensor_bytes(written[name], n)) for name, _, n in shapes]


def read_bandwidth_gbs(threads: int, gb: float = 2.0, reps: int = 5) -> float:
    """This machine's DRAM read rate with `threads` threads: the best of `reps` sums over a buffer
    far larger than the L3 cache (what decode does to the weights: read each byte once)."""
    import time

    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(int(gb * 1e9) // 4, dtype=torch.float32)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        float(buf.sum())
        best = max(best, gb / (time.perf_counter() - t))
    return best


def paper_plan(efficiency: float) -> dict:
    """The arm16g paper plan of Llama-3.1-8B (planner/predict_only.py) with the decode efficiency
    measured here (share of DRAM read bandwidth llama.cpp reaches) in place of the 70 % prior."""
    from edgeprune.config.loader import load_recipe
    from edgeprune.planner.methods import resolve_methods
    from edgeprune.planner.predict_only import REFERENCE, load_model_config, searcher_for

    cfg, _ = load_model_config("llama-3.1-8b")
    s = searcher_for(cfg, load_target("arm16g"), resolve_methods(load_recipe("default")))
    out = {}
    for way, f in {"prior": Factors(), "measured_efficiency": Factors(decode=(1 / efficiency, 1.0))}.items():
        s.factors = f
        b = s.target.budget
        out[way] = [_paper_row(label, s.predict(c), size, tps, b.answer_tokens) for label, c, size, tps in REFERENCE]
    return out


def _paper_row(label: str, pred, size: float, tps: float, answer_tokens: int) -> dict:
    return {"label": label, "claimed_gb": size / 1e9, "claimed_tg_tps": tps,
            "predicted_gb": round(pred.file_bytes / 1e9, 3), "predicted_tg_tps": round(pred.tg_tps, 2),
            "predicted_answer_s": round(answer_tokens / pred.tg_tps, 2)}


def error(pred: float, meas: float) -> float:
    return round(pred / meas - 1, 4)


def factors_of(f: dict) -> Factors:
    """Factors from their JSON (calibration.factors_dict)."""
    return Factors(decode=tuple(f["decode"]), prefill=tuple(f["prefill"]), decode_quant=f["decode_quant"],
                   prefill_quant=f["prefill_quant"], samples=f["samples"], decode_type=f.get("decode_type", {}))


def predict_scale_run(scale_json: Path, cost_json: Path) -> dict:
    """The GGUF a bench/scale.py run made (e.g. the 8B one), predicted from its shape with the prior
    and with the factors fitted on the 1B candidates (`fit_all` of a scale_cost run), against the
    speed its bench stage measured (unpaired: a few tokens, one process)."""
    from edgeprune.toolchain.synth import SHAPES

    run = json.loads(scale_json.read_text())
    cost = json.loads(cost_json.read_text())
    f = cost["fit_all"]
    stages = {s["stage"]: s for s in run["stages"]}
    base = ModelShape.from_config(SHAPES[run["shape"]].config(49152, None, None))
    width = stages["prune-ffn"]["result"]
    cand = Candidate(layers_removed=run["cuts"]["layers_removed"], heads=width["num_attention_heads"],
                     kv_heads=width["num_key_value_heads"], ffn=width["intermediate_size"], quant=run["quant"])
    bench = stages["bench"]["result"]
    p, n = bench["n_prompt"], bench["n_gen"]
    dev = DeviceSpec.from_target(load_target("host"), host_threads=bench["n_threads"])
    calibrated = factors_of(f)
    meas = {"tg_tps": bench["tg_tps"]["median"], "pp_tps": bench["pp_tps"]["median"]}
    out = {"shape": run["shape"], "candidate": cand.label(base), "gguf_bytes": stages["export"]["output_bytes"],
           "measured": meas, "prompt_tokens": p, "tokens": n, "repetitions": bench["repetitions"]}
    ways = {"prior": Factors(), "calibrated_on_1b": calibrated}
    if "fit_per_tensor_type" in cost:  # the 1B reference and pure-type probes: efficiency per ggml type
        ways["per_tensor_type_1b"] = factors_of(cost["fit_per_tensor_type"])
    for way, factors in ways.items():
        pr = predict(base, cand, dev, factors, p, n)
        out[way] = {"tg_tps": round(pr.tg_tps, 3), "pp_tps": round(pr.pp_tps, 2),
                    "tg_error": error(pr.tg_tps, meas["tg_tps"]), "pp_error": error(pr.pp_tps, meas["pp_tps"]),
                    "predicted_gguf_bytes": pr.file_bytes}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predict-scale", type=Path, nargs=2, metavar=("SCALE_JSON", "COST_JSON"),
                    help="predict a bench/scale.py run's GGUF with the factors of a scale_cost run, then exit")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.predict_scale:
        data = predict_scale_run(*args.predict_scale)
        data["command"] = "python bench/scale_cost.py " + " ".join(sys.argv[1:])
        write_json(args.out, data)
        print(json.dumps(data, indent=1))
        return
    if args.work is None:
        ap.error("--work is required to build and measure the 1B candidates")
    sys.path.insert(0, str(Path(__file__).parent))
    from scale import calib_file

    args.work.mkdir(parents=True, exist_ok=True)
    synth = args.work / "synth"
    if not synth.is_dir():
        edgeprune("synth", "--shape", "llama-3.2-1b", "--out", str(synth))
    calib = calib_file(args.work / "calib.jsonl", 8)
    base = ModelShape.from_config(json.loads((synth / "config.json").read_text()), name="llama-3.2-1b synth")
    ggufs, cands = {}, {}
    for name, (removed, kv, ffn, quant) in CANDIDATES.items():
        folder = checkpoint(args.work, synth, calib, removed, kv, ffn)
        ggufs[name] = args.work / (name.replace(" ", "_").replace("%", "") + ".gguf")
        if not ggufs[name].is_file():
            edgeprune("export", "--model", str(folder), "--quant", quant, "--no-imatrix", "--out", str(ggufs[name]))
        cands[name] = candidate_of(base, folder, quant)
        print(f"built {name}: {ggufs[name].stat().st_size / 1e6:.0f} MB", flush=True)

    probes = {t: probe_gguf(args.work, synth, base, t) for t in PROBES}
    for t, (path, _) in probes.items():
        print(f"built probe {t}: {path.stat().st_size / 1e6:.0f} MB", flush=True)

    target = load_target("host")
    dev = DeviceSpec.from_target(target)
    spec = BenchSpec(args.prompt_tokens, args.tokens, args.reps, 1, dev.threads)
    p, n = args.prompt_tokens, args.tokens
    pred_of = lambda name, f: predict(base, cands[name], dev, f, p, n)  # noqa: E731
    runs = {}
    for name in CANDIDATES:
        if name == REFERENCE:
            continue
        res = run_local(ggufs[name], spec, reference=ggufs[REFERENCE])
        runs[name] = res
        print(f"measured {name}: tg {res['tg_tps']['median']:.2f} vs ref {res['reference']['tg_tps']['median']:.2f}",
              flush=True)
    probe_runs = {}
    for t, (path, _) in probes.items():
        probe_runs[t] = run_local(path, spec, reference=ggufs[REFERENCE])
        print(f"measured probe {t}: tg x{probe_runs[t]['paired']['tg_ratio']['median']:.3f}", flush=True)

    def probe_samples(level: dict) -> list[dict]:
        """Each probe at its paired ratio times `level`, the reference's speeds in one run."""
        out = []
        for t, (_, written) in probes.items():
            paired = probe_runs[t]["paired"]
            out.append({"label": f"pure {t}", "quant": f"pure-{t}", "features": features(base, written, dev, p, n),
                        "tg_tps": paired["tg_ratio"]["median"] * level["tg_tps"]["median"],
                        "pp_tps": paired["pp_ratio"]["median"] * level["pp_tps"]["median"]})
        return out

    rows = []
    ref_samples = {nm: sample_from(pred_of(REFERENCE, Factors()), r["reference"], REFERENCE, "local", "Q4_K_M")
                   for nm, r in runs.items()}
    cand_samples = {nm: sample_from(pred_of(nm, Factors()), r, nm, "local", cands[nm].quant) for nm, r in runs.items()}
    for name, res in runs.items():
        meas = {"tg": res["tg_tps"]["median"], "pp": res["pp_tps"]["median"]}
        ways = {"prior": Factors(), "per_model": fit([ref_samples[name]]),
                "leave_one_out": fit([ref_samples[name]] + [s for k, s in cand_samples.items() if k != name]),
                "per_tensor_type": fit([ref_samples[name], *probe_samples(res["reference"])], per_tensor_type=True)}
        # the unpruned model at the candidate's quant type, measured paired in its own run: what a plan
        # that first measures the quant-only front knows of each type's kernel speed on this model
        same_type = [s for k, s in cand_samples.items() if k != name and k == f"full {cands[name].quant}"]
        if same_type and cands[name].quant != "Q4_K_M":
            ways["per_model_per_type"] = fit([ref_samples[name], *same_type])
        elif cands[name].layers_removed or cands[name].quant == "Q4_K_M":
            ways["per_model_per_type"] = ways["per_model"]  # the reference is this type
        row = {"candidate": name, "quant": cands[name].quant, "gguf_bytes": ggufs[name].stat().st_size,
               "measured_tg_tps": meas["tg"], "measured_pp_tps": meas["pp"],
               "reference_tg_tps": res["reference"]["tg_tps"]["median"],
               "reference_pp_tps": res["reference"]["pp_tps"]["median"],
               "tg_ratio": res["paired"]["tg_ratio"]["median"], "pp_ratio": res["paired"]["pp_ratio"]["median"],
               "pairs": res["paired"]["pairs"], "converged": res["paired"]["converged"],
               "peak_rss_bytes": res["peak_rss_bytes"]}
        for way, f in ways.items():  # the unpruned models of other types have no per-type way: they calibrate it
            pr = pred_of(name, f)
            row[way] = {"tg_tps": round(pr.tg_tps, 3), "pp_tps": round(pr.pp_tps, 2),
                        "tg_error": error(pr.tg_tps, meas["tg"]), "pp_error": error(pr.pp_tps, meas["pp"])}
        rows.append(row)
        print(f"{name:28} tg err " + " ".join(f"{w} {row[w]['tg_error']:+.1%}" for w in ways), flush=True)
    bw = read_bandwidth_gbs(dev.threads)
    ref_run = runs[next(iter(runs))]["reference"]
    ref_read = pred_of(REFERENCE, Factors()).weights_read
    efficiency = ref_read * ref_run["tg_tps"]["median"] / (bw * 1e9)
    ref_fit = fit([ref_samples[next(iter(runs))]])
    fit_all = fit([ref_samples[next(iter(runs))], *cand_samples.values()])
    probe_rows = [{"type": t, "gguf_bytes": probes[t][0].stat().st_size,
                   "tg_ratio": r["paired"]["tg_ratio"]["median"], "pp_ratio": r["paired"]["pp_ratio"]["median"],
                   "pairs": r["paired"]["pairs"], "converged": r["paired"]["converged"]} for t, r in probe_runs.items()]
    by_type = fit([ref_samples[next(iter(runs))], *probe_samples(ref_run)], per_tensor_type=True)
    data = {"fit_all": factors_dict(fit_all), "probes": probe_rows, "fit_per_tensor_type": factors_dict(by_type), "read_bandwidth_gbs_measured": round(bw, 2), "decode_bytes_per_s_reference": round(ref_read * ref_run["tg_tps"]["median"]),
            "decode_efficiency_vs_measured_read": round(efficiency, 4), "arm16g_paper_plan": paper_plan(efficiency),
            "model": "llama-3.2-1b synth", "target": "host", "evict_llc_mb": 0, "threads": dev.threads,
            "prompt_tokens": p, "tokens": n, "bandwidth_gbs_datasheet": dev.bandwidth_gbs,
            "decode_bandwidth_efficiency": round(1 / ref_fit.decode_theta("Q4_K_M")[0], 4),
            "rows": rows, "host_load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "command": "python bench/scale_cost.py " + " ".join(sys.argv[1:])}
    write_json(args.out, data)


def table(path: Path) -> str:
    """python bench/tables.py scale-cost"""
    data = json.loads(Path(path).read_text())
    pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
    ways = ("prior", "per_model", "per_model_per_type", "leave_one_out", "per_tensor_type")
    names = "prior / per-model / per-model per-type / leave-one-out / per tensor type"
    lines = [f"| candidate | GGUF MB | tg tok/s (× reference, paired) | tg error: {names} | pp tok/s "
             f"| pp error: {names} |", "|" + "---|" * 6]
    for r in data["rows"]:
        tg = " / ".join(pct(r[w]["tg_error"]) if w in r else "—" for w in ways)
        pp = " / ".join(pct(r[w]["pp_error"]) if w in r else "—" for w in ways)
        lines.append(f"| {r['candidate']} | {r['gguf_bytes'] / 1e6:.0f} | {r['measured_tg_tps']:.2f} "
                     f"(×{r['tg_ratio']:.3f}) | {tg} | {r['measured_pp_tps']:.1f} | {pp} |")
    return "\n".join(lines) + "\n"


def paper_table(path: Path) -> str:
    """python bench/tables.py scale-arm16g: the case study next to the paper plan, prior vs measured efficiency."""
    data = json.loads(Path(path).read_text())
    plan = data["arm16g_paper_plan"]
    eff = data["decode_efficiency_vs_measured_read"]
    lines = ["| case-study model | claimed GB | claimed tok/s | predicted GB | predicted tok/s, prior 70 % "
             f"| predicted tok/s, measured {eff:.0%} | 100-token answer s, measured efficiency |", "|" + "---|" * 7]
    for prior, meas in zip(plan["prior"], plan["measured_efficiency"]):
        lines.append(f"| {prior['label']} | {prior['claimed_gb']:.1f} | {prior['claimed_tg_tps']:.0f} "
                     f"| {prior['predicted_gb']:.2f} | {prior['predicted_tg_tps']:.2f} | {meas['predicted_tg_tps']:.2f} "
                     f"| {meas['predicted_answer_s']:.1f} |")
    return "\n".join(lines) + "\n"


def scale_table(path: Path) -> str:
    """python bench/tables.py scale-cost-8b: a scale run's GGUF, predicted vs measured."""
    d = json.loads(Path(path).read_text())
    pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
    ways = [w for w in ("prior", "calibrated_on_1b", "per_tensor_type_1b") if w in d]
    names = " / ".join({"prior": "prior", "calibrated_on_1b": "1B-calibrated",
                        "per_tensor_type_1b": "1B per tensor type"}[w] for w in ways)
    lines = [f"| model | GGUF GB (predicted) | tg tok/s measured | tg predicted: {names} "
             f"| pp tok/s measured | pp predicted: {names} |", "|" + "---|" * 6]
    tg = " / ".join(f"{d[w]['tg_tps']:.2f} ({pct(d[w]['tg_error'])})" for w in ways)
    pp = " / ".join(f"{d[w]['pp_tps']:.1f} ({pct(d[w]['pp_error'])})" for w in ways)
    lines.append(f"| {d['shape']} {d['candidate']} | {d['gguf_bytes'] / 1e9:.2f} "
                 f"({d['prior']['predicted_gguf_bytes'] / 1e9:.2f}) | {d['measured']['tg_tps']:.2f} | {tg} "
                 f"| {d['measured']['pp_tps']:.1f} | {pp} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
