"""Width pruning to a folder without loading the model (`edgeprune prune --method heads|ffn
--stream`): activation importance one decoder layer at a time from the safetensors
(stages/width.streamed_activation_scores), the method's decision, then the slices written tensor
by tensor in the stored dtype (surgery/width_disk.py). Peak memory is the calibration activations
plus one layer in float32 while scoring, about one weight matrix while writing.

The in-memory path (stages/prune_methods.prune_by_name) gives the same decision and the same
checkpoint for a float32 source (tests/test_width_stream.py)."""

from __future__ import annotations

import time
from pathlib import Path

from edgeprune.config.recipe import Calibration
from edgeprune.methods.width import HeadMode, WidthCut, WidthMethod, WidthShape
from edgeprune.stages.calib import calibration_windows
from edgeprune.stages.load import CHECKPOINT_FILES, import_model
from edgeprune.stages.prune_methods import publish_with
from edgeprune.stages.width import check_saveable, streamed_activation_scores, width_info
from edgeprune.store import StepStore
from edgeprune.store.disk import check_free_space
from edgeprune.store.step_store import store_root
from edgeprune.streaming.policy import StreamDecision, check_width_streamable, weight_bytes
from edgeprune.surgery.record import removed_width, shape_of
from edgeprune.surgery.width_disk import keep_width_on_disk


def _cut(cfg, method: WidthMethod, fraction: float, head_mode: HeadMode) -> WidthCut:
    """The method's cut of `fraction`, refused (one line) when it cannot be made or saved."""
    cut = method.cut(WidthShape.of(cfg), fraction, head_mode)
    check_saveable(cfg, cut)
    return cut


def prune_width_streamed(source: Path, method: WidthMethod, fraction: float, head_mode: HeadMode,
                         importance: str | None, calib: str | None, out: Path, decision: StreamDecision) -> dict:
    """`source`: a resolved model path (a HF folder streams as it is; a GGUF is first imported to
    float32 safetensors, which loads it). Returns what the in-memory path returns, plus the
    streaming decision line."""
    from transformers import AutoConfig, AutoTokenizer

    check_width_streamable(method, importance)
    if source.is_dir():  # a bad --fraction fails before the import copies the weights
        _cut(AutoConfig.from_pretrained(source), method, fraction, head_mode)
    hf_dir, _digest = import_model(StepStore(store_root(None)), source)
    check_free_space(out.parent, weight_bytes(hf_dir), "the pruned checkpoint")  # an upper bound
    cfg = AutoConfig.from_pretrained(hf_dir)
    cut = _cut(cfg, method, fraction, head_mode)
    windows = calibration_windows(AutoTokenizer.from_pretrained(hf_dir), Calibration(path=calib))
    start = time.perf_counter()
    kept = method.decide(streamed_activation_scores(hf_dir, windows), WidthShape.of(cfg), cut)
    shape = shape_of(cfg)
    record = dict(kind="width", method=method.name, source=str(source), shape=shape,
                  removed=removed_width(shape, kept),
                  options={"fraction": fraction, "head_mode": head_mode, "importance": importance or method.importance})
    written: dict = {}
    publish_with(out, lambda tmp: written.update(keep_width_on_disk(hf_dir, tmp, kept, CHECKPOINT_FILES)), record)
    info = width_info(method, importance, cut, written["layer_params_before"], written["layer_params_after"],
                      written, kept)
    info.pop("decision")  # in the record, as the in-memory path does
    return {**info, "fraction": fraction, "head_mode": head_mode, "prune_s": round(time.perf_counter() - start, 2),
            "calibration_windows": list(windows.shape), "out": str(out), "scoring": decision.line()}
