"""Calibration and evaluation text: the texts shipped with the package by default, user files the same shape.

Shipped (edgeprune/builtin/data, README there): 512 C4 documents for calibration and WikiText-2's
byte-exact `wiki.test.raw` for perplexity, both gzipped. A user's file may be gzipped too.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from edgeprune.errors import DataError
from edgeprune.paths import builtin_data, data_dir

CALIBRATION_FILE = builtin_data("c4_en_calib512.jsonl.gz")
EVAL_TEXT_FILE = builtin_data("wiki.test.raw.gz")


def _logical_suffix(path: Path) -> str:
    """`.jsonl` for both x.jsonl and x.jsonl.gz."""
    return Path(path.name[:-3]).suffix if path.name.endswith(".gz") else path.suffix


def _read_utf8(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a file", where=str(path),
                        fix="give one .jsonl (a 'text' field per row) or .txt file inside it")
    if not path.is_file():
        raise DataError(f"file not found: {path}", where=str(path), fix="give an existing text or JSONL file")
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
            raise DataError(f"not a readable gzip file ({exc})", where=str(path),
                            fix="give the file uncompressed, or re-compress it with gzip") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 (bad byte at offset {exc.start})", where=str(path),
                        fix="re-encode the file as UTF-8") from None
    if not text.strip():
        raise DataError("file is empty", where=str(path), fix="give a file with text in it")
    return text


def iter_jsonl(path: Path, text: str):
    """(line number, parsed row) for every non-blank line; a line that is not JSON is a DataError."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {lineno} is not JSON", where=str(path), fix="one JSON object per line") from None


def _jsonl_texts(path: Path, text: str) -> list[str]:
    out = []
    for lineno, row in iter_jsonl(path, text):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"line {lineno} has no string field 'text'", where=str(path),
                            fix='each line must look like {"text": "..."}')
        out.append(row["text"])
    return out


def read_texts(path: Path) -> list[str]:
    """A .jsonl file with a 'text' field per row, or a plain text file split on blank lines (either may be .gz)."""
    path = Path(path)
    text = _read_utf8(path)
    if _logical_suffix(path) == ".jsonl":
        return [t for t in _jsonl_texts(path, text) if t.strip()]
    return [p for p in text.split("\n\n") if p.strip()]


def calibration_texts(path: Path | None, samples: int, seed: int = 0) -> list[str]:
    """`samples` texts drawn with `seed` from `path`, or from the shipped C4 sample. That sample is stored
    in the order random.Random(0).shuffle gave the 2,000-document slice it was cut from, so seed 0 reads
    it in order (the texts it drew from the full slice); another seed shuffles it."""
    texts = read_texts(Path(path) if path else CALIBRATION_FILE)
    if path or seed != 0:
        random.Random(seed).shuffle(texts)
    return texts[:samples]


def eval_text(path: Path | None = None) -> str:
    """WikiText-2 test, byte-exact raw file by default (the standard perplexity text, shipped)."""
    path = Path(path) if path else EVAL_TEXT_FILE
    if _logical_suffix(path) == ".jsonl":
        return "\n\n".join(read_texts(path))
    return _read_utf8(path)


def heldout_text(rows: int = 2000) -> str:
    """A non-Wikipedia, non-C4 perplexity text: the first LAMBADA test passages (novels), from the
    shared data folder (not shipped with the package)."""
    return "\n\n".join(read_texts(data_dir() / "lambada_openai_test.jsonl")[:rows])
