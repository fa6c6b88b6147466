"""Recovery recipe section (`recovery:` in recipes/*.yaml): LoRA, data, budget, distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from edgeprune.config.strict import Strict


class Lora(Strict):
    rank: PositiveInt = 16
    alpha: PositiveFloat = 32.0
    dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" is PEFT's own spelling for every nn.Linear except the output head.
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class RecoveryData(Strict):
    # dolly | dolly-hh | c4 | wikitext-val, or a .jsonl path ({"text"} or {"instruction","response"} rows)
    source: str = "dolly"
    max_length: PositiveInt = 256
    packing: bool = True
    completion_only: bool = True  # instruction rows: loss on the answer only
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    val_blocks: PositiveInt = 16  # cap on held-out blocks so validation stays cheap
    max_rows: PositiveInt | None = None


class Distill(Strict):
    temperature: PositiveFloat = 2.0
    alpha: float = Field(0.5, ge=0, le=1)  # weight of KD in kd+sft; kd alone uses 1.0
    topk_cache: PositiveInt | None = None  # None: teacher runs on the fly; K: cache top-K logits to disk
    cache_blocks: PositiveInt = 256  # blocks cached when the run is bounded by minutes, not steps


class Train(Strict):
    trainer: Literal["lean", "trl"] = "lean"
    lr: PositiveFloat = 2e-4
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(5, ge=0)
    batch_size: PositiveInt = 4  # global batch (split across processes under accelerate)
    epochs: PositiveFloat | None = None  # None: bounded by steps/minutes only
    steps: PositiveInt | None = None
    minutes: PositiveFloat | None = None
    eval_every: PositiveInt = 25
    patience: PositiveInt = 4  # evaluations without improvement before stopping
    checkpoint_every: PositiveInt = 25
    threads: PositiveInt | None = None
    # dtype the frozen weights (student base, live teacher) are loaded in; LoRA stays fp32. bfloat16
    # halves the memory of a large model (docs/recovery.md, FSDP) at the cost of exact fp32 losses.
    base_dtype: Literal["float32", "bfloat16"] = "float32"


class Recovery(Strict):
    version: Literal[1] = 1
    mode: Literal["sft", "kd", "kd+sft"] = "sft"
    teacher: Path | None = None  # None with a KD mode: the stage's unpruned input
    seed: int = 0
    lora: Lora = Lora()
    data: RecoveryData = RecoveryData()
    distill: Distill = Distill()
    train: Train = Train()

    @model_validator(mode="after")
    def _check(self) -> "Recovery":
        # The budget is checked when a run starts (stages/recover.py), not here: a recipe may
        # leave it to --steps/--minutes on the command line.
        t = self.train
        if t.trainer == "trl" and self.mode != "sft":
            raise ValueError(f"trainer 'trl' runs mode 'sft' only, got mode '{self.mode}'; use trainer 'lean' for KD")
        return self
