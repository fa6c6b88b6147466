"""Whether depth scoring, or `prune` with a width method, streams (streaming/stream.py) or loads
the model, and why.

Default (auto): stream when the model's weights exceed STREAM_SHARE of the RAM available now.
In-memory block-influence scoring of SmolLM2 peaked at 2.5x the weight bytes (1,262 MB for
513 MB of float32 weights, bench/README "The streaming question"), so at 30 % the in-memory
pass would already want ~75 % of what is free; the streamed one needs one layer + activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeprune import registry
from edgeprune.errors import ConfigError

STREAM_SHARE = 0.3
STREAMABLE = "block-influence, angular, attention-norm"


@dataclass(frozen=True)
class StreamDecision:
    """`reason` depends only on the inputs (model, method, flags) and goes into the plan record;
    `environment` is what this machine had free when deciding ("available RAM: 24.1 GB"), which
    differs between two runs of the same plan, so it is kept out of that record (manifest
    "environment") and only printed."""
    stream: bool
    reason: str
    environment: str = ""

    def line(self) -> str:
        now = f"; {self.environment}" if self.environment else ""
        return f"scoring: {'streamed layer by layer' if self.stream else 'in memory'} ({self.reason}{now})"


def can_stream(depth_method: str) -> bool:
    """Layer-local methods stream; ppl-greedy ('model' inputs) re-runs the whole model per trial."""
    return registry.get("depth", depth_method).inputs != "model"


def check_streamable(depth_method: str, where: str = "--stream") -> None:
    if not can_stream(depth_method):
        raise ConfigError(f"{depth_method} cannot stream: it re-runs the whole model for every trial removal",
                          where=where, fix=f"use --no-stream, or a streamable method ({STREAMABLE})")


def weight_bytes(model_path: Path, model_config: dict | None = None) -> int:
    """Bytes the scoring pass would hold as weights: the safetensors of a HF folder, or a GGUF's
    tensor elements in float32 (the import step dequantizes it to float32)."""
    model_path = Path(model_path)
    if model_path.is_dir():
        return sum(f.stat().st_size for f in model_path.glob("*.safetensors"))
    try:
        from gguf import GGUFReader

        return 4 * sum(int(t.n_elements) for t in GGUFReader(model_path).tensors)
    except (OSError, ValueError, KeyError):  # unreadable here: the import step will say why
        from edgeprune.targets.gguf_size import ModelShape

        try:
            return 4 * ModelShape.from_config(model_config or {}).params
        except (KeyError, TypeError, ValueError):
            return model_path.stat().st_size * 8  # a 4-bit file dequantized to float32, at most


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def decide_stream(forced: bool | None, depth_method: str, weights: int, available: int | None = None,
                  where: str = "--stream") -> StreamDecision:
    """`forced`: True/False from --stream/--no-stream (or calibration.stream), None for auto.
    A forced stream of a method that cannot stream is an error, not a silent in-memory run: the
    user asked for bounded memory and would get the whole model."""
    return _decide(forced, lambda: check_streamable(depth_method, where), lambda: can_stream(depth_method),
                   depth_method, weights, available, " / calibration.stream")


def _decide(forced: bool | None, check, streamable, name: str, weights: int, available: int | None,
            also: str = "") -> StreamDecision:
    """The one decision rule: a forced stream is `check`ed first (it raises for a method that cannot
    stream); auto streams by the size rule, unless `streamable()` says the method cannot. `also`
    names the recipe key that forces it besides the flags."""
    if forced is True:
        check()
        return StreamDecision(True, f"forced by --stream{also}")
    if forced is False:
        return StreamDecision(False, f"forced by --no-stream{also}")
    big, size, now = _size_rule(weights, available)
    if big and not streamable():
        return StreamDecision(False, f"auto: {size}, but {name} cannot stream", now)
    return StreamDecision(big, f"auto: {size}", now)


def _size_rule(weights: int, available: int | None) -> tuple[bool, str, str]:
    """(stream?, the size comparison in words, the free RAM in words) for auto decisions."""
    available = available_bytes() if available is None else available
    big = weights > STREAM_SHARE * available
    size = f"weights {weights / 1e6:,.0f} MB {'>' if big else '<='} {STREAM_SHARE:.0%} of available RAM"
    return big, size, f"available RAM: {available / 1e9:.1f} GB"


def width_stream_refusal(method, importance: str | None = None) -> str | None:
    """Why `prune` with width method spec `method` (methods/width.WidthMethod) cannot stream, or None.
    Only activation importance streams: its hooks see one layer's inputs, which the streamed pass
    has. Taylor importance back-propagates the loss through every layer; a method's own scorer
    is handed the whole model."""
    kind = importance or method.importance
    if importance is None and method.score is not None:
        return "it scores with its own function, which takes the whole loaded model"
    if kind != "activation":
        return f"its {kind} importance back-propagates the calibration loss through the whole model"
    return None


def check_width_streamable(method, importance: str | None = None, where: str = "--stream") -> None:
    why = width_stream_refusal(method, importance)
    if why is None:
        return
    if importance and width_stream_refusal(method) is None:
        fix = f"drop --importance {importance} (activation importance streams), or use --no-stream"
    else:
        fix = f"use --no-stream, or a streamable width method ({', '.join(streamable_width_methods())})"
    raise ConfigError(f"{method.name} cannot stream: {why}", where=where, fix=fix)


def streamable_width_methods() -> list[str]:
    return [n for n in registry.names("width") if width_stream_refusal(registry.get("width", n)) is None]


def decide_width_stream(forced: bool | None, method, importance: str | None, weights: int,
                        available: int | None = None) -> StreamDecision:
    """decide_stream for `prune` with a width method: the same size rule; forcing a method that
    cannot stream is an error (see decide_stream)."""
    return _decide(forced, lambda: check_width_streamable(method, importance),
                   lambda: width_stream_refusal(method, importance) is None, method.name, weights, available)


def width_stream_note(methods: list | None, decision: StreamDecision) -> str | None:
    """One line when scoring streams but the width step cannot: it loads the (depth-pruned) model.
    `methods`: the width method specs the plan runs (each says which kind of pass it makes)."""
    if not decision.stream or not methods:
        return None
    backward = any(m.importance == "taylor" for m in methods)
    return (f"note: width method {'+'.join(m.name for m in methods)} cannot stream (it slices every layer's "
            f"matrices and {'back-propagates through the whole model' if backward else 'hooks the whole model'}); "
            "only depth scoring streams, the width step loads the depth-pruned model")


def decide_export_stream(forced: bool | None, params: int, available: int | None = None) -> StreamDecision:
    """Export's reference logits, weight check and imatrix: streamed layer by layer, or from the
    model loaded in float32 (4 bytes a parameter, whatever the stored dtype). Both give the same
    numbers; the loaded pass is faster, the streamed one holds one layer."""
    if forced is not None:
        return StreamDecision(forced, f"forced by export.stream = {forced}")
    big, size, now = _size_rule(4 * params, available)
    return StreamDecision(big, f"auto: float32 {size}", now)
