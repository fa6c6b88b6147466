"""llama.cpp's two quality levers on the default model, measured in one run: the importance matrix
(imatrix) and per-tensor type mixes, each GGUF scored against the unpruned F16 GGUF with
llama.cpp's --kl-divergence protocol (stages/llama_perplexity.llama_kld_many: BOS, second half of
each chunk scored, the base's log-probs coded to 16 bits).

    python bench/quant_levers.py --out-dir bench/out/quant        # imatrix.json and mixes.json
    python bench/quant_levers.py --table bench/out/quant/imatrix.json

Every GGUF goes through the pipeline's own export step (convert, imatrix step, llama_model_quantize,
verify gates), so what is measured is what `edgeprune export` ships. File bytes are the files' sizes;
`predicted_bytes` is the size model's figure for the same type, mix and imatrix setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchout import write_json  # noqa: E402

from edgeprune.config.recipe import Export  # noqa: E402
from edgeprune.data import eval_text  # noqa: E402
from edgeprune.store import StepStore  # noqa: E402
from edgeprune.store.step_store import store_root  # noqa: E402
from edgeprune.stages.export import export_gguf  # noqa: E402
from edgeprune.stages.llama_perplexity import llama_kld_many  # noqa: E402
from edgeprune.stages.load import import_model  # noqa: E402
from edgeprune.targets.gguf_size import ModelShape, gguf_bytes  # noqa: E402
from edgeprune.toolchain import llamacpp  # noqa: E402
from edgeprune.toolchain.hf import resolve_model  # noqa: E402

IMATRIX_TYPES = ["Q4_K_M", "Q3_K_M", "Q2_K", "Q4_0", "Q5_K_M", "Q6_K"]
# the planner's four whole-model types, and the same with named mixes, all quantized with the imatrix
WHOLE = ["Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M"]
MIXES = ["head-low", "ends-high"]


def rows_for(part: str) -> list[tuple[str, bool | None]]:
    if part == "imatrix":
        return [(q, im) for q in IMATRIX_TYPES for im in (False, True)]
    return [(q, True) for q in WHOLE] + [(f"{q}+{m}", True) for q in WHOLE for m in MIXES]


def run(args) -> dict[str, dict]:
    """Both parts in one run: one import, one F16 parent, one pass of the parent's logits."""
    store = StepStore(store_root(args.store))
    hf_dir, hf_hash = import_model(store, resolve_model(None))
    shape = ModelShape.from_config(json.loads((hf_dir / "config.json").read_text()))
    f16, _ = export_gguf(store, hf_dir, hf_hash, Export(quant="F16", imatrix=False))
    paths, rows = {}, {}
    for quant, imatrix in dict.fromkeys(rows_for("imatrix") + rows_for("mixes")):
        cfg = Export(quant=quant, imatrix=imatrix)
        t0 = time.time()
        path, _ = export_gguf(store, hf_dir, hf_hash, cfg)
        name = f"{quant}{' imatrix' if imatrix else ''}"
        paths[name] = path
        rows[(quant, imatrix)] = {"name": name, "quant": quant, "imatrix": imatrix, "bytes": path.stat().st_size,
                                  "predicted_bytes": gguf_bytes(shape, quant, kv_bytes=None, imatrix=imatrix),
                                  "tensor_types": llamacpp.gguf_tensor_type_counts(path),
                                  "export_s": round(time.time() - t0, 1)}
    klds = llama_kld_many(paths, f16, eval_text(), ctx=args.ctx, chunks=args.chunks)
    for r in rows.values():
        r |= {k: v for k, v in klds[r["name"]].items() if k != "running_ppl"}
    meta = {"model": str(resolve_model(None)), "parent": "F16 GGUF of the same import", "text": "WikiText-2 test",
            "ctx": args.ctx, "chunks": args.chunks,
            "imatrix_calibration": Export().imatrix_calibration.model_dump(mode="json")}
    return {part: {"part": part, **meta, "rows": [rows[k] for k in rows_for(part)]} for part in ("imatrix", "mixes")}


def table(path: Path) -> str:
    """The bench/README table of one output file (bench/tables.py SCRIPT_TABLES)."""
    return render(json.loads(Path(path).read_text()))


def render(data: dict) -> str:
    rows = data["rows"]
    if data["part"] == "imatrix":
        out = ["| type | bytes | KLD plain | KLD imatrix | change | ppl plain | ppl imatrix | same top plain / imatrix |",
               "|---|---|---|---|---|---|---|---|"]
        by = {(r["quant"], r["imatrix"]): r for r in rows}
        for q in dict.fromkeys(r["quant"] for r in rows):
            a, b = by[(q, False)], by[(q, True)]
            size = f"{a['bytes'] / 1e6:.2f} MB" + ("" if a["bytes"] == b["bytes"] else f" / {b['bytes'] / 1e6:.2f} MB")
            out.append(f"| {q} | {size} | {a['kld_mean']:.4f} | {b['kld_mean']:.4f} | "
                       f"{100 * (b['kld_mean'] / a['kld_mean'] - 1):+.1f} % | {a['ppl']:.2f} | {b['ppl']:.2f} | "
                       f"{100 * a['same_top']:.1f} / {100 * b['same_top']:.1f} % |")
        return "\n".join(out)
    front = pareto(rows)
    whole = pareto([r for r in rows if "+" not in r["quant"]])
    out = ["| quant (+ mix) | imatrix | MB | KLD vs F16 | ppl | on the front with mixes | on the whole-type front |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["bytes"]):
        out.append(f"| {r['quant']} | {'yes' if r['imatrix'] else 'no'} | {r['bytes'] / 1e6:.2f} | "
                   f"{r['kld_mean']:.4f} | {r['ppl']:.2f} | {'yes' if r['name'] in front else ''} | "
                   f"{'yes' if r['name'] in whole else ''} |")
    return "\n".join(out)


def pareto(rows: list[dict]) -> set[str]:
    """Names no other row beats on both file bytes and KLD."""
    return {r["name"] for r in rows if not any(o["bytes"] <= r["bytes"] and o["kld_mean"] <= r["kld_mean"]
                                               and (o["bytes"], o["kld_mean"]) != (r["bytes"], r["kld_mean"])
                                               for o in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--store", default=None)
    ap.add_argument("--out-dir", type=Path, help="writes imatrix.json and mixes.json there")
    ap.add_argument("--table", type=Path)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    parts = run(args)
    for part, data in parts.items():
        data["command"] = "python " + " ".join(sys.argv)
        if args.out_dir:
            write_json(args.out_dir / f"{part}.json", data)
        print(render(data))


if __name__ == "__main__":
    main()
