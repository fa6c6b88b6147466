"""Recovery training data: instruction rows (chat template) or plain text, packed into blocks.

Row shapes accepted in a .jsonl file (one JSON object per line):
  {"text": str}                                      -> language-modelling text (C4, WikiText)
  {"instruction": str, "response": str[, "context"]} -> chat-templated instruction pair (Dolly)
Packing concatenates examples into `max_length` blocks (no padding, no cross-document mask,
as in TRL's default packing); without packing each example is truncated and right-padded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import DataError
from edgeprune.data.texts import iter_jsonl
from edgeprune.paths import data_dir

# Label of a position without loss: torch's cross_entropy ignore_index, as methods/distill.py uses it.
IGNORE = -100

NAMED = {"dolly": ["dolly15k_open_qa.jsonl"], "dolly-hh": ["dolly_hhrlhf_small.jsonl"],
         "c4": ["c4_en_2k.part1of2.jsonl", "c4_en_2k.part2of2.jsonl"],
         "wikitext-val": ["wikitext2_raw_validation.jsonl"]}
SHAPE_FIX = 'each line must be {"text": ...} or {"instruction": ..., "response": ...}'


@dataclass
class Blocks:
    """Equal-length training rows: input ids, labels (IGNORE = no loss) and attention mask."""
    ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index) -> "Blocks":
        return Blocks(self.ids[index], self.labels[index], self.mask[index])

    def tokens(self) -> int:
        return int(self.mask.sum())


def source_files(source: str) -> list[Path]:
    if source in NAMED:
        return [data_dir("--data PATH.jsonl") / name for name in NAMED[source]]
    path = Path(source)
    if not path.is_file():
        raise DataError(f"unknown data source '{source}'", where="--data",
                        fix=f"use one of {', '.join(NAMED)} or a path to a .jsonl file")
    return [path]


def row_kind(row: object, where: str) -> str:
    if isinstance(row, dict) and isinstance(row.get("text"), str):
        return "text"
    if isinstance(row, dict) and isinstance(row.get("instruction"), str) and isinstance(row.get("response"), str):
        return "chat"
    got = sorted(row) if isinstance(row, dict) else type(row).__name__
    raise DataError(f"row has neither 'text' nor 'instruction'+'response' (fields: {got})", where=where,
                    fix=SHAPE_FIX)


def read_rows(path: Path) -> list[dict]:
    if path.suffix != ".jsonl":
        raise DataError("training data must be JSON Lines", where=str(path), fix="give a .jsonl file; " + SHAPE_FIX)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 (bad byte at offset {exc.start})", where=str(path), fix="re-encode as UTF-8") from None
    rows, kinds = [], set()
    for lineno, row in iter_jsonl(path, "\n".join(lines)):
        kinds.add(row_kind(row, f"{path}:{lineno}"))
        rows.append(row)
    if not rows:
        raise DataError("no rows", where=str(path), fix="give a file with at least one row")
    if len(kinds) > 1:
        raise DataError("mixes 'text' rows and instruction rows", where=str(path), fix="use one shape per file")
    return rows


def encode_chat(row: dict, tok, completion_only: bool) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated pair; labels hide the prompt when `completion_only`."""
    user = row["instruction"] if not row.get("context") else f"{row['context']}\n\n{row['instruction']}"
    prompt_msgs = [{"role": "user", "content": user}]
    full = tok.apply_chat_template(prompt_msgs + [{"role": "assistant", "content": row["response"]}], tokenize=False)
    prompt = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        # A template that rewrites earlier turns: fall back to loss on every token.
        prompt = ""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    ids = p_ids + tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    labels = ([IGNORE] * len(p_ids) + ids[len(p_ids):]) if completion_only else list(ids)
    return ids, labels


def encode_text(row: dict, tok) -> tuple[list[int], list[int]]:
    ids = tok(row["text"], add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        ids = ids + [tok.eos_token_id]  # document boundary inside packed blocks
    return ids, list(ids)


def encode_rows(rows: list[dict], tok, completion_only: bool) -> list[tuple[list[int], list[int]]]:
    chat = "instruction" in rows[0]
    out = [encode_chat(r, tok, completion_only) if chat else encode_text(r, tok) for r in rows]
    return [(i, l) for i, l in out if len(i) > 1]


def pack(examples: list[tuple[list[int], list[int]]], max_length: int) -> Blocks:
    """Concatenate and cut into full blocks of `max_length`; the ragged tail is dropped."""
    ids = [t for i, _ in examples for t in i]
    labels = [t for _, l in examples for t in l]
    n = len(ids) // max_length
    ids_t = torch.tensor(ids[: n * max_length], dtype=torch.long).view(n, max_length)
    lab_t = torch.tensor(labels[: n * max_length], dtype=torch.long).view(n, max_length)
    return Blocks(ids_t, lab_t, torch.ones_like(ids_t))


def pad(examples: list[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> Blocks:
    n = len(examples)
    ids = torch.full((n, max_length), pad_id, dtype=torch.long)
    labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, max_length), dtype=torch.long)
    for row, (i, l) in enumerate(examples):
        k = min(len(i), max_length)
        ids[row, :k], labels[row, :k], mask[row, :k] = torch.tensor(i[:k]), torch.tensor(l[:k]), 1
    return Blocks(ids, labels, mask)


def build_blocks(cfg, tok, seed: int) -> tuple[Blocks, Blocks]:
    """(train, validation) blocks from a RecoveryData config; validation rows are held out
    before packing so no validation text leaks into a training block."""
    rows = [r for f in source_files(cfg.source) for r in read_rows(f)]
    random.Random(seed).shuffle(rows)
    if cfg.max_rows:
        rows = rows[: cfg.max_rows]
    n_val = max(1, round(len(rows) * cfg.val_fraction))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    parts = []
    for subset in (rows[n_val:], rows[:n_val]):
        ex = encode_rows(subset, tok, cfg.completion_only) if subset else []
        parts.append(pack(ex, cfg.max_length) if cfg.packing else pad(ex, cfg.max_length, pad_id))
    train, val = parts
    val = val.take(slice(0, cfg.val_blocks))
    for name, blocks in (("training", train), ("validation", val)):
        if len(blocks) == 0 or int((blocks.labels != IGNORE).sum()) == 0:
            raise DataError(f"the {name} split has no full block of {cfg.max_length} tokens with a loss "
                            f"({len(rows)} rows in all)", where=str(cfg.source),
                            fix="give more rows, a smaller data.max_length, or a larger data.val_fraction")
    return train, val
