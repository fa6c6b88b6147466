"""Model card (README.md with Hugging Face front matter) written from a run's manifest."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgeprune.report.labels import HowMeasured

# Known parents: GGUF/HF file stem (lower case, prefix) -> (Hub id, license). Others fall back to the
# manifest's own `inputs.base_model`/`inputs.license` when present, else the path's name and "other".
KNOWN_BASES = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "smollm2-360m-instruct": ("HuggingFaceTB/SmolLM2-360M-Instruct", "apache-2.0"),
    "smollm2-1.7b-instruct": ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "apache-2.0"),
}


def base_model(manifest: dict) -> tuple[str, str]:
    inputs = manifest.get("inputs", {})
    if inputs.get("base_model"):
        return inputs["base_model"], inputs.get("license", "other")
    name = Path(str(inputs.get("model", "model"))).name.lower()
    for prefix, (hub_id, lic) in KNOWN_BASES.items():
        if name.startswith(prefix):
            return hub_id, lic
    return Path(name).stem.split(".")[0], "other"


def chosen_iteration(manifest: dict) -> dict:
    """The iteration the run delivered; the last measured one when the budget was not met."""
    its = manifest["iterations"]
    k = manifest["result"].get("chosen_k")
    return next((it for it in its if it["k"] == k), its[-1])


def front_matter(manifest: dict) -> dict:
    base, lic = base_model(manifest)
    quant = manifest["plan"]["recipe"]["export"]["quant"]
    method = manifest["depth_scores"]["method"]
    return {"base_model": base, "license": lic, "pipeline_tag": "text-generation", "library_name": "gguf",
            "tags": ["edgeprune", "pruned", "depth-pruning", method, "gguf", "llama.cpp", quant]}


def _recovery_line(manifest: dict) -> str:
    rec = manifest.get("recovery")
    if not rec:
        return "none (the layers were removed without fine-tuning afterwards)"
    data = rec.get("data") or rec.get("dataset") or "unrecorded data"
    line = f"{rec.get('mode', 'fine-tuning')} on {data}" + (f", {rec['steps']} steps" if rec.get("steps") else "")
    if rec.get("seconds") is not None:
        line += f" in {rec['seconds'] / 60:.1f} min"
    if rec.get("initial_val_ppl") and rec.get("best_val_ppl"):
        line += f" (held-out {data} ppl {rec['initial_val_ppl']:.2f} -> {rec['best_val_ppl']:.2f})"
    return line


def _heal_line(it: dict) -> str:
    heal = it.get("heal")
    if not heal or heal.get("chosen") in (None, "none"):
        return "none (the weights left by pruning were kept as they were)"
    ppl = heal["holdout_ppl"]
    return (f"training-free `{heal['chosen']}`, projections refitted in closed form on {heal['fit_tokens']} "
            f"calibration tokens (held-out calibration ppl {ppl['none']:.2f} -> {ppl[heal['chosen']]:.2f})")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_card(manifest: dict, quality_md: str = "", plots: list[str] = ()) -> str:
    fm = front_matter(manifest)
    it = chosen_iteration(manifest)
    res = manifest["result"]
    b = it["bench"]
    artifact = res.get("artifact") or Path(it["gguf"]).name
    removed = it.get("removed_layers", [])
    n_total = it["layers"] + len(removed)
    lines = ["---", yaml.safe_dump(fm, sort_keys=False).strip(), "---", "",
             f"# {Path(artifact).stem}", "",
             f"A depth-pruned, {fm['tags'][-1]}-quantized GGUF of [{fm['base_model']}]"
             f"(https://huggingface.co/{fm['base_model']}), made with edgeprune for the target "
             f"`{manifest['plan']['target']['name']}`.",
             "", "## What was done", "",
             f"- **Removed layers**: {len(removed)} of {n_total} ({', '.join(map(str, removed)) or 'none'}), "
             f"chosen by `{manifest['depth_scores']['method']}` scores on calibration text.",
             f"- **Healing**: {_heal_line(it)}.",
             f"- **Recovery**: {_recovery_line(manifest)}.",
             f"- **Quantization**: {fm['tags'][-1]} with llama.cpp "
             f"(llama-cpp-python {manifest.get('llama_cpp', {}).get('llama_cpp_python', '?')}).",
             f"- **Budget**: {'met' if res.get('met') else 'NOT met'} — {res.get('reason')}.", "",
             "## Measured speed", "",
             f"{_sentence(HowMeasured.of(b).text())}: "
             f"decode {b['tg_tps']['median']:.1f} ± {b['tg_tps']['stdev']:.1f} tok/s, prompt "
             f"{b['pp_tps']['median']:.1f} tok/s, peak RSS {b['peak_rss_bytes'] / 1e6:.0f} MB, file "
             f"{it['gguf_bytes'] / 1e6:.1f} MB (median ± sd of {b['repetitions']} repetitions).", "",
             "## Evaluation", "",
             f"WikiText-2 test perplexity ({it['ppl']['windows']} × {it['ppl']['ctx']}-token windows): "
             f"{it['ppl']['ppl']:.2f} (unpruned {manifest['iterations'][0]['ppl']['ppl']:.2f})"
             + (f"; mean KL divergence from the unpruned model's next-token distribution {it['kld']['kld_mean']:.3f} "
                f"nats, top-1 agreement {100 * it['kld']['top1_agree']:.1f} %." if it.get("kld") else ".")]
    if quality_md:
        lines += ["", quality_md]
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({p})" for p in plots]]
    lines += ["", "## Use", "", "```sh", f"llama-cli -m {artifact} -p \"Hello\"", "```", "",
              "## Provenance", "",
              f"Input sha256 `{manifest['inputs'].get('model_sha256', '?')}`; "
              + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items() if v) + ".",
              "Full details: `manifest.json`."]
    return "\n".join(lines) + "\n"


def parse_front_matter(card: str) -> dict:
    """The YAML between the leading '---' lines (what the Hub reads)."""
    if not card.startswith("---\n"):
        raise ValueError("card has no front matter")
    return yaml.safe_load(card.split("---\n", 2)[1])
