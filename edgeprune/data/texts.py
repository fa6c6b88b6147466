"""Calibration and evaluation text: shared data by default, user files the same shape."""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgeprune.errors import DataError
from edgeprune.paths import data_dir


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"file not found: {path}", where=str(path), fix="give an existing text or JSONL file")
    try:
        text = path.read_text(encoding="utf-8")
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
    """A .jsonl file with a 'text' field per row, or a plain text file split on blank lines."""
    path = Path(path)
    text = _read_utf8(path)
    if path.suffix == ".jsonl":
        return [t for t in _jsonl_texts(path, text) if t.strip()]
    return [p for p in text.split("\n\n") if p.strip()]


def default_calibration_files() -> list[Path]:
    return sorted(data_dir().glob("c4_en_2k.part*.jsonl"))


def calibration_texts(path: Path | None, samples: int, seed: int = 0) -> list[str]:
    files = [Path(path)] if path else default_calibration_files()
    texts = [t for f in files for t in read_texts(f)]
    rng = random.Random(seed)
    rng.shuffle(texts)
    return texts[:samples] if len(texts) > samples else texts


def eval_text(path: Path | None = None) -> str:
    """WikiText-2 test, byte-exact raw file by default (the standard perplexity text)."""
    path = Path(path) if path else data_dir() / "wiki.test.raw"
    if path.suffix == ".jsonl":
        return "\n\n".join(read_texts(path))
    return _read_utf8(path)
