"""bench/README.md shows current results only: every table is rendered from JSON committed under
bench/out/ (bench/tables.py), every bench/out path it cites is committed, and no heading is dated or
names a sitting ("Session 4", "Run 6 at 14:20"): history belongs to git."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
from conftest import bench_module

REPO = Path(__file__).resolve().parents[1]
README = REPO / "bench" / "README.md"


def load_tables():
    return bench_module("tables")


def committed_files() -> list[str]:
    res = subprocess.run(["git", "ls-files", "bench/out"], cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:  # a copy without .git: what is on disk
        return [str(p.relative_to(REPO)) for p in (REPO / "bench" / "out").rglob("*") if p.is_file()]
    return res.stdout.split()


@pytest.mark.parametrize("name", sorted(load_tables().TABLES))
def test_table_equals_its_json_rendered(name):
    tables = load_tables()
    blocks = tables.readme_blocks(README.read_text(encoding="utf-8"))
    assert name in blocks, f"bench/README.md has no '<!-- table: {name} -->' block"
    assert blocks[name] == tables.TABLES[name](), f"rerun `python bench/tables.py {name}` and paste it"


def test_every_cited_bench_out_path_is_committed():
    files = committed_files()
    cited = set(re.findall(r"bench/out/[\w./<>{},*+-]*[\w>}*/]", README.read_text(encoding="utf-8")))
    missing = []
    for path in cited:
        patterns = _expand_braces(re.sub(r"<[^>]+>", "*", path))
        for pat in patterns:
            pat = pat.rstrip("/")
            if not any(f == pat or fnmatch.fnmatch(f, pat) or f.startswith(pat + "/") for f in files):
                missing.append(pat)
    assert not missing, f"bench/README.md cites files that are not committed: {sorted(missing)}"


def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",") for x in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def test_headings_are_areas_not_sittings():
    headings = [ln for ln in README.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
    dated = [h for h in headings if re.search(r"[Ss]ession \d|\b20\d\d-\d\d|\d{1,2}:\d\d|\b[Rr]uns? \d", h)]
    assert not dated, dated
    assert any(h.startswith("## Healing") for h in headings)
