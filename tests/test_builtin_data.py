"""The texts shipped with the package: byte-exact WikiText-2, the C4 calibration sample, and that the
default commands need no data folder (only the larger evaluation sets do, with an error naming the flag)."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from edgeprune.data import texts
from edgeprune.errors import DataError
from edgeprune.paths import data_dir

WIKI_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"  # official wiki.test.raw


@pytest.fixture
def no_data_folder(monkeypatch, tmp_path):
    """No $EDGEPRUNE_DATA and no shared/data beside the checkout or the working directory."""
    import edgeprune.paths as paths

    monkeypatch.delenv("EDGEPRUNE_DATA", raising=False)
    monkeypatch.setattr(paths, "_PKG", tmp_path / "site" / "edgeprune")
    monkeypatch.chdir(tmp_path)


def test_shipped_wikitext_is_the_official_file_byte_for_byte(no_data_folder):
    body = texts.eval_text().encode("utf-8")
    assert len(body) == 1_290_590
    assert hashlib.sha256(body).hexdigest() == WIKI_SHA256
    assert body.count(b"\n") == 4_358
    assert body.startswith(b" \n = Robert Boulter = \n")


def test_shipped_calibration_sample_reads_without_a_data_folder(no_data_folder):
    rows = [json.loads(x) for x in gzip.decompress(texts.CALIBRATION_FILE.read_bytes()).decode().splitlines()]
    assert len(rows) == 512 and all(set(r) == {"text", "url", "timestamp"} for r in rows)
    got = texts.calibration_texts(None, 128, seed=0)
    assert got == [r["text"] for r in rows[:128]]  # seed 0: stored order
    other = texts.calibration_texts(None, 128, seed=1)
    assert len(other) == 128 and other != got and set(other) <= {r["text"] for r in rows}


def test_seed0_draws_the_texts_the_full_slice_gave(shared_c4_files):
    """Shipping a sample changed no calibration: seed 0 on the 512 documents = seed 0 on all 2,000."""
    import random

    full = [t for f in shared_c4_files for t in texts.read_texts(f)]
    random.Random(0).shuffle(full)
    assert texts.calibration_texts(None, 128, seed=0) == full[:128]


@pytest.fixture
def shared_c4_files():
    try:
        files = sorted(data_dir().glob("c4_en_2k.part*.jsonl"))
    except DataError:
        files = []
    if len(files) != 2:
        pytest.skip("the full 2,000-document C4 slice is not on this machine")
    return files


def test_larger_sets_name_the_flag_when_no_folder(no_data_folder):
    with pytest.raises(DataError) as err:
        data_dir("--data-dir")
    line = err.value.one_line()
    assert "EDGEPRUNE_DATA" in line and "pass --data-dir" in line and "\n" not in line


def test_user_texts_may_be_gzipped_and_bad_gzip_is_one_line(tmp_path):
    good = tmp_path / "calib.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'))
    assert sorted(texts.read_texts(good)) == ["one", "two"]
    bad = tmp_path / "broken.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        texts.eval_text(bad)
