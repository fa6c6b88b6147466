"""Bad inputs: each gets one line on stderr (what, where, fix), exit code 2, no traceback, and
nothing half-written in --out or the step store.

Every case is a function that builds the bad input and returns (argv, expected text). Cases of
stages without a CLI command of their own (head pruning, sparsity, SFT rows) run the same
validation function the stage calls, through the CLI's error handler (`friendly`).
`python tests/test_bad_inputs.py` prints the table of cases and answers for bench/README.md.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import sys
from collections import namedtuple
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import friendly, main

CASES: dict[str, tuple[str, callable]] = {}
Ctx = namedtuple("Ctx", "tmp tiny calib tokenizer_dir monkeypatch")


def case(description: str):
    def deco(fn):
        CASES[fn.__name__] = (description, fn)
        return fn
    return deco


# --- builders of bad inputs ---------------------------------------------------------------

def clone(src: Path, dst: Path) -> Path:
    """A model folder of symlinks to `src` (cheap); a case replaces the files it corrupts."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


def edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TARGET = """version: 1
name: t
device: {{ram_gb: 16, mem_bandwidth_gbs: 10{device}}}
budget: {{latency_s: 2.0{budget}}}
"""


def target_yaml(ctx, budget="", device="", text=None) -> Path:
    return write_yaml(ctx.tmp / "t.yaml", text if text is not None else TARGET.format(budget=budget, device=device))


def plan(ctx, *extra, model=None, dry=True) -> list[str]:
    argv = ["plan", "--model", str(model or ctx.tiny), "--runner", "fake", "--calib", str(ctx.calib),
            "--out", str(ctx.tmp / "out"), "--max-ppl-ratio", "5", *extra]
    return argv + (["--dry-run"] if dry else [])


def fake_gguf(path: Path, arch: str = "llama") -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((64, 16), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((16, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rewrite_weights(folder: Path, drop: str) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    save_file({k: v for k, v in tensors.items() if k != drop}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def via_friendly(fn):
    """A one-off command running `fn` under the CLI's error handler."""
    @click.command()
    @friendly
    def cmd():
        fn()
    return cmd


# --- targets and budgets ------------------------------------------------------------------

@case("unknown target name")
def unknown_target(ctx):
    return plan(ctx, "--target", "arm16"), "--target: unknown target 'arm16' — fix: did you mean 'arm16g'?"


@case("target YAML with an unknown key")
def target_unknown_key(ctx):
    return plan(ctx, "--target", str(target_yaml(ctx, ", latncy_ms: 3"))), "budget.latncy_ms: unknown key"


@case("target YAML with a wrong type")
def target_wrong_type(ctx):
    t = target_yaml(ctx, text=TARGET.format(budget="", device="").replace("2.0", "fast"))
    return plan(ctx, "--target", str(t)), "budget.latency_s: Input should be a valid number"


@case("negative budget in the target YAML")
def target_negative_budget(ctx):
    t = target_yaml(ctx, text=TARGET.format(budget="", device="").replace("2.0", "-1"))
    return plan(ctx, "--target", str(t)), "t.yaml: budget.latency_s: Input should be greater than 0, got -1"


@case("negative budget from a flag (--latency -1)")
def flag_negative_latency(ctx):
    return plan(ctx, "--latency", "-1"), "error: --latency: Input should be greater than 0, got -1.0"


@case("zero threads from a flag")
def flag_zero_threads(ctx):
    return plan(ctx, "--threads", "0"), "error: --threads: Input should be greater than 0"


@case("quality floor below 1 (--max-ppl-ratio 0.5)")
def flag_ppl_ratio_below_one(ctx):
    argv = plan(ctx)
    argv[argv.index("--max-ppl-ratio") + 1] = "0.5"
    return argv, "error: --max-ppl-ratio: Input should be greater than or equal to 1"


@case("impossible budget: more RAM than the device has")
def budget_ram_over_device(ctx):
    return plan(ctx, "--target", str(target_yaml(ctx, ", max_ram_gb: 64"))), "exceeds the device's RAM"


@case("impossible budget: prompt + answer longer than the model's context")
def budget_over_context(ctx):
    return plan(ctx, "--prompt-tokens", "500", "--tokens", "100"), "but the model's context is 512"


@case("budget in wrong units: \"2s\" for seconds")
def units_string(ctx):
    t = target_yaml(ctx, text=TARGET.format(budget="", device="").replace("2.0", '"2s"'))
    return plan(ctx, "--target", str(t)), "write a plain number in seconds"


@case("budget in wrong units: milliseconds for seconds")
def units_milliseconds(ctx):
    return plan(ctx, "--latency", "2000"), "if 2000.0 was meant as milliseconds, write 2"


@case("budget in wrong units: RAM in MB")
def units_ram_mb(ctx):
    return plan(ctx, "--max-ram-gb", "4096"), "is it in MB? both are GB"


@case("target YAML that is not YAML")
def target_bad_yaml(ctx):
    return plan(ctx, "--target", str(target_yaml(ctx, text="budget: [unclosed\n"))), "not valid YAML"


@case("target YAML that is a list")
def target_top_level_list(ctx):
    return plan(ctx, "--target", str(target_yaml(ctx, text="- a\n- b\n"))), "expected a mapping at the top level"


@case("ssh runner without a host")
def ssh_without_host(ctx):
    argv = plan(ctx, "--target", str(target_yaml(ctx, device=", runner: ssh")))
    argv.remove("--runner"), argv.remove("fake")
    return argv, "device.ssh_host is not set"


@case("unknown runner in the target")
def unknown_runner(ctx):
    argv = plan(ctx, "--target", str(target_yaml(ctx, device=", runner: shh")))
    argv.remove("--runner"), argv.remove("fake")
    return argv, "device.runner: unknown runner 'shh' (did you mean 'ssh'?)"


@case("ssh target unreachable (fails fast)")
def ssh_unreachable(ctx):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = target_yaml(ctx, device=f", runner: ssh, ssh_host: user@127.0.0.1, ssh_port: {port}, connect_timeout_s: 2")
    argv = plan(ctx, "--target", str(t))
    argv.remove("--runner"), argv.remove("fake")
    return argv, f"ssh target 127.0.0.1:{port} unreachable"


@case("unknown recipe name")
def unknown_recipe(ctx):
    return plan(ctx, "--recipe", "defualt"), "--recipe: unknown recipe 'defualt'"


@case("recipe YAML with an unknown key")
def recipe_unknown_key(ctx):
    return plan(ctx, "--recipe", str(write_yaml(ctx.tmp / "r.yaml", "export: {quantt: Q4_K_M}\n"))), \
        "export.quantt: unknown key"


@case("unknown quant type in the recipe")
def recipe_unknown_quant(ctx):
    return plan(ctx, "--recipe", str(write_yaml(ctx.tmp / "r.yaml", "export: {quant: Q9_K}\n"))), \
        "export.quant: unknown quant type 'Q9_K' (did you mean 'Q6_K'?)"


@case("calibration window of 0 tokens")
def recipe_zero_seq_len(ctx):
    return plan(ctx, "--recipe", str(write_yaml(ctx.tmp / "r.yaml", "calibration: {seq_len: 0}\n"))), \
        "calibration.seq_len: Input should be greater than 0"


@case("recipe of a future version")
def recipe_version(ctx):
    return plan(ctx, "--recipe", str(write_yaml(ctx.tmp / "r.yaml", "version: 2\n"))), "version: Input should be 1"


@case("remove every layer by recipe (max_removed_fraction 1)")
def recipe_remove_all_fraction(ctx):
    r = write_yaml(ctx.tmp / "r.yaml", "depth: {max_removed_fraction: 1.0}\n")
    return plan(ctx, "--recipe", str(r)), "depth.max_removed_fraction: Input should be less than 1"


@case("recovery with 0 steps (recipe)")
def recipe_recovery_zero_steps(ctx):
    r = write_yaml(ctx.tmp / "r.yaml", "recovery: {train: {steps: 0}}\n")
    return plan(ctx, "--recipe", str(r)), "recovery.train.steps: Input should be greater than 0"


@case("unknown depth method")
def unknown_method(ctx):
    return plan(ctx, "--method", "block-influense"), "did you mean 'block-influence'?"


# --- models -------------------------------------------------------------------------------

@case("model path missing")
def model_missing(ctx):
    return plan(ctx, model=ctx.tmp / "nope"), "model path does not exist"


@case("model path is not a model (a text file)")
def model_text_file(ctx):
    f = ctx.tmp / "notes.txt"
    f.write_text("hello")
    return plan(ctx, model=f), "not a model: notes.txt is neither a .gguf file nor a folder"


@case("model folder without config.json")
def model_no_config(ctx):
    (ctx.tmp / "empty").mkdir()
    return plan(ctx, model=ctx.tmp / "empty"), "not a model folder: config.json missing"


@case("config.json that is not JSON")
def model_bad_config_json(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    (m / "config.json").unlink()
    (m / "config.json").write_text("{not json")
    return plan(ctx, model=m), "config.json is not valid JSON"


@case("unsupported architecture (HF config)")
def model_unsupported_arch(ctx):
    return plan(ctx, model=edit_config(clone(ctx.tiny, ctx.tmp / "m"), model_type="gpt2")), \
        "unsupported architecture 'gpt2'"


@case("model folder without weights")
def model_no_weights(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    (m / "model.safetensors").unlink()
    return plan(ctx, model=m), "no *.safetensors weights in the folder"


@case("pickle (.bin) weights without --allow-pickle")
def model_pickle_only(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    (m / "model.safetensors").unlink()
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    return plan(ctx, model=m), "pass --allow-pickle if you trust the source"


@case("model that needs its own code (auto_map)")
def model_remote_code(ctx):
    m = edit_config(clone(ctx.tiny, ctx.tmp / "m"), auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    return plan(ctx, model=m), "edgeprune never runs remote code"


@case("truncated safetensors")
def model_truncated_safetensors(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    data = (ctx.tiny / "model.safetensors").read_bytes()
    (m / "model.safetensors").unlink()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    return plan(ctx, model=m), "corrupt safetensors file: header describes"


@case("safetensors with a garbage header")
def model_garbage_safetensors(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    (m / "model.safetensors").unlink()
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b"not json!!!!" + b"\0" * 64)
    return plan(ctx, model=m), "corrupt safetensors file: header is not JSON"


@case("untied embeddings declared but lm_head missing")
def model_untied_without_head(ctx):
    m = clone(ctx.tiny, ctx.tmp / "m")
    (m / "model.safetensors").unlink()
    shutil.copyfile(ctx.tiny / "model.safetensors", m / "model.safetensors")
    return plan(ctx, model=rewrite_weights(m, "lm_head.weight")), \
        "tie_word_embeddings: false but the weights have no lm_head.weight"


@case("config layer count disagrees with the weights")
def model_layer_mismatch(ctx):
    return plan(ctx, model=edit_config(clone(ctx.tiny, ctx.tmp / "m"), num_hidden_layers=6)), \
        "config.json says 6 layers but the weights hold layers"


@case("head counts that break grouped-query attention (config)")
def model_bad_gqa_config(ctx):
    return plan(ctx, model=edit_config(clone(ctx.tiny, ctx.tmp / "m"), num_key_value_heads=3)), \
        "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"


@case("GGUF with bad magic bytes")
def gguf_bad_magic(ctx):
    f = ctx.tmp / "bad.gguf"
    f.write_bytes(b"GGML" + b"\0" * 100)
    return plan(ctx, model=f), "not a GGUF file (bad magic bytes)"


@case("truncated GGUF")
def gguf_truncated(ctx):
    good = fake_gguf(ctx.tmp / "good.gguf").read_bytes()
    f = ctx.tmp / "cut.gguf"
    f.write_bytes(good[: len(good) - 700])
    return plan(ctx, model=f), "the file is corrupt or truncated"


@case("GGUF of an unsupported architecture")
def gguf_unsupported_arch(ctx):
    return plan(ctx, model=fake_gguf(ctx.tmp / "gpt2.gguf", "gpt2")), \
        "unsupported architecture 'gpt2' in the GGUF header"


# --- pruning requests ---------------------------------------------------------------------

def prune(ctx, n):
    return ["prune", "--model", str(ctx.tiny), "--remove", str(n), "--calib", str(ctx.calib),
            "--out", str(ctx.tmp / "out" / "pruned")]


@case("remove more layers than exist")
def prune_too_many(ctx):
    return prune(ctx, 10), "cannot remove 10, more than the 4 layers"


@case("remove all layers")
def prune_all(ctx):
    return prune(ctx, 4), "cannot remove all 4 layers — fix: remove at most 3"


@case("remove 0 layers")
def prune_zero(ctx):
    return prune(ctx, 0), "--remove must be >= 1, got 0"


@case("head pruning that breaks GQA divisibility")
def heads_not_multiple(ctx):
    from edgeprune.config.checks import check_head_pruning

    return via_friendly(lambda: check_head_pruning(9, 3, 2)), \
        "leaves 7, not a multiple of the 3 KV heads (grouped-query attention) — fix: remove one of [0, 3, 6] heads"


@case("head pruning below one query head per KV head")
def heads_too_many(ctx):
    from edgeprune.config.checks import check_head_pruning

    return via_friendly(lambda: check_head_pruning(9, 3, 8)), "leaves 1, fewer than the 3 KV heads"


def prune_with(ctx, *opts):
    return ["prune", "--model", str(ctx.tiny), *opts, "--calib", str(ctx.calib),
            "--out", str(ctx.tmp / "out" / "pruned")]


@case("head pruning that leaves KV groups unequal (head surgery)")
def heads_unequal_groups(ctx):
    from edgeprune.surgery.heads import keep_heads
    from edgeprune.toolchain.hf import load_model

    model, _ = load_model(ctx.tiny)  # 4 query heads in 2 KV groups of 2
    return via_friendly(lambda: keep_heads(model, [[0, 1, 2]] * 4)), "keep unequal numbers per KV group"


@case("width fraction outside (0, 1)")
def width_fraction(ctx):
    return prune_with(ctx, "--method", "heads", "--fraction", "1.5"), "width methods need --fraction in (0, 1)"


@case("sparsity of 1 (outside [0, 1))")
def sparsity_one(ctx):
    return prune_with(ctx, "--method", "wanda", "--sparsity", "1.0"), "sparsity must be in [0, 1), got 1.0"


@case("negative sparsity")
def sparsity_negative(ctx):
    return prune_with(ctx, "--method", "magnitude", "--sparsity", "-0.1"), "sparsity must be in [0, 1), got -0.1"


@case("N:M pattern with N >= M")
def nm_n_ge_m(ctx):
    return prune_with(ctx, "--method", "wanda", "--nm", "4:4"), "N:M pattern 4:4 needs 0 < N < M"


@case("N:M pattern that is not two integers")
def nm_garbage(ctx):
    return prune_with(ctx, "--method", "wanda", "--nm", "2-4"), "N:M pattern '2-4' is not two integers"


# --- data ---------------------------------------------------------------------------------

def with_calib(ctx, path):
    argv = plan(ctx)
    argv[argv.index("--calib") + 1] = str(path)
    return argv


@case("calibration file missing")
def calib_missing(ctx):
    return with_calib(ctx, ctx.tmp / "nope.jsonl"), "file not found"


@case("empty calibration file")
def calib_empty(ctx):
    (ctx.tmp / "c.jsonl").write_text("\n")
    return with_calib(ctx, ctx.tmp / "c.jsonl"), "file is empty"


@case("calibration file not UTF-8")
def calib_not_utf8(ctx):
    (ctx.tmp / "c.txt").write_bytes("café".encode("latin-1") + b"\n")
    return with_calib(ctx, ctx.tmp / "c.txt"), "not UTF-8 (bad byte at offset 3)"


@case("calibration JSONL row without 'text'")
def calib_no_text_field(ctx):
    (ctx.tmp / "c.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    return with_calib(ctx, ctx.tmp / "c.jsonl"), "line 2 has no string field 'text'"


@case("calibration shorter than one window")
def calib_too_short(ctx):
    (ctx.tmp / "c.jsonl").write_text('{"text": "Only a few words here."}\n')
    return with_calib(ctx, ctx.tmp / "c.jsonl")[:-1], "shorter than one window of 256"


@case("SFT data with missing fields")
def sft_missing_fields(ctx):
    from edgeprune.data.sft import read_rows

    (ctx.tmp / "sft.jsonl").write_text('{"instruction": "Say hi", "answer": "hi"}\n')
    return via_friendly(lambda: read_rows(ctx.tmp / "sft.jsonl")), \
        "row has neither 'text' nor 'instruction'+'response' (fields: ['answer', 'instruction'])"


@case("recovery with 0 steps (flag)")
def recover_zero_steps(ctx):
    return ["recover", "--model", str(ctx.tiny), "--steps", "0", "--out", str(ctx.tmp / "out" / "rec")], \
        "--steps must be >= 1, got 0"


# --- outputs and disk ---------------------------------------------------------------------

@case("quant type unknown (export)")
def export_unknown_quant(ctx):
    return ["export", "--model", str(ctx.tiny), "--quant", "Q9", "--out", str(ctx.tmp / "out" / "m.gguf")], \
        "unknown quant type 'Q9'"


@case("output dir not writable")
def out_not_writable(ctx):
    blocker = ctx.tmp / "file"
    blocker.write_text("")
    argv = plan(ctx, dry=False)
    argv[argv.index("--out") + 1] = str(blocker / "out")
    return argv, "output folder is not writable"


@case("step store not writable")
def store_not_writable(ctx):
    blocker = ctx.tmp / "file"
    blocker.write_text("")
    return plan(ctx, "--store", str(blocker / "store"), dry=False), "step store folder cannot be created"


@case("disk full (simulated: 1 kB free)")
def disk_full(ctx):
    usage = namedtuple("usage", "total used free")
    ctx.monkeypatch.setattr("edgeprune.store.disk.shutil.disk_usage", lambda p: usage(10**12, 10**12, 1000))
    return plan(ctx, dry=False), "not enough free disk for step 'import'"


# --- commands that read a finished run ----------------------------------------------------

@case("report on a run dir that does not exist")
def report_missing_dir(ctx):
    return ["report", str(ctx.tmp / "no-run")], "no manifest.json (not a finished run)"


@case("compare a file of the wrong schema")
def compare_wrong_schema(ctx):
    f = ctx.tmp / "manifest.json"
    f.write_text(json.dumps({"schema": "edgeprune.manifest/1", "iterations": []}))
    return ["compare", str(f), str(f)], "no per-item task results in this file"


@case("compare a JSON file that is not an object")
def compare_not_an_object(ctx):
    f = ctx.tmp / "five.json"
    f.write_text("5\n")
    return ["compare", str(f), str(f)], "no per-item task results in this file"


@case("benchmark a file that is not a GGUF")
def bench_not_gguf(ctx):
    f = ctx.tmp / "model.bin"
    f.write_bytes(b"\0" * 10)
    return ["bench", "--model", str(f)], "not a model: model.bin is neither a .gguf file nor a folder"


# --- issue 16: inputs that lost data, ran for nothing, or got the wrong message ------------------

def _short_text(ctx) -> Path:
    f = ctx.tmp / "eval.txt"
    f.write_text(" ".join(["The tower is tall and the river is wide."] * 400))
    return f


@case("eval with a negative window count")
def eval_negative_windows(ctx):
    """Mutant caught: check_windows removed (ZeroDivisionError after loading the model)."""
    from edgeprune.toolchain.hf import default_model_path

    return ["eval", "--model", str(default_model_path()), "--text", str(_short_text(ctx)), "--windows", "-3"], \
        "--windows: the number of windows must be >= 1, got -3"


@case("eval with a zero-token window")
def eval_zero_ctx(ctx):
    """Mutant caught: no ctx check (llama.cpp reads n_ctx=0 as the model's own; the answer called a good GGUF corrupt)."""
    from edgeprune.toolchain.hf import default_model_path

    return ["eval", "--model", str(default_model_path()), "--text", str(_short_text(ctx)), "--ctx", "0"], \
        "--ctx: the perplexity window must be at least 2 tokens, got 0"


@case("calibration path that is a folder")
def calib_is_a_folder(ctx):
    """Mutant caught: the is_dir check in data/texts.py removed ('file not found' for a folder that exists)."""
    (ctx.tmp / "calib-dir").mkdir()
    argv = prune(ctx, 1)
    argv[argv.index("--calib") + 1] = str(ctx.tmp / "calib-dir")
    return argv, "is a directory, not a file"


@case("prune --out naming an existing file")
def prune_out_is_a_file(ctx):
    """Mutant caught: check_prune_out removed (the failure came after scoring, as 'free space or fix permissions')."""
    f = ctx.tmp / "model-notes.txt"
    f.write_text("mine")
    argv = prune(ctx, 1)
    argv[argv.index("--out") + 1] = str(f)
    return argv, "is an existing file; prune writes a folder"


@case("prune --out onto a folder of the user's files")
def prune_out_user_folder(ctx):
    """Mutant caught: publish_with's rmtree without check_prune_out (the folder was emptied, exit 0)."""
    mine = ctx.tmp / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    argv = prune(ctx, 1)
    argv[argv.index("--out") + 1] = str(mine)
    return argv, "is a folder with files that edgeprune did not write"


@case("prune onto a disk without room for the checkpoint")
def prune_disk_full(ctx):
    """Mutant caught: no free-space check on prune (a SafetensorError traceback when the disk filled)."""
    full = str(ctx.tmp / "out")  # only --out's disk is full; the step store has room
    ctx.monkeypatch.setattr("edgeprune.store.disk.free_bytes",
                            lambda path: 1000 if str(path).startswith(full) else 10**12)
    return prune(ctx, 1), "not enough free disk for the pruned checkpoint"


@case("--latency together with --latency-fraction")
def latency_and_fraction_flags(ctx):
    """Mutant caught: describe_validation_error without _blamed_flags (blamed the target YAML)."""
    return plan(ctx, "--latency", "1", "--latency-fraction", "0.5"), "error: --latency with --latency-fraction:"


@case("--quants with an unknown quant type")
def quants_flag_unknown(ctx):
    """Mutant caught: recipe overrides loaded without RECIPE_FLAGS (blamed recipes/default.yaml)."""
    return plan(ctx, "--quants", "Q9_K"), "error: --quants:"


@case("a local runner for a target of another arch")
def foreign_arch_local(ctx):
    """Mutant caught: run_plan without check_runner_arch (an x86 host's numbers reported for an ARM device)."""
    from edgeprune.devices.runners import host_arch

    other = "x86_64" if host_arch() == "aarch64" else "aarch64"
    argv = plan(ctx, "--target", str(target_yaml(ctx, device=f", arch: {other}")), dry=False)
    argv.remove("--runner"), argv.remove("fake")
    return argv, f"device.arch: the target's device.arch is {other} but the local runner would measure on this " \
                 f"{host_arch()} machine"


@case("ssh host that is an ssh option")
def ssh_host_option(ctx):
    """Mutant caught: Device.ssh_host without the grammar check."""
    t = target_yaml(ctx, device=', runner: ssh, ssh_host: "-oProxyCommand=touch pwned@127.0.0.1"')
    argv = plan(ctx, "--target", str(t))
    argv.remove("--runner"), argv.remove("fake")
    return argv, "is not [user@]host[:port]"


@case("target name that is a path")
def target_name_path(ctx):
    """Mutant caught: Target.name without the file-name check (calibration JSON written outside the cache)."""
    return plan(ctx, "--target", str(target_yaml(ctx, text=TARGET.format(budget="", device="").replace(
        "name: t", "name: ../../escape")))), "name: name '../../escape' must be letters"


@case("heads --fraction that rounds to no KV group")
def heads_fraction_rounds_to_zero(ctx):
    """Mutant caught: decide's old max(1, round(f * n_kv)) (0.1 of 2 groups removed half the heads)."""
    return ["prune", "--model", str(ctx.tiny), "--method", "heads", "--fraction", "0.1", "--calib", str(ctx.calib),
            "--out", str(ctx.tmp / "out" / "pruned")], "--fraction 0.1 of 2 KV groups removes 0"


@case("--heads-keep that keeps every KV group")
def heads_keep_keeps_all(ctx):
    """Mutant caught: head_options without _refuse_heads_keep (every head candidate dropped silently)."""
    return plan(ctx, "--heads-keep", "1.0,0.75", "--width-method", "heads"), \
        "heads_keep 0.75 keeps round(2 x 0.75) = 2 of 2 KV groups"


@case("per-group head pruning to a head count transformers refuses")
def heads_per_group_unsaveable(ctx):
    """GQA 8/2, head_dim 32, hidden 128: 6 query heads do not divide 128. Mutant caught: check_saveable
    removed (a transformers traceback at save, after the scoring pass)."""
    from conftest import build_tiny

    m = build_tiny(ctx.tmp / "gqa82", ctx.tokenizer_dir, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=2)
    return ["prune", "--model", str(m), "--method", "heads", "--head-mode", "per-group", "--fraction", "0.25",
            "--calib", str(ctx.calib), "--out", str(ctx.tmp / "out" / "pruned")], \
        "pruning to 6 query heads / 2 KV heads gives a config transformers refuses"


# --- the test -----------------------------------------------------------------------------

def run_case(name, ctx):
    argv_or_cmd, expected = CASES[name][1](ctx)
    if isinstance(argv_or_cmd, click.Command):
        return CliRunner().invoke(argv_or_cmd, []), expected
    return CliRunner().invoke(main, argv_or_cmd), expected


def assert_nothing_half_written(ctx, store: Path):
    out = ctx.tmp / "out"
    if out.exists():
        visible = [p for p in out.rglob("*") if not p.name.startswith(".") and not p.is_dir()]
        assert visible == [], f"files left in --out: {visible}"
        assert not list(out.rglob(".*.tmp-*"))
    if store.exists():
        for entry in store.iterdir():
            assert not entry.name.startswith((".tmp-", ".old-")), entry
            if not entry.name.startswith("."):
                assert (entry / "step.json").is_file(), f"step dir without step.json: {entry}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_one_line_and_exit_2(name, tmp_path, tiny_llama, small_calib, tokenizer_dir, monkeypatch,
                                            isolated_store):
    ctx = Ctx(tmp_path, tiny_llama, small_calib, tokenizer_dir, monkeypatch)
    res, expected = run_case(name, ctx)
    assert res.exit_code == 2, res.output
    # Two asserts: `A and B or C` read as `(A and B) or C`, and C (SystemExit) always held, so the
    # Traceback check never ran. Mutant caught: a handler that prints traceback.print_exc() then exits 2.
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    # progress bars that ran before the failure are not part of the answer
    err = [ln for ln in res.stderr.strip().splitlines() if "%|" not in ln]
    assert len(err) == 1, res.stderr
    assert err[0].startswith("error: ") and " — fix: " in err[0], err[0]
    assert expected in err[0], err[0]
    assert_nothing_half_written(ctx, isolated_store)


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


def test_tied_and_untied_embeddings_both_pass_validation(tmp_path, tokenizer_dir, small_calib):
    from conftest import build_tiny

    for tied in (True, False):
        m = build_tiny(tmp_path / f"tied-{tied}", tokenizer_dir, tie_word_embeddings=tied)
        res = CliRunner().invoke(main, ["plan", "--model", str(m), "--runner", "fake", "--calib", str(small_calib),
                                        "--out", str(tmp_path / "out"), "--dry-run"])
        assert res.exit_code == 0, res.output
        assert "layers:  4" in res.output


def answers_table(tmp: Path) -> str:
    """Markdown table of every case and the line it gets (run: python tests/test_bad_inputs.py)."""
    import conftest

    rows = ["| # | bad input | exit | the one line on stderr |", "|---|---|---|---|"]
    from edgeprune.paths import cache_dir

    tok = conftest.extract_tokenizer(cache_dir())  # run by hand, not by pytest: the user's cache
    tiny = conftest.build_tiny(tmp / "tiny-llama", tok)
    calib = tmp / "calib.jsonl"
    calib.write_text("\n".join(conftest.c4_lines(40)) + "\n")
    mp = pytest.MonkeyPatch()
    for i, (name, (desc, _)) in enumerate(CASES.items(), 1):
        case_dir = tmp / name
        case_dir.mkdir()
        mp.setenv("EDGEPRUNE_STORE", str(case_dir / "store"))
        res, _ = run_case(name, Ctx(case_dir, tiny, calib, tok, mp))
        mp.undo()
        line = [ln for ln in res.stderr.strip().splitlines() if "%|" not in ln][-1]
        line = line.replace("`", "'").replace(str(case_dir), "$TMP").replace(str(tiny), "$TINY").replace("|", "\\|")
        rows.append(f"| {i} | {desc} | {res.exit_code} | `{line}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        print(answers_table(Path(d)))
