"""llama.cpp's two quality levers on the default model, measured in one run: the importance matrix
(imatrix) and per-tensor type mixes, each GGUF scored against the unpruned F16 GGUF with
llama.cpp's --kl-divergence protocol (stages/llama_perplexity.llama_kld_many: BOS, second half of
each chunk scored, the base's log-probs coded to 16 bits).

    python bench/quant_levers.py --out bench/out/quant/levers.json
    python bench/quant_levers.py --table bench/out/quant/levers.json

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
MIXES = ["head-low", "ends-high", "head-low+ends-high"]


def rows_for(part: str) -> list[tuple[str, bool | None]]:
    if part == "imatrix":
        return [(q, im) for q in IMATRIX_TYPES for im in (False, True)]
    return [(q, True) for q in WHOLE] + [(f"{q}+{m}", True) for q in WHOLE for m in MIXES]


def run(args) -> dict:
    store = StepStore(store_root(args.store))
    hf_dir, hf_hash = import_model(store, resolve_model(None))
    shape = ModelShape.from_config(json.loads((hf_dir / "config.json").read_text()))
    f16, _ = export_gguf(store, hf_dir, hf_hash, Export(quant="F16", imatrix=False))
    paths, rows = {}, []
    for quant, imatrix in rows_for(args.part):
        cfg = Export(quant=quant, imatrix=imatrix)
        t0 = time.time()
        path, meta = export_gguf(store, hf_dir, hf_hash, cfg)
        used = cfg.uses_imatrix()
        name = f"{quant}{' imatrix' if used else ''}"
        paths[name] = path
        rows.append({"name": name, "quant": quant, "imatrix": used, "bytes": path.stat().st_size,
                     "predicted_bytes": gguf_bytes(shape, quant, kv_bytes=None, imatrix=used),
                     "tensor_types": llamacpp.gguf_tensor_type_counts(path),
                     "export_s": round(time.time() - t0, 1)})
    text = eval_text()
    klds = llama_kld_many(paths, f16, text, ctx=args.ctx, chunks=args.chunks)
    for r in rows:
        r |= {k: klds[r["name"]][k] for k in ("ppl", "ppl_unc", "parent_ppl", "kld_mean", "kld_mean_unc",
                                               "kld_median", "kld_99", "same_top", "tokens_scored")}
    return {"part": args.part, "model": str(resolve_model(None)), "parent": "F16 GGUF of the same import",
            "text": "WikiText-2 test", "ctx": args.ctx, "chunks": args.chunks, "rows": rows,
            "imatrix_calibration": Export().imatrix_calibration.model_dump(mode="json")}


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
    ap.add_argument("--part", choices=["imatrix", "mixes"], default="imatrix")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--store", default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path)
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    data = run(args)
    data["command"] = "python " + " ".join(sys.argv)
    if args.out:
        write_json(args.out, data)
    print(render(data))


if __name__ == "__main__":
    main()
