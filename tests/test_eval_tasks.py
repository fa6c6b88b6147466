"""The packaged lm-eval task YAMLs load offline from the shared data and score items on the tiny model,
through lm-eval's own 'hf' model and through our llama.cpp adapter."""

import math

import pytest

from edgeprune.errors import ConfigError
from edgeprune.toolchain.lmeval import run_tasks, task_manager

ALL = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande", "lambada_openai", "openbookqa"]


def test_every_task_and_mmlu_subject_is_indexed():
    tm = task_manager()
    names = set(tm.all_tasks)
    assert set(ALL) <= names
    groups = {"mmlu_stem", "mmlu_other", "mmlu_humanities", "mmlu_social_sciences", "mmlu_subfields"}
    subjects = [n for n in names if n.startswith("mmlu_") and n not in groups and not n.endswith("_tasks")]
    assert len(subjects) == 57
    assert {"mmlu", "mmlu_subfields"} <= names


def test_prompts_match_lm_eval_definitions():
    tasks = task_manager().load(["arc_easy", "hellaswag", "boolq", "mmlu_machine_learning"])["tasks"]
    arc = tasks["arc_easy"]
    doc = arc.test_docs()[0]
    assert arc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert arc.doc_to_choice(doc)[arc.doc_to_target(doc)] == doc["choices"]["text"][
        doc["choices"]["label"].index(doc["answerKey"])]
    hs = tasks["hellaswag"]
    h0 = hs.validation_docs()[0]
    assert hs.doc_to_text(h0) == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs.doc_to_target(h0) == 3 and len(hs.doc_to_choice(h0)) == 4
    bq = tasks["boolq"]
    b0 = bq.validation_docs()[0]
    assert bq.doc_to_text(b0).endswith(f"\nQuestion: {b0['question']}?\nAnswer:")
    assert bq.doc_to_choice(b0) == ["no", "yes"]
    ml = tasks["mmlu_machine_learning"]
    assert len(ml.test_docs()) == 112  # the subject's full test split, from the shared files
    assert ml.doc_to_text(ml.test_docs()[0]).endswith("\nD. " + ml.test_docs()[0]["choices"][3] + "\nAnswer:")


def test_tiny_model_scores_every_task_offline(tiny_llama):
    res = run_tasks(tiny_llama, ALL + ["mmlu_subfields"], limit=2, threads=1)
    for task in ALL:
        assert 0.0 <= res["scores"][task]["acc"] <= 1.0, task
        assert len(res["items"][task]) == 2, task
    assert res["scores"]["lambada_openai"]["perplexity"] > 1000  # random weights: can't predict the word
    assert res["n"]["mmlu_machine_learning"] == 2 and "mmlu_subfields" in res["scores"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    from edgeprune.toolchain.llamacpp import convert_hf_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.F16.gguf"
    convert_hf_to_gguf(tiny_llama, out, "f16")
    return out


def test_gguf_adapter_matches_lm_eval_hf_loglikelihoods(tiny_llama, tiny_gguf):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from edgeprune.toolchain.lmeval_gguf import GGUFLM

    reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(
        [("Question: What is 2+2?\nAnswer:", " four"), ("Question: What is 2+2?\nAnswer:", " five apples"),
         ("The capital of France is ", "Paris"), ("", "Hello world")])]
    hf = HFLM(pretrained=str(tiny_llama), dtype="float32", device="cpu", batch_size=1).loglikelihood(reqs)
    gg = GGUFLM(tiny_gguf, n_ctx=64, threads=1).loglikelihood(reqs)
    for (a, _), (b, _) in zip(hf, gg):
        assert math.isfinite(a) and b == pytest.approx(a, rel=0.01)


def test_unknown_task_is_a_config_error_with_hint():
    with pytest.raises(ConfigError, match="arc_easy"):
        run_tasks("unused.gguf", ["arc_esay"], limit=1)


REQS = [("Question: What is 2+2?\nAnswer:", " four"), ("Question: What is 2+2?\nAnswer:", " five apples"),
        ("The capital of France is ", "Paris"), ("", "Hello world"), ("Question: What is 2+2?\nAnswer:", " four")]


def _instances():
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(REQS)]


@pytest.mark.parametrize("dtype,rel", [("float32", 0.01), ("bfloat16", 0.05)])
def test_torch_scorer_matches_llama_cpp_on_the_same_gguf(tiny_gguf, dtype, rel):
    """Same file, same token ids: the batched torch scorer's log-likelihoods and greedy flags agree with
    llama.cpp's (fp32 to 1 %, bf16 to 5 %), duplicates included (they share one forward)."""
    from edgeprune.toolchain.lmeval_gguf import GGUFLM
    from edgeprune.toolchain.lmeval_torch import TorchGGUFLM

    gg = GGUFLM(tiny_gguf, n_ctx=64, threads=1).loglikelihood(_instances())
    lm = TorchGGUFLM(tiny_gguf, n_ctx=64, threads=1, dtype=dtype, max_batch_tokens=64)
    tt = lm.loglikelihood(_instances())
    assert tt[0] == tt[4]
    for (a, ga), (b, gb) in zip(gg, tt):
        assert b == pytest.approx(a, rel=rel)
    assert [g for _, g in gg] == [g for _, g in tt] or dtype == "bfloat16"


def test_torch_batches_bound_padding_and_cover_every_row():
    from edgeprune.toolchain.lmeval_torch import batches

    lengths = [5, 40, 3, 40, 17, 1, 33]
    groups = batches(lengths, max_tokens=80)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in g) * len(g) <= 80 or len(g) == 1 for g in groups)
    assert groups[0] == [1, 3]  # longest first, two 40s fill 80


def test_eval_cli_torch_backend_scores_a_task(tiny_gguf, tmp_path):
    import json

    from click.testing import CliRunner

    from edgeprune.cli import main

    out = tmp_path / "e.json"
    res = CliRunner().invoke(main, ["eval", "--model", str(tiny_gguf), "--tasks", "arc_easy", "--limit", "3",
                                    "--backend", "torch", "--dtype", "float32", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())
    assert rec["tasks"]["scorer"] == {"backend": "torch", "dtype": "float32"}
    assert len(rec["tasks"]["items"]["arc_easy"]) == 3
