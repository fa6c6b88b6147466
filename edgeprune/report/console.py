"""What a run prints: one line per step (its progress bar while it runs, its time after), the
planner's own lines, and a closing summary. Other libraries' progress bars, warnings and logging
(transformers' "Converting and de-quantizing GGUF tensors...", "Loading weights", ...) are hidden
unless --verbose, which also keeps the step store's detailed lines (step directories, cache keys).
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager

# Step names as a person reads them.
STEP_LABELS = {"import": "import model", "score": "score layers", "prune": "prune", "width": "prune width",
               "recover": "recover", "export": "export GGUF", "bench": "benchmark", "ppl": "perplexity",
               "kld": "KL divergence", "tasks": "zero-shot tasks", "heal": "heal"}


class Console:
    """StepStore observer + the planner's `log`. `plan` passes stdout, where its lines have always gone;
    progress bars draw on stderr (on a terminal, over the step's open line, which finished() rewrites)."""

    def __init__(self, verbose: bool = False, stream=None):
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stderr
        self._open = False  # a "step ..." line waiting for its time

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def say(self, line: str) -> None:
        self._close_open()
        self._write(line + "\n")

    def echo(self, line: str) -> None:
        """The step store's own lines ("built: export (export-3f2a...) in 20.1s"): --verbose only."""
        if self.verbose:
            self.say(line)

    def started(self, name: str) -> None:
        if self.verbose or not self._tty():
            return
        self._close_open()
        self._write(f"  {STEP_LABELS.get(name, name):<16} ...")  # a bar may draw over it; finished() redraws
        self._open = True

    def finished(self, res) -> None:
        if self.verbose:
            return
        when = "cached" if res.hit else f"{res.seconds:6.1f} s"
        line = f"  {STEP_LABELS.get(res.name, res.name):<16} {when}"
        self._write(("\r\033[K" if self._open else "") + line + "\n")
        self._open = False

    def _close_open(self) -> None:
        if self._open:
            self._write("\n")
            self._open = False


LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "lm-eval", "lm_eval", "accelerate", "peft",
                   "torch", "gguf", "urllib3", "filelock")


@contextmanager
def libraries_quiet(enabled: bool = True):
    """While open: other libraries' progress bars, warnings and info logging are hidden; our own
    tqdm bars stay, made transient (the step's line replaces them when it ends). Restored on exit."""
    if not enabled:
        yield
        return
    from tqdm import std

    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    saved = vars(std.tqdm)["__init__"]  # tqdm's own (a partialmethod): put back as it was
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        std.tqdm.__init__ = _only_our_bars(std.tqdm.__init__)
        try:
            yield
        finally:
            std.tqdm.__init__ = saved
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _only_our_bars(original):
    """tqdm bars created outside edgeprune are disabled; ours default to leave=False. Libraries call
    tqdm directly (transformers' GGUF loader uses tqdm.auto, not its own switchable wrapper), so the
    switch has to sit in tqdm itself: the first caller frame outside tqdm decides."""
    def init(self, *args, **kwargs):
        if _caller_module().startswith("edgeprune."):
            kwargs.setdefault("leave", False)
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)
    return init


def _caller_module() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith("tqdm") or name == __name__):
            return name
        frame = frame.f_back
    return ""


def summary_lines(manifest: dict, out) -> list[str]:
    """The run's closing lines: verdict, what was removed, speed-up and quality change against the
    unpruned baseline measured in the same run, and where the GGUF and the report are."""
    its, res, budget = manifest["iterations"], manifest["result"], manifest["budget"]
    base = its[0]
    final = its[res["iteration"]] if res.get("iteration") is not None else None
    lines = [f"{'budget met' if res['met'] else 'budget NOT met'}: {res['reason']}"]
    shown = final or (min(its[1:], key=_shortfall) if len(its) > 1 else None)
    if shown is not None:
        lead = "" if final is not None else "closest measured: "
        lines += [f"removed:  {lead}{removed_text(shown, base, manifest['depth_scores']['method'])}",
                  f"speed:    {speed_text(shown, base)}",
                  f"quality:  {quality_text(shown, base, budget['max_ppl_ratio'])}"]
        if shown.get("heal"):
            lines.append(f"healed:   {heal_text(shown['heal'])}")
    if res.get("artifact"):
        v = final["verify"]
        lines.append(f"GGUF:     {out}/{res['artifact']} ({final['gguf_bytes'] / 1e6:.1f} MB, {final['quant']}; "
                     f"verified: F16 vs HF logits cos >= {v['hf_vs_f16']['cos_min']:.6f}, "
                     f"{final['quant']} vs F16 mean KL {v['quant_vs_f16']['kld_mean']:.4f})")
    else:
        lines.append("GGUF:     none published (the budget was not met)")
    lines.append(f"report:   {out}/report.md (manifest.json, bench.json beside it)")
    return lines


def _shortfall(it: dict) -> float:
    """How far a measured candidate is from its budget: the worst measured/required over its checks."""
    ratios = [c["measured"] / c["required"] if c["kind"] == "max" else c["required"] / c["measured"]
              for c in it.get("checks", {}).values() if c["required"] and c["measured"]]
    return max(ratios, default=float("inf"))


def heal_text(heal: dict) -> str:
    """Which heal was kept and what it did to the held-out calibration perplexity."""
    ppl = heal["holdout_ppl"]
    chosen = heal["chosen"]
    if chosen == "none":
        return f"{heal['method']} tried, not kept (held-out ppl {ppl['none']:.2f} unhealed was lower)"
    return f"{chosen}: held-out calibration ppl {ppl['none']:.2f} -> {ppl[chosen]:.2f} (unpruned {ppl['teacher']:.2f})"


def removed_text(it: dict, base: dict, method: str) -> str:
    parts = []
    if it["removed_layers"]:
        layers = ", ".join(str(i) for i in sorted(it["removed_layers"]))
        parts.append(f"{len(it['removed_layers'])} of {base['layers']} layers ({layers}; by {method})")
    cand = it.get("candidate") or {}
    if cand.get("heads") is not None:
        parts.append(f"attention heads down to {cand['heads']} ({cand.get('kv_heads')} KV)")
    if cand.get("ffn") is not None:
        parts.append(f"MLP channels down to {cand['ffn']}")
    what = "; ".join(parts) or "nothing (the unpruned model meets the budget)"
    return f"{what}; quantized {it['quant']}"


def speed_text(it: dict, base: dict) -> str:
    """At the baseline's speed level when the candidate was measured paired with it (the drift of a
    shared machine between the two measurements cancels), else the plain measured ratio."""
    lat = it.get("latency_at_level_s", it["latency_s"])
    paired = (it["bench"].get("paired") or {}).get("tg_ratio")
    tg = paired["median"] if paired else it["bench"]["tg_tps"]["median"] / base["bench"]["tg_tps"]["median"]
    how = "paired with the baseline in one process" if paired else "measured apart"
    return (f"x{base['latency_s'] / lat:.2f} answer latency ({base['latency_s']:.3f} s -> {lat:.3f} s), "
            f"x{tg:.2f} decode tok/s vs the unpruned {base['quant']} ({how})")


def quality_text(it: dict, base: dict, floor: float) -> str:
    ratio = it["ppl"]["ppl"] / base["ppl"]["ppl"]
    return (f"WikiText-2 perplexity {base['ppl']['ppl']:.2f} -> {it['ppl']['ppl']:.2f} "
            f"(x{ratio:.2f}, {100 * (ratio - 1):+.0f} %; floor x{floor:g})")
