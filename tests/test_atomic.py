"""The one atomic-write helper (edgeprune/atomic.py) and the writers that use it: a reader sees the
old file or the whole new one, the bytes are fsynced before the rename, and a failed write leaves
neither a temp file nor a damaged target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeprune import atomic


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """Names of the files atomic.py fsyncs."""
    names: list[str] = []
    real = atomic.os.fsync

    def record(fd: int) -> None:
        names.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", record)
    return names


def test_writer_callback_fills_a_hidden_temp_that_is_fsynced_then_renamed(tmp_path, fsynced):
    """Mutants caught: the callback given the final path (a reader sees a half file), or no fsync."""
    path = tmp_path / "cache.bin"
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"new")  # as save_file / savefig do: the writer opens the path itself

    assert atomic.atomic_write(path, write) == path
    assert path.read_bytes() == b"new"
    assert seen[0].parent == path.parent and seen[0].name.startswith(".cache.bin.tmp-")
    assert fsynced == [seen[0].name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    """Mutant caught: the temp file not removed on error (a killed writer's litter left beside the target)."""
    path = tmp_path / "f.json"
    path.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_text_and_copy_go_through_the_helper(tmp_path, fsynced):
    atomic.atomic_write_text(tmp_path / "a.txt", "héllo")
    (tmp_path / "src").write_bytes(b"GGUF" * 4)
    atomic.atomic_copy(tmp_path / "src", tmp_path / "b.gguf")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.gguf").read_bytes() == b"GGUF" * 4
    assert [n.split(".tmp-")[0] for n in fsynced] == [".a.txt", ".b.gguf"]


def test_calibration_samples_are_written_atomically(tmp_path, fsynced):
    """Mutant caught: targets/calibration.add_sample writing tmp + replace by hand again (no fsync)."""
    from edgeprune.targets import calibration as cal

    path = tmp_path / "t.json"
    sample = {"features": {"decode": (1.0, 2.0), "prefill": (3.0, 4.0)}, "tg_tps": 100.0, "pp_tps": 1000.0,
              "peak_rss_bytes": 10, "ram_static": 5, "label": "k=0"}
    cal.add_sample(path, {"runner": "fake"}, sample)
    assert json.loads(path.read_text())["samples"][0]["label"] == "k=0"
    assert [n.split(".tmp-")[0] for n in fsynced] == [".t.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_a_failed_plot_leaves_no_temp_and_closes_its_figure(tmp_path, monkeypatch):
    """Mutant caught: report/plots._save renaming by hand (a temp PNG left on error) or leaking the figure."""
    import matplotlib.pyplot as plt

    from edgeprune.report import plots

    fig, _ = plt.subplots()
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (Path(a[0]).write_bytes(b"\x89PN"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        plots._save(fig, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == [] and not plt.fignum_exists(fig.number)


def test_teacher_cache_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    """Mutant caught: recovery/teacher.py's former `path.with_suffix(".tmp")` + replace, which left
    `topk.tmp` behind when save_file failed."""
    import torch

    from edgeprune.recovery import teacher as teacher_mod

    class Teacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 5))

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.w[input_ids]})()

    class Blocks:
        ids = torch.randint(0, 8, (3, 4))
        mask = torch.ones(3, 4, dtype=torch.long)

        def __len__(self):
            return 3

    path = tmp_path / "topk.safetensors"
    path.write_bytes(b"old cache")

    def failing_save(tensors, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(teacher_mod, "load_file", lambda p: {"values": torch.zeros(0, 0, 0)})  # stale: rebuilt
    monkeypatch.setattr(teacher_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        teacher_mod.build_topk_cache(Teacher(), Blocks(), k=2, path=path)
    assert path.read_bytes() == b"old cache" and [p.name for p in tmp_path.iterdir()] == ["topk.safetensors"]
    monkeypatch.undo()

    cached = teacher_mod.build_topk_cache(Teacher(), Blocks(), k=2, path=tmp_path / "new.safetensors")
    assert cached.values.shape == (3, 4, 2) and cached.indices.dtype == torch.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.safetensors", "topk.safetensors"]
