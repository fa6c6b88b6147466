"""lm-eval's hellaswag preprocessing (lm_eval/tasks/hellaswag/utils.py), for the shared copy whose
`ctx` is ctx_a with ctx_b already merged: ctx_a = ctx, ctx_b = "" gives lm-eval's query."""

import re


def preprocess(text):
    text = text.strip()
    # Brackets are artifacts of the WikiHow part of HellaSwag (lm-eval's comment).
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def process_docs(dataset):
    def _process_doc(doc):
        ctx = doc["ctx"] + " " + ""
        return {
            "query": preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_process_doc)
