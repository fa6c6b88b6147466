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
