"""Report, plots, model card and publish folder render from a fixture manifest (no model needed)."""

import json
import re

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.errors import ConfigError, ToolchainError
from edgeprune.report.build import build_report
from edgeprune.report.card import parse_front_matter
from edgeprune.report.hub import assemble, push


def _stats(median, sd=1.0):
    return {"median": median, "mean": median, "stdev": sd, "min": median - sd, "max": median + sd,
            "samples": [median - sd, median, median + sd]}


def _iteration(k, removed, ppl, tg, met):
    return {"k": k, "removed_layers": removed, "layers": 30 - k, "gguf": f"/store/export-{k}/model.Q4_K_M.gguf",
            "gguf_bytes": int(105e6 - 3.5e6 * k),
            "bench": {"n_prompt": 64, "n_gen": 100, "repetitions": 3, "warmup": 1, "n_threads": 2,
                      "pp_tps": _stats(320.0 + 10 * k), "tg_tps": _stats(tg), "peak_rss_bytes": 190e6,
                      "measured": True, "host": {"cpu_model": "Test CPU", "arch": "x86_64", "cores": 2}},
            "latency_s": 64 / (320 + 10 * k) + 100 / tg,
            "ppl": {"ppl": ppl, "tokens_scored": 4088, "windows": 8, "ctx": 512, "total_tokens": 303415},
            "checks": {"latency_s": {"required": 1.0, "measured": 64 / (320 + 10 * k) + 100 / tg, "kind": "max",
                                     "met": met}}, "ppl_ratio": ppl / 30.0}


@pytest.fixture
def run_dir(tmp_path):
    its = [_iteration(0, [], 30.0, 100.0, False), _iteration(4, [12, 13, 14, 15], 40.0, 125.0, True)]
    manifest = {
        "schema": "edgeprune.manifest/1", "plan": {
            "model": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "target": {"name": "host"},
            "recipe": {"export": {"quant": "Q4_K_M"}}, "steps": ["import", "score", "iterate"]},
        "inputs": {"model": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "model_sha256": "ab" * 32},
        "versions": {"edgeprune": "0.1.0", "torch": "2.13.0"}, "llama_cpp": {"llama_cpp_python": "0.3.36"},
        "depth_scores": {"method": "block-influence", "per_layer": [0.9] + [0.05] * 28 + [0.2]},
        "iterations": its, "budget": {"latency_s": 1.0, "prompt_tokens": 64, "answer_tokens": 100,
                                      "max_ppl_ratio": 1.5, "decode_tps": None, "max_file_gb": None},
        "result": {"met": True, "chosen_k": 4, "reason": "budget met", "artifact": "SmolLM2-L26.Q4_K_M.gguf"},
        "steps": [{"cache_hit": False}], "wall_time_s": 12.0}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "SmolLM2-L26.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    ev = tmp_path / "eval"
    ev.mkdir()
    for label, model, hits in (("parent", "/m/parent.gguf", [1, 1, 0, 1]), ("pruned", "/m/SmolLM2-L26.Q4_K_M.gguf",
                                                                           [1, 0, 0, 1])):
        items = {str(i): {"acc": float(h)} for i, h in enumerate(hits)}
        scores = {"arc_easy": {"acc": sum(hits) / 4}, "mmlu_philosophy": {"acc": 0.3},
                  "mmlu_machine_learning": {"acc": 0.27}}
        rec = {"schema": "edgeprune.eval/1", "label": label, "model": model, "kind": "gguf",
               "ppl": {"ppl": 30.0 if label == "parent" else 40.0, "kld_mean": 0.0 if label == "parent" else 0.31,
                       **({"parent": "/m/parent.gguf"} if label == "pruned" else {})},
               "tasks": {"scores": scores, "items": {"arc_easy": items}, "limit": 4}}
        (ev / f"{label}.json").write_text(json.dumps(rec))
    return tmp_path


def test_report_md_html_and_card_render(run_dir):
    paths = build_report(run_dir)
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "README.md", "importance.png", "quality_latency_vs_depth.png",
            "speed_vs_size.png", "mmlu_subfields.png"} <= names
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run_dir / "report.md").read_text()
    assert "| arc_easy acc | 75.0 | 50.0 (-25.0 [" in md  # pruned vs parent on the same 4 items, with CI
    assert "| KLD vs parent (nats) | 0.0000 | 0.3100 |" in md and "not full sets" in md
    html = (run_dir / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    card = (run_dir / "README.md").read_text()
    fm = parse_front_matter(card)
    assert fm["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and fm["license"] == "apache-2.0"
    assert fm["pipeline_tag"] == "text-generation" and "Q4_K_M" in fm["tags"]
    assert "4 of 30 (12, 13, 14, 15)" in card and "125.0 ± 1.0 tok/s" in card and "Test CPU" in card


def test_publish_assembles_folder_and_fails_clearly_without_hub(run_dir, tmp_path, monkeypatch):
    out = assemble(run_dir, tmp_path / "hub")
    assert {"SmolLM2-L26.Q4_K_M.gguf", "README.md", "manifest.json", "report.html", "plots"} <= {
        p.name for p in out.iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ToolchainError, match="HF_HUB_OFFLINE"):
        push(out, "me/model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)  # whatever this machine has stored
    with pytest.raises(ConfigError, match="no Hugging Face token"):
        push(out, "me/model")
    res = CliRunner().invoke(main, ["publish", str(tmp_path / "hub2"), "--run", str(run_dir), "--repo-id", "me/m"])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: publish: no Hugging Face")


def test_report_of_a_folder_without_manifest_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no manifest.json" in res.output


def test_compare_command_pairs_items(run_dir):
    res = CliRunner().invoke(main, ["compare", str(run_dir / "eval" / "parent.json"),
                                    str(run_dir / "eval" / "pruned.json"), "--iters", "500"])
    assert res.exit_code == 0, res.output
    assert "arc_easy" in res.output and "n=    4  0.750 -> 0.500  diff -0.250" in res.output


def test_every_speed_says_how_it_was_measured(run_dir):
    """bench.json, report.md and the card label each speed with threads, machine (CPU, arch),
    cache eviction, pairing and the --allow-foreign-arch label. Mutants caught: a label without
    eviction (host-dram numbers read as warm-cache ones), without pairing, or without the foreign
    arch label (an x86 speed read as the ARM target's); the card's old line named none of them."""
    from edgeprune.report.markdown import llama_bench_records, render_report

    manifest = json.loads((run_dir / "manifest.json").read_text())
    foreign = "measured on x86_64 host, not on the target (aarch64)"
    for it in manifest["iterations"]:
        it["bench"] |= {"runner": "local", "evict_mb": 700, "foreign_arch": foreign}
    manifest["iterations"][1]["bench"]["paired"] = {"order": "ABBA", "pairs": 3}
    records = llama_bench_records(manifest)
    assert len(records) == 4
    for r in records:
        assert r["n_threads"] == 2 and r["cpu_info"] == "Test CPU" and r["arch"] == "x86_64"
        assert r["evict_mb"] == 700 and r["cache_evicted"] and r["foreign_arch"] == foreign
        assert r["paired"] == (r["k_removed"] == 4) and r["measured"] and r["runner"] == "local"
        assert ("paired with the baseline" if r["paired"] else "unpaired") in r["how_measured"]
    md = render_report(manifest)
    rows = [ln for ln in md.splitlines() if ln.startswith("| 0 |") or ln.startswith("| 4 |")]
    assert rows[0].endswith("| unpaired |") and rows[1].endswith("| paired with the baseline |")
    assert ("Speeds measured by the local runner on Test CPU (x86_64), 2 threads, cache evicted (700 MB read "
            f"before each timed step); {foreign}.") in md
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    build_report(run_dir)
    card = (run_dir / "README.md").read_text()
    assert ("Measured by the local runner on Test CPU (x86_64), 2 threads, cache evicted (700 MB read before "
            f"each timed step), paired with the baseline; {foreign}: decode 125.0") in card
    # a warm-cache, same-arch, fake-runner baseline says so too
    manifest["iterations"][0]["bench"] |= {"evict_mb": 0, "foreign_arch": None, "measured": False, "runner": "fake"}
    md = render_report(manifest)
    assert "Speeds of the rows with 0 layers removed NOT measured: synthetic numbers of the fake runner." in md
    assert "Speeds of the rows with 4 layers removed measured by" in md
    assert llama_bench_records(manifest)[0]["cache_evicted"] is False
