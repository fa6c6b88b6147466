"""A fast lm-eval scorer for a GGUF: its own quantized weights, dequantized, run by PyTorch in batches.

Why: llama.cpp scores one sequence at a time and prefills ~200 tokens/s for SmolLM2-135M on 2 cores
here, so the full zero-shot suite (~60k requests per model) takes most of a day. The weights in the
GGUF are what matters for quality; the runtime only adds rounding. This scorer loads the file's
tensors through transformers' GGUF reader (dequantized: exactly the Q4_K/Q6_K values llama.cpp
multiplies), tokenizes with llama.cpp's own vocabulary (the same token ids as the llama.cpp scorer)
and runs right-padded batches in bf16, which uses AMX / AVX512-BF16 where the CPU has them (~10x
llama.cpp here). Only the continuation positions go through the 49k-wide output head.

What differs from llama.cpp: activations are bf16 here, 8-bit blocks (Q8_K) there; both round to
about 3 significant digits. bench/README (Evaluation) measures the per-item agreement of the two.
"""

from __future__ import annotations

from pathlib import Path

from lm_eval.api.registry import register_model
from tqdm import tqdm

from edgeprune.errors import ToolchainError
from edgeprune.toolchain.lmeval_gguf import LlamaVocabLM

DTYPES = ("bfloat16", "float32")


def load_gguf_weights(path: Path, dtype: str):
    """transformers model holding the GGUF's dequantized tensors, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise ToolchainError(f"transformers cannot read this GGUF ({str(exc).splitlines()[0][:160]})",
                             where=str(path), fix="use --backend llama.cpp for this file") from None
    return model.to(getattr(torch, dtype)).eval()


def batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped so that (rows x longest row) stays under max_tokens; longest first, so a
    batch's rows have similar lengths and little padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        if cur and max(longest, lengths[i]) * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lengths[i])
    if cur:
        out.append(cur)
    return out


@register_model("edgeprune-torch")
class TorchGGUFLM(LlamaVocabLM):
    def __init__(self, pretrained: str | Path, n_ctx: int = 2048, threads: int | None = None,
                 dtype: str = "bfloat16", max_batch_tokens: int = 512, **_ignored):
        import torch
        from llama_cpp import Llama

        from edgeprune.toolchain.llamacpp import quiet_stderr

        self.path = Path(pretrained)
        if dtype not in DTYPES:
            raise ToolchainError(f"unknown dtype '{dtype}'", where="--dtype", fix=f"choose one of {', '.join(DTYPES)}")
        if threads:
            torch.set_num_threads(threads)
        with quiet_stderr():
            vocab = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        super().__init__(vocab, n_ctx)
        self.model = load_gguf_weights(self.path, dtype)
        self.max_batch_tokens = int(max_batch_tokens)

    def _forward(self, inputs: list[list[int]], n_cont: list[int]):
        """Log-probabilities (float32, full vocabulary) at the last n_cont[i] positions of each input."""
        import torch

        # widths rounded up to a multiple of 32: oneDNN compiles a bf16 kernel per new shape, and
        # exact widths made hundreds of them (the first HellaSwag pass ran 4x slower than the next)
        width = -(-max(len(x) for x in inputs) // 32) * 32
        ids = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, : len(x)] = torch.tensor(x)
        # Right padding needs no attention mask: causal attention never looks right, and positions
        # count from 0 in every row.
        with torch.inference_mode():
            hidden = self.model.model(input_ids=ids).last_hidden_state
            picked = torch.cat([hidden[row, len(x) - n: len(x)] for row, (x, n) in enumerate(zip(inputs, n_cont))])
            logp = torch.log_softmax(self.model.lm_head(picked).float(), dim=-1)
        return torch.split(logp, n_cont)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        import torch

        # Identical model inputs (MMLU's one-token answers share context + nothing) are run once.
        jobs: dict[tuple[int, ...], list[int]] = {}
        conts = []
        for r, (_, ctx_enc, cont_enc) in enumerate(requests):
            whole = (ctx_enc + cont_enc)[-(self.n_ctx + 1):]
            jobs.setdefault(tuple(whole[:-1]), []).append(r)
            conts.append(cont_enc)
        keys = list(jobs)
        res: list[tuple[float, bool] | None] = [None] * len(requests)
        for g in tqdm(batches([len(k) for k in keys], self.max_batch_tokens), desc="torch loglikelihood (batches)",
                      disable=disable_tqdm, leave=False):
            n_cont = [max(len(conts[r]) for r in jobs[keys[i]]) for i in g]
            for i, logp in zip(g, self._forward([list(keys[i]) for i in g], n_cont)):
                for r in jobs[keys[i]]:  # reduce at once: full-vocabulary rows of a whole task need GBs
                    rows, cont = logp[-len(conts[r]):], conts[r]
                    picked = rows[range(len(cont)), cont]
                    res[r] = (float(picked.double().sum()), bool((rows.argmax(-1) == torch.tensor(cont)).all()))
        for req, r in zip(requests, res):
            if kwargs.get("cache_key", True) and req[0] is not None:
                self.cache_hook.add_partial("loglikelihood", req[0], r)
        return res

