"""A distillation text for `edgeprune prune ... --heal-text`: WikiText-2 *validation* articles and the
C4 documents of the shared 2,000-document slice that the shipped 512-document calibration sample
does not hold (so the heal stage's own fitting and held-out windows never reappear in it).

    python bench/heal_mix.py --out /tmp/heal-mix.jsonl              # wiki validation + C4 rest
    python bench/heal_mix.py --no-wiki --out /tmp/heal-c4.jsonl     # C4 rest only

WikiText-2 validation is disjoint from the test split every perplexity here is read on, but it is
the same kind of text: a model distilled on it is judged in-domain on WikiText-2, and only the
held-out LAMBADA text and the zero-shot tasks say how it does elsewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from edgeprune.atomic import atomic_write_text
from edgeprune.data.texts import CALIBRATION_FILE, iter_jsonl, read_texts
from edgeprune.paths import data_dir

TITLE = re.compile(r"^ = [^=].* = $")  # a top-level heading of WikiText's raw lines: " = Title = "


def wiki_articles(path: Path) -> list[str]:
    """WikiText-2's lines joined into one text per article (a new article at each top-level heading)."""
    articles, cur = [], []
    for line in read_texts_lines(path):
        if TITLE.match(line.rstrip("\n")) and cur:
            articles.append("".join(cur).strip())
            cur = []
        cur.append(line)
    if cur:
        articles.append("".join(cur).strip())
    return [a for a in articles if a]


def read_texts_lines(path: Path) -> list[str]:
    """Every row of a WikiText JSONL, blank ones included (read_texts drops them; paragraphs need them)."""
    return [row["text"] or "\n" for _, row in iter_jsonl(path, path.read_text())]


def c4_rest() -> list[str]:
    shipped = set(read_texts(CALIBRATION_FILE))
    docs = [t for part in sorted(data_dir().glob("c4_en_2k.part*of2.jsonl")) for t in read_texts(part)]
    return [t for t in docs if t not in shipped]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wiki", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)
    texts = c4_rest()
    n_c4 = len(texts)
    if args.wiki:
        texts += wiki_articles(data_dir() / "wikitext2_raw_validation.jsonl")
    atomic_write_text(args.out, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    print(f"{args.out}: {n_c4} C4 documents, {len(texts) - n_c4} WikiText-2 validation articles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
