"""Click entry points for evaluation, reports and publishing (cli.py adds COMMANDS to main); no logic."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeprune.cli_errors import friendly


@click.command(name="eval")
@click.option("--model", required=True, type=click.Path(), help=".gguf file or HF folder.")
@click.option("--tasks", default=None, help="Comma-separated lm-eval tasks, e.g. arc_easy,hellaswag,mmlu_subfields.")
@click.option("--limit", type=int, default=None, help="Items per task (default: all). Say so when you report.")
@click.option("--ppl", is_flag=True, help="Also perplexity (the default when --tasks is not given).")
@click.option("--parent", type=click.Path(), default=None, help="Parent model: adds KL divergence vs it.")
@click.option("--text", type=click.Path(), default=None, help="Perplexity text (default WikiText-2 test).")
@click.option("--protocol", default=None,
              help="Perplexity protocol. llama-perplexity (default for a .gguf): llama.cpp's perplexity tool's "
                   "chunks, BOS and scored second half, and its --kl-divergence statistics. windows (default for a "
                   "HF folder): every token of each window, no BOS.")
@click.option("--ctx", default=512, show_default=True, help="Perplexity window / chunk (tokens).")
@click.option("--windows", "--chunks", "windows", type=int, default=None,
              help="Limit perplexity windows / chunks (default: all).")
@click.option("--data-dir", type=click.Path(), default=None, help="Task data folder (default: shared data).")
@click.option("--threads", type=int, default=None)
@click.option("--label", default=None, help="Name of this model in reports (default: file name).")
@click.option("--backend", type=click.Choice(["llama.cpp", "torch"]), default="llama.cpp", show_default=True,
              help="Task scorer for a .gguf: llama.cpp (the deployed runtime) or torch (the same file's dequantized "
                   "weights, batched; ~10x faster where the CPU has bf16 units).")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True,
              help="Activation dtype of --backend torch.")
@click.option("--out", type=click.Path(), default=None, help="Write the full JSON (with per-item results) here.")
@friendly
def eval_(model, tasks, limit, ppl, parent, text, protocol, ctx, windows, data_dir, threads, label, backend, dtype,
          out):
    """Perplexity, KLD vs a parent, and zero-shot lm-eval tasks, offline."""
    from edgeprune.commands.evaluate import eval_command, summary

    record = eval_command(model, tasks, limit, ppl, parent, text, ctx, windows, data_dir, threads, label, backend,
                          dtype, protocol)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=1))
    if set(record) & {"tasks"} or parent:
        click.echo(json.dumps(summary(record), indent=2))
    else:  # perplexity only: the shape scripts already parse
        click.echo(json.dumps(record["ppl"], indent=2))


@click.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--metric", default="acc", show_default=True, type=click.Choice(["acc", "acc_norm"]))
@click.option("--iters", default=10000, show_default=True, help="Bootstrap resamples.")
@friendly
def compare(a, b, metric, iters):
    """Paired comparison of two `eval --out` files: B - A per task with a 95% bootstrap CI."""
    from edgeprune.commands.evaluate import compare_command

    res = compare_command(a, b, metric, iters)
    click.echo(f"{res['b']} - {res['a']} ({metric}, paired over the same items, 95% bootstrap CI)")
    for task, r in res["tasks"].items():
        click.echo(f"{task:32} n={r['n']:>5}  {r['a_mean']:.3f} -> {r['b_mean']:.3f}  "
                   f"diff {r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")


@click.command()
@click.argument("run_dir", type=click.Path())
@friendly
def report(run_dir):
    """report.md, self-contained report.html, plots and model card for a finished run."""
    from edgeprune.report.build import build_report

    for path in build_report(Path(run_dir)):
        click.echo(str(path))


@click.command()
@click.argument("out_dir", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(), default=None,
              help="Run folder to assemble from (default: OUT_DIR itself is a run folder).")
@click.option("--repo-id", default=None, help="Hub repo (user/name). Without it the folder is only assembled.")
@click.option("--private", is_flag=True)
@friendly
def publish(out_dir, run_dir, repo_id, private):
    """Assemble a Hub-ready folder (GGUF, card, manifest, plots); push when --repo-id is given."""
    from edgeprune.report.hub import assemble, push

    folder = assemble(Path(run_dir) if run_dir else Path(out_dir), Path(out_dir))
    click.echo(f"assembled {folder}")
    if repo_id:
        click.echo(push(folder, repo_id, private))


COMMANDS = (eval_, compare, report, publish)
