"""An lm-eval model over llama-cpp-python, so the deployed GGUF is what gets scored.

Log-likelihoods come from llama.cpp's logits exactly as lm-eval's own 'hf' model computes them from
PyTorch's: context and continuation tokenized together (TemplateLM._encode_pair), the sequence cut to
the last n_ctx + 1 tokens, continuation log-probs summed, is_greedy = every continuation token is the
argmax. Requests are evaluated in token order so that the KV cache of a shared prefix (the question
of a multiple-choice item) is reused instead of recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from edgeprune.errors import ToolchainError
from edgeprune.toolchain import llamacpp


def continuation_logprob(logits: np.ndarray, continuation: list[int]) -> tuple[float, bool]:
    """Sum of log-softmax(logits[i])[continuation[i]] and whether each was the argmax.

    `logits` has one row per continuation token: the row that predicts it."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    logp = x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))
    idx = np.arange(len(continuation))
    greedy = bool((x.argmax(-1) == np.asarray(continuation)).all())
    return float(logp[idx, continuation].sum()), greedy


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LlamaVocabLM(TemplateLM):
    """Tokenization, special tokens and rolling windows from a GGUF's own vocabulary (llama.cpp's
    tokenizer), shared by the llama.cpp and the torch scorers so both score the same token ids."""

    def __init__(self, vocab, n_ctx: int):
        super().__init__()
        self.vocab = vocab
        self.n_ctx = int(n_ctx)
        self._eot = vocab.token_eos()
        bos = vocab.token_bos()
        # lm-eval's 'hf' model conditions an empty context on BOS when the tokenizer has one, else EOS.
        self._prefix = bos if bos is not None and bos >= 0 else self._eot

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self.n_ctx

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if not string:
            return []
        # No BOS, special tokens as text: what lm-eval's 'hf' model does for a Llama tokenizer by default.
        return self.vocab.tokenize(string.encode("utf-8"), add_bos=False, special=False)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, desc="rolling", disable=disable_tqdm, leave=False):
            tokens = self.tok_encode(req.args[0])
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.n_ctx, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise ToolchainError("generative tasks are not supported by the GGUF scorers", where=str(self.path),
                             fix="use log-likelihood tasks (multiple choice, lambada) or evaluate the HF folder")


@register_model("edgeprune-gguf")
class GGUFLM(LlamaVocabLM):
    def __init__(self, pretrained: str | Path, n_ctx: int = 2048, threads: int | None = None, **_ignored):
        self.path = Path(pretrained)
        self.llm = llamacpp.open_gguf(self.path, n_ctx=n_ctx, threads=threads, logits_all=True)
        super().__init__(self.llm, n_ctx)

    def _logits_for(self, tokens: list[int]) -> np.ndarray:
        """Logits for every position of `tokens`, reusing the cached prefix from the previous call."""
        cached = self.llm.input_ids[: self.llm.n_tokens].tolist()
        keep = min(_common_prefix(cached, tokens), len(tokens) - 1)
        self.llm.n_tokens = keep  # eval() drops KV entries from n_tokens on
        self.llm.eval(tokens[keep:])
        return self.llm.scores[: len(tokens)]

    def _score(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[float, bool]:
        whole = (context_enc + continuation_enc)[-(self.n_ctx + 1):]
        inp = whole[:-1]
        logits = self._logits_for(inp)
        n = len(continuation_enc)
        return continuation_logprob(np.array(logits[len(inp) - n:]), continuation_enc)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2])
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for i in tqdm(order, desc="llama.cpp loglikelihood", disable=disable_tqdm, leave=False):
            _, ctx_enc, cont_enc = requests[i]
            out[i] = self._score(ctx_enc, cont_enc)
            if kwargs.get("cache_key", True) and requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out
