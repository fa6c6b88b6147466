"""Training-free healing sweep for contiguous 6-layer removals (issue #15): where to cut, and how to heal.

    python bench/heal_sweep.py --out bench/out/heal/sweep.json                         # here (CPU, slow)
    python bench/heal_sweep.py --packed .devpack --device cuda --out $OUT/sweep.json     # accelerator

Phase "starts": every contiguous block s..s+5, unhealed and healed with down-cut on the heal stage's
default 32 x 512 fitting windows. Phase "variants": the blocks with the lowest held-out calibration
loss after healing (plus angular's own block, `--angular`) healed with each `--variants` spec, a
registered heal method with HealMethod fields overridden: 'down-cut+damp=0.3+after=1+n=128' (n: fitting
windows). Every row: WikiText-2 and held-out (LAMBADA) perplexity, fp32, non-overlapping 1024-token
windows, and the next-token loss on held-out calibration windows (C4 windows after every fitting
window, never fitted on): the only number a selection may use.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from edgeprune import registry
from edgeprune.stages.heal import TeacherStates, heal_model, teacher_states
from edgeprune.surgery.layers import remove_layers


def heal_spec(spec: str):
    """(HealMethod, fitting windows) from 'down-cut+damp=0.1+after=1+n=128'."""
    name, *over = spec.split("+")
    fields, n = {}, 32
    types = {f.name: f.type for f in dataclasses.fields(registry.get("heal", name))}
    for o in over:
        k, v = o.split("=")
        if k == "n":
            n = int(v)
        elif k in ("damp",):
            fields[k] = float(v)
        elif k in ("after", "tail"):
            fields[k] = int(v)
        elif k in ("o_proj", "cut_attention"):
            fields[k] = v == "1"
        elif k in types:
            fields[k] = v
        else:
            raise SystemExit(f"unknown heal field {k!r} in {spec!r}")
    return dataclasses.replace(registry.get("heal", name), name=spec, **fields), n


@torch.no_grad()
def window_ppl(model, windows: torch.Tensor) -> float:
    """hf_perplexity's protocol on pre-tokenized windows: every token after the first scored."""
    dev = next(model.parameters()).device
    nll, count = 0.0, 0
    for w in windows:
        ids = w.unsqueeze(0).to(dev)
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count)


@torch.no_grad()
def calib_nll(model, windows: torch.Tensor, batch: int = 8) -> float:
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for s in range(0, len(windows), batch):
        ids = windows[s:s + batch].to(dev)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        count += ids[:, 1:].numel()
    return total / count


def first_windows(states: TeacherStates, n_batches: int) -> TeacherStates:
    """The teacher's states on the first batches only (smaller fitting sets share one teacher pass)."""
    return TeacherStates(h=[b[:n_batches] for b in states.h], u=[b[:n_batches] for b in states.u])


class Sweep:
    def __init__(self, teacher, data: dict, args):
        self.teacher, self.args = teacher, args
        self.fit_all = data["calib"][:args.fit_max].to(args.device)
        self.holdout = data["calib"][args.fit_max:args.fit_max + args.holdout].to(args.device)
        self.texts = {"wiki": data["wiki"][:args.windows], "heldout": data["heldout"][:args.windows]}
        t0 = time.perf_counter()
        self.states = teacher_states(teacher, self.fit_all, batch_size=args.batch)
        self.teacher_s = round(time.perf_counter() - t0, 1)
        self.rows: list[dict] = []

    def measure(self, model) -> dict:
        out = {f"ppl_{k}": round(window_ppl(model, w), 3) for k, w in self.texts.items()}
        out["holdout_nll"] = round(calib_nll(model, self.holdout), 5)
        return out

    def row(self, phase: str, start: int | None, removed: list[int], spec: str) -> dict:
        model = remove_layers(copy.deepcopy(self.teacher), removed) if removed else copy.deepcopy(self.teacher)
        info, t0 = {}, time.perf_counter()
        if spec != "none":
            method, n = heal_spec(spec)
            n_batches = -(-n // self.args.batch)
            windows = self.fit_all[:n_batches * self.args.batch]
            info = heal_model(model, first_windows(self.states, n_batches), windows, removed, method,
                              batch_size=self.args.batch)
        r = {"phase": phase, "start": start, "removed": removed, "heal": spec,
             "heal_s": round(time.perf_counter() - t0, 2), "final_error": info.get("final_error"),
             **self.measure(model)}
        print(json.dumps(r), flush=True)
        self.rows.append(r)
        del model
        return r


def run(sweep: Sweep, args, write) -> None:
    t_end = time.perf_counter() + args.budget_s
    sweep.row("teacher", None, [], "none")
    starts = range(1, 31 - args.remove) if args.starts == "all" else [int(s) for s in args.starts.split(",")]
    healed = {}
    for s in starts:
        removed = list(range(s, s + args.remove))
        if args.unhealed:
            sweep.row("starts", s, removed, "none")
        healed[s] = sweep.row("starts", s, removed, args.base)["holdout_nll"]
        write()
    picks = sorted(healed, key=healed.get)[:args.top]
    picks += [s for s in ([args.angular] if args.angular in healed else []) if s not in picks]
    for spec in args.variants.split(","):
        for s in picks:
            if time.perf_counter() > t_end:
                print(f"budget reached, skipped {spec} at {s}", flush=True)
                continue
            sweep.row("variants", s, list(range(s, s + args.remove)), spec)
            write()


def table(path: Path, start: int = 13) -> str:
    """The rows at one block (angular's 13-18 by default): unhealed, down-cut, then every variant,
    with WikiText-2 as a multiple of that block's unhealed perplexity (the issue's bar: <= 0.75)."""
    rows = [r for r in json.loads(Path(path).read_text())["rows"] if r["start"] == start]
    base = next((r for r in rows if r["heal"] == "none"), None)
    ref = base["ppl_wiki"] if base else 61.936  # sweep-gpu.json's unhealed block 13-18, same protocol
    lines = ["| heal (fitting windows n × 512) | WikiText-2 | × unhealed | held-out | held-out calib NLL |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['heal']} | {r['ppl_wiki']:.2f} | {r['ppl_wiki'] / ref:.3f} | {r['ppl_heldout']:.2f} | "
                     f"{r['holdout_nll']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--packed", type=Path, help="bench/device_pack.py's folder (else: the local import)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--starts", default="all")
    ap.add_argument("--angular", type=int, default=13, help="angular distance's block start (13-18 on SmolLM2)")
    ap.add_argument("--unhealed", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--base", default="down-cut")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--variants", default="down-cut+n=256")
    ap.add_argument("--fit-max", type=int, default=256)
    ap.add_argument("--holdout", type=int, default=32)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip the variants left after this many seconds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.packed:
        from device_pack import unpack
        teacher, data = unpack(args.packed)
    else:
        teacher, data = _local()
    teacher.to(args.device)
    sweep = Sweep(teacher, data, args)
    from benchout import write_json  # bench/ is on sys.path when a script runs

    def write() -> None:
        write_json(args.out, {"command": "python " + " ".join(sys.argv), "device": args.device,
                              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                              "torch": torch.__version__, "protocol": {
                                  "ppl": f"fp32, {len(sweep.texts['wiki'])} x 1024-token windows of WikiText-2 test and of "
                                         "LAMBADA (first 2000 passages), no BOS, every token after the first scored",
                                  "fit": "C4 calibration stream (seed 1) at 512 tokens, the first n windows",
                                  "holdout": f"C4 windows {args.fit_max}..{args.fit_max + args.holdout - 1} of the "
                                             "same stream, never fitted on"},
                              "teacher_s": sweep.teacher_s, "rows": sweep.rows})

    run(sweep, args, write)
    write()
    return 0


def _local():
    """The default model and the same windows bench/device_pack.py packs, built here."""
    from device_pack import token_windows

    from edgeprune.config.recipe import Calibration
    from edgeprune.data import eval_text
    from edgeprune.data.texts import heldout_text
    from edgeprune.store import StepStore
    from edgeprune.stages.calib import calibration_windows
    from edgeprune.stages.load import import_model
    from edgeprune.toolchain.hf import load_model, resolve_model

    hf_dir, _ = import_model(StepStore(Path.home() / ".cache" / "edgeprune" / "steps"), resolve_model(None))
    model, tok = load_model(hf_dir)
    return model.float().eval(), {"calib": calibration_windows(tok, Calibration(samples=320, seq_len=512, seed=1)),
                                  "wiki": token_windows(tok, eval_text(), 1024, 40),
                                  "heldout": token_windows(tok, heldout_text(), 1024, 40)}


if __name__ == "__main__":
    sys.exit(main())
