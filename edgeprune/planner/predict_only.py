"""Planning by prediction alone: a config.json (no weights) + a target -> predicted size, speed,
RAM, the Pareto front and the plan that meets the budget (or what would be needed).

Used by `edgeprune plan --model-config X --dry-run` and for targets that cannot be reached.
Every number printed here is a prediction of the cost model, calibrated only if the target
has measured samples in its calibration file (which the output says).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from edgeprune.errors import ConfigError
from edgeprune.planner.budget import binding_constraint, with_relative_latency
from edgeprune.planner.candidates import Scored, depth_costs
from edgeprune.planner.searcher import Decision, Searcher
from edgeprune.targets import calibration as cal
from edgeprune.targets.costmodel import Candidate
from edgeprune.targets.gguf_size import ModelShape

MODELS_DIR = Path(__file__).resolve().parent.parent / "targets" / "models"

# The reference case study (shared/reference/001_*.txt): Llama-3.1-8B on a 16 GB ARM CPU.
REFERENCE = [("Q4_K_M, unpruned", Candidate(quant="Q4_K_M"), 4.1e9, 8.0),
             ("-8 layers, -20 % heads, Q4_K_M", Candidate(8, 24, None, "Q4_K_M", 6), 3.1e9, 14.0)]


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model_config(name_or_path: str) -> tuple[dict, str]:
    path = Path(name_or_path)
    if not path.is_file():
        path = MODELS_DIR / (name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json")
    if not path.is_file():
        key = Path(name_or_path).name.removesuffix(".json")  # not .stem: "llama-3.1-8b" has dots
        close = difflib.get_close_matches(key, shipped_configs(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"give a config.json path or one of: {', '.join(shipped_configs())}"
        raise ConfigError(f"model config '{name_or_path}' not found", where="--model-config", fix=hint)
    try:
        cfg = json.loads(path.read_text())
        ModelShape.from_config(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a Llama-style config.json ({type(exc).__name__}: {exc})", where=str(path),
                          fix="it needs hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, "
                              "vocab_size") from None
    return cfg, path.name.removesuffix(".json")


def searcher_for(cfg: dict, target, recipe) -> Searcher:
    base = ModelShape.from_config(cfg)
    max_k = max(0, min(base.layers - 1, int(base.layers * recipe.depth.max_removed_fraction)))
    # no weights, no depth scores: every layer is assumed to carry the same share of quality
    order = [list(range(k)) for k in range(max_k + 1)]
    path = cal.calibration_path(target.name, target.device.runner, cal.shape_key(base))
    fp = cal.load(path).get("fingerprint")
    s = Searcher.build(base, target, recipe, max_k, depth_costs(order, base.layers), path, fp)
    b = target.budget  # a relative latency budget is resolved on the predicted baseline
    s.target = with_relative_latency(target, s.predict(Candidate(quant=recipe.export.quant))
                                     .latency_s(b.prompt_tokens, b.answer_tokens))
    return s


def plan_from_config(name_or_path: str, target_name: str, recipe_name: str, t_over: dict, r_over: dict,
                     flags: dict | None = None, recipe_flags: dict | None = None) -> str:
    from edgeprune.config.loader import load_recipe
    from edgeprune.targets import load_target

    cfg, name = load_model_config(name_or_path)
    target = load_target(target_name, t_over, flags)
    from edgeprune.planner.methods import resolve_methods

    recipe = resolve_methods(load_recipe(recipe_name, r_over, recipe_flags))
    s = searcher_for(cfg, target, recipe)
    return "\n".join(describe_prediction(s, name, cfg))


def _fmt_row(x: Scored, b) -> str:
    return (f"  {x.label:<34} {x.pred.file_bytes / 1e9:7.3f} GB  RAM {x.pred.ram_bytes / 1e9:6.2f} GB  "
            f"pp {x.pred.pp_tps:8.1f}  tg {x.pred.tg_tps:7.2f} tok/s  {b.answer_tokens}-token answer "
            f"{b.answer_tokens / x.pred.tg_tps:6.2f} s  total {x.latency_s:6.2f} s  ppl x{x.ppl_ratio:.2f} (prior)")


def describe_prediction(s: Searcher, name: str, cfg: dict) -> list[str]:
    t, b, base = s.target, s.target.budget, s.base
    calib = (f"calibrated on {s.factors.samples} measured samples ({s.calib_path})" if s.factors.samples
             else "uncalibrated priors (no measurement on this target yet)")
    lines = [f"model:   {name} ({base.params / 1e9:.2f} B params, {base.layers} layers, {base.heads} heads / "
             f"{base.kv_heads} KV, ffn {base.ffn}, vocab {base.vocab}) — from config.json only, no weights",
             f"target:  {t.name} ({t.device.description}); {t.device.mem_bandwidth_gbs:g} GB/s, "
             f"{s.device.compute_gflops:g} GFLOPS, {s.device.threads} threads",
             f"costs:   predicted by the roofline cost model, {calib}"]
    lines += prior_lines(s)
    req = s.requirements()
    lines.append("budget:  " + "; ".join(req.notes or ("no speed budget",)))
    if req.max_ram_bytes:
        lines.append(f"         RAM <= {req.max_ram_bytes / 1e9:g} GB incl. KV cache at {req.context} tokens")
    baseline = Candidate(quant=s.recipe.export.quant)
    p = s.predict(baseline)
    scored_base = [x for x in s.score(allow_unexecutable=True) if x.cand == baseline][0]
    bind, ratio = binding_constraint(req, b, {"tg_tps": p.tg_tps, "pp_tps": p.pp_tps, "ram_bytes": p.ram_bytes,
                                              "file_bytes": p.file_bytes})
    lines += ["", f"unpruned {baseline.quant} (predicted):", _fmt_row(scored_base, b),
              f"  binding constraint: {bind} at {ratio:.2f}x its limit" if bind else "  no constraint"]
    d = s.decide(allow_unexecutable=True)
    lines += ["", "plan:"]
    if d.verdict == "try":
        c = d.choice
        lines.append(f"  {c.label}: predicted {c.latency_s:.2f} s for {b.prompt_tokens}+{b.answer_tokens} tokens "
                     f"(budget {b.latency_s} s), {c.pred.file_bytes / 1e9:.2f} GB, ppl x{c.ppl_ratio:.2f} (prior)")
    else:
        lines += needed(s, d, req)
    lines += ["", f"Pareto front (predicted latency vs predicted quality, {len(d.front)} of "
                  f"{len(s.candidates(True))} candidates):"]
    lines += [_fmt_row(x, b) for x in d.front]
    if _is_llama31_8b(cfg):
        lines += ["", *reference_comparison(s)]
    return lines


def prior_lines(s: Searcher) -> list[str]:
    """Which inputs of this plan are priors, and where each came from: a verdict resting on them is
    only as good as they are for this model and this device."""
    from edgeprune import quants
    from edgeprune.planner.candidates import BETA_PRIOR_SOURCE, GAMMA_PRIOR_SOURCE
    from edgeprune.targets import costmodel as cm

    d, q, calibrated = s.target.device, s.quality, s.factors.samples > 0
    compute = (f"device.compute_gflops {d.compute_gflops:g} GFLOPS" if d.compute_gflops
               else f"{cm.GFLOPS_PER_THREAD:g} GFLOPS per thread (GFLOPS_PER_THREAD, AVX2/NEON int8 dot)")
    features = ("device.cpu_features" if d.cpu_features is not None else
                f"default for arch {d.arch}" if d.arch != "any" else "this machine's /proc/cpuinfo")
    quant_rows = [f"    {name}: ln ratio {q.quant.get(name, 0.0):.4f} from {quants.ppl_prior_source(name)}"
                  for name in s.recipe.search.quant_choices()]
    cost = [] if calibrated else [
        f"  decode:  {d.mem_bandwidth_gbs:g} GB/s (target YAML device.mem_bandwidth_gbs, a datasheet figure) at "
        f"{cm.BW_EFFICIENCY_PRIOR:.0%} efficiency (BW_EFFICIENCY_PRIOR: llama.cpp typically reaches 60-80 %)",
        f"  prefill: {compute}",
        f"  dispatch: {cm.LAYER_S * 1e6:g} us per layer + {cm.TOKEN_S * 1e6:g} us per token (LAYER_S, TOKEN_S), "
        "set by hand",
        f"  RAM:     {cm.RUNTIME_OVERHEAD_PRIOR / 1e6:g} MB runtime (RUNTIME_OVERHEAD_PRIOR); repacked copies for "
        f"CPU features {', '.join(sorted(s.device.cpu_features)) or 'none'} ({features})"]
    return ["priors:  (each replaced by a measurement once this target has one; file sizes are exact, not priors)",
            *cost,
            f"  depth quality: ln(ppl ratio) = {q.beta:g} x fraction of layers removed (BETA_PRIOR), "
            f"{BETA_PRIOR_SOURCE}",
            f"  width quality: {q.gamma[0]:g} (heads), {q.gamma[1]:g} (ffn) x fraction removed (GAMMA_PRIOR), "
            f"{GAMMA_PRIOR_SOURCE}",
            "  quant quality (QUANT_PRIOR, vs F16):", *quant_rows]


def needed(s: Searcher, d: Decision, req) -> list[str]:
    """Say plainly why nothing meets the budget and what would."""
    b = s.target.budget
    near = d.closest
    out = [f"  INFEASIBLE: no candidate (<= {s.max_removed} layers removed, quants {'/'.join(s.recipe.search.quant_choices())}"
           f"{', heads/FFN width' if len(s.recipe.search.heads_keep + s.recipe.search.ffn_keep) > 2 else ''}) is predicted to meet the budget with ppl x <= {b.max_ppl_ratio}."]
    if near is not None:
        out.append(f"  closest: {near.label} at {near.latency_s:.2f} s (ppl x{near.ppl_ratio:.2f} prior)")
    if req.decode_tps:
        eff_bw = 1.0 / s.factors.decode[0] * s.device.bandwidth_gbs  # GB/s the calibration believes
        out.append(f"  needs decode >= {req.decode_tps:.1f} tok/s: at the effective {eff_bw:.1f} GB/s that is "
                   f"<= {eff_bw / req.decode_tps:.2f} GB of weights read per token (the full {s.recipe.export.quant} "
                   f"model reads {s.predict(Candidate(quant=s.recipe.export.quant)).weights_read / 1e9:.2f} GB), "
                   f"or a device with >= {near.pred.weights_read * req.decode_tps / 1e9 / (eff_bw / s.device.bandwidth_gbs):.0f} "
                   f"GB/s for the closest candidate")
    return out


def _is_llama31_8b(cfg: dict) -> bool:
    ref = json.loads((MODELS_DIR / "llama-3.1-8b.json").read_text())
    return ModelShape.from_config(cfg) == ModelShape.from_config(ref)


def reference_comparison(s: Searcher) -> list[str]:
    b = s.target.budget
    out = ["reference case study (shared/reference/001): claimed vs predicted here",
           f"  {'':34} {'claimed':>18}  {'predicted':>18}  {b.answer_tokens}-token decode"]
    for label, cand, size, tps in REFERENCE:
        p = s.predict(cand)
        out.append(f"  {label:34} {size / 1e9:5.1f} GB {tps:5.1f} tok/s  {p.file_bytes / 1e9:5.2f} GB "
                   f"{p.tg_tps:5.1f} tok/s  claimed {b.answer_tokens / tps:4.1f} s, predicted "
                   f"{b.answer_tokens / p.tg_tps:4.1f} s")
    out += ["  why they differ: llama.cpp's Q4_K_M of Llama-3.1-8B is 4.92 GB (4.89 bits/weight: Q6_K output",
            "  head and half the attn_v/ffn_down layers), not 4.1 GB; decode reads every weight per token, so",
            "  tok/s ~ effective bandwidth / bytes read, and 3.1 GB at 14 tok/s needs ~43 GB/s while 4.1 GB at",
            "  8 tok/s implies ~33 GB/s. The case study's own '100-token answer 7 s -> 1.8 s' needs >= 55 tok/s,",
            "  which no -8 layer / -20 % heads model of this size reaches on a ~40 GB/s CPU."]
    return out


def describe_plan_prediction(plan) -> str:
    """The predicted front for a `plan --dry-run` on a real model (before any measurement)."""
    cfg = dict(plan.model_config or {})
    if not cfg.get("hidden_size") or not cfg.get("num_hidden_layers"):
        return "(no shapes in the model's config: no prediction)"
    model = Path(str(plan.model))
    if model.suffix == ".gguf":  # GGUF headers do not say whether the output head is tied; its tensors do
        from gguf import GGUFReader

        cfg["tie_word_embeddings"] = not any(t.name == "output.weight" for t in GGUFReader(str(model)).tensors)
    s = searcher_for(cfg, plan.target, plan.recipe)
    return "\n".join(["", "predicted before any measurement (depth order by layer scores is known only after "
                      "scoring; here every layer counts the same):", *describe_prediction(s, model.name, cfg)])
