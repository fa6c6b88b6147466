"""Pack the default model and the sweep's token windows small enough to travel to an accelerator
machine (64 MiB per transfer), and unpack them there, bit-exact.

The default model is a dequantized Q4_1/Q8_0 GGUF, so its fp32 weights are exactly
d * q + m per block of 32 (Q4_1: q in 0..15; Q8_0: m = 0, q in -127..127): storing q, d and m again
takes 5 and 8.5 bits a weight instead of 32. Each tensor is checked to round-trip bit-exact, else it
is stored as it is. The packed file is split into parts that travel in separate transfers.

    python bench/device_pack.py --out .devpack --parts 2       # here
    (the sweep, there: bench/heal_sweep.py --packed .devpack)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

BLOCK = 32


def _try_q4_1(w: torch.Tensor) -> dict | None:
    b = w.reshape(-1, BLOCK)
    m = b.min(1).values.half()
    d = ((b.max(1).values - m.float()) / 15).half()
    safe = torch.where(d == 0, torch.ones_like(d), d).float()
    q = ((b - m.float()[:, None]) / safe[:, None]).round().clamp(0, 15).to(torch.uint8)
    if not torch.equal(d.float()[:, None] * q.float() + m.float()[:, None], b):
        return None
    return {"kind": "q4_1", "q": q[:, 0::2] | (q[:, 1::2] << 4), "d": d, "m": m}


def _try_q8_0(w: torch.Tensor) -> dict | None:
    b = w.reshape(-1, BLOCK)
    d = (b.abs().max(1).values / 127).half()
    safe = torch.where(d == 0, torch.ones_like(d), d).float()
    q = (b / safe[:, None]).round().clamp(-127, 127).to(torch.int8)
    if not torch.equal(d.float()[:, None] * q.float(), b):
        return None
    return {"kind": "q8_0", "q": q, "d": d}


def pack_tensor(w: torch.Tensor) -> dict:
    w = w.float().contiguous()
    if w.dim() == 2 and w.shape[-1] % BLOCK == 0:
        for attempt in (_try_q4_1, _try_q8_0):
            packed = attempt(w)
            if packed is not None:
                return {**packed, "shape": list(w.shape)}
    return {"kind": "raw", "w": w}


def unpack_tensor(p: dict) -> torch.Tensor:
    if p["kind"] == "raw":
        return p["w"]
    if p["kind"] == "q4_1":
        q = torch.stack([p["q"] & 15, p["q"] >> 4], dim=-1).reshape(p["q"].shape[0], BLOCK).float()
        return (p["d"].float()[:, None] * q + p["m"].float()[:, None]).reshape(p["shape"])
    return (p["d"].float()[:, None] * p["q"].float()).reshape(p["shape"])


def token_windows(tok, text: str, ctx: int, windows: int) -> torch.Tensor:
    """hf_perplexity's windows: the text tokenized whole (no BOS), non-overlapping `ctx` windows."""
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n = min(windows, len(ids) // ctx)
    return ids[:n * ctx].view(n, ctx)


def pack(out: Path, parts: int, ctx: int, windows: int, calib_windows: int) -> dict:
    from edgeprune.config.recipe import Calibration
    from edgeprune.data import eval_text
    from edgeprune.data.texts import heldout_text
    from edgeprune.store import StepStore
    from edgeprune.stages.calib import calibration_windows
    from edgeprune.stages.load import import_model
    from edgeprune.toolchain.hf import load_model, resolve_model

    hf_dir, _ = import_model(StepStore(Path.home() / ".cache" / "edgeprune" / "steps"), resolve_model(None))
    model, tok = load_model(hf_dir)
    sd = {k: v for k, v in model.state_dict().items()
          if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    packed = {k: pack_tensor(v) for k, v in sd.items()}
    for k, v in sd.items():
        assert torch.equal(unpack_tensor(packed[k]), v.float()), k
    # The heal stage's calibration stream (C4, seed 1) at 512 tokens: prefix-stable, so its first
    # 32 windows are the stage's default fitting windows.
    calib = calibration_windows(tok, Calibration(samples=calib_windows, seq_len=512, seed=1))
    data = {"weights": packed, "config": model.config.to_dict(), "calib": calib,
            "wiki": token_windows(tok, eval_text(), ctx, windows),
            "heldout": token_windows(tok, heldout_text(), ctx, windows)}
    buf = io.BytesIO()
    torch.save(data, buf)
    blob = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    size = -(-len(blob) // parts)
    for i in range(parts):  # one folder per part: each travels in its own transfer
        (out / f"p{i}").mkdir(exist_ok=True)
        (out / f"p{i}" / "part").write_bytes(blob[i * size:(i + 1) * size])
    info = {"bytes": len(blob), "parts": parts, "kinds": {k: p["kind"] for k, p in packed.items()},
            "calib": list(calib.shape), "wiki": list(data["wiki"].shape), "heldout": list(data["heldout"].shape)}
    (out / "index.json").write_text(json.dumps(info, indent=1))
    return info


def unpack(src: Path):
    """(fp32 model on CPU, its token windows) from a packed folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    blob = b"".join((p / "part").read_bytes() for p in sorted(src.glob("p*")))
    data = torch.load(io.BytesIO(blob), weights_only=True)
    config = LlamaConfig.from_dict(data.pop("config"))
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict({k: unpack_tensor(p) for k, p in data.pop("weights").items()},
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.float().eval(), data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--calib-windows", type=int, default=320)
    args = ap.parse_args(argv)
    info = pack(args.out, args.parts, args.ctx, args.windows, args.calib_windows)
    print(json.dumps({k: v for k, v in info.items() if k != "kinds"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
