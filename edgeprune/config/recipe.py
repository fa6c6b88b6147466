"""Pipeline recipes (recipes/*.yaml): how to prune, export and measure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PositiveInt, model_validator

from edgeprune import quants
from edgeprune.config.evaluate import Evaluate
from edgeprune.config.recovery import Recovery
from edgeprune.config.strict import Strict
from edgeprune.errors import ConfigError


class Calibration(Strict):
    path: Path | None = None  # None: the C4 sample shipped with edgeprune
    samples: PositiveInt = 32
    seq_len: PositiveInt = 256
    seed: int = 0
    # Depth scoring reads one layer at a time from the safetensors (streaming/stream.py) when True,
    # loads the model when False; None: decide from the model's size vs available RAM.
    # Excluded from dumps, hence from every step's cache key: both paths give the same scores.
    stream: bool | None = Field(None, exclude=True)


class Depth(Strict):
    method: str = "block-influence"
    max_removed_fraction: float = Field(0.5, gt=0, lt=1)


class Width(Strict):
    # Registered width method that shrinks the planner's heads/FFN candidates: heads (heads only),
    # ffn (FFN only), taylor (both, from one Taylor pass). None: heads by head output norm and FFN
    # by activation, each through its own method (planner/methods.py).
    method: str | None = None


def _check(fn) -> None:
    try:
        fn()
    except ConfigError as exc:  # pydantic reports a ValueError with the key path
        raise ValueError(f"{exc.what} ({exc.fix})") from None


def _usable_quant(name: str) -> str:
    _check(lambda: quants.usable(name, imatrix=True))  # whether an imatrix is on is the Export's to check
    return name


# A registered quant type (edgeprune/quants.py), optionally with mixes: "Q4_K_M+head-low".
QuantName = Annotated[str, AfterValidator(_usable_quant)]


class Heal(Strict):
    """Training-free healing after pruning (stages/heal.py): a registered heal method, or "auto"
    (try the candidates and keep the one with the lowest held-out calibration loss)."""

    method: str = "auto"
    # The teacher's states are kept in RAM: samples x seq_len x layers x hidden x 8 bytes.
    calibration: Calibration = Calibration(samples=32, seq_len=512, seed=1)
    # "auto" scores each candidate method on these many extra windows, never fitted on.
    holdout_samples: PositiveInt = 8
    # Layer-local distillation after the closed-form fit (stages/heal_local.py): wall-clock minutes
    # shared by the layers before the cuts; 0 turns it off. Kept only if the held-out loss improves.
    local_minutes: float = Field(0.0, ge=0)
    local_lr: float = Field(5e-5, gt=0)
    # Then a short global distillation (stages/heal_global.py): wall-clock minutes of top-K KD against
    # the unpruned model on the fitting windows plus `global_samples` more, the teacher's passes
    # included; 0 turns it off. Kept only if the held-out loss improves.
    global_minutes: float = Field(0.0, ge=0)
    global_lr: float = Field(3e-4, gt=0)
    # "all": every decoder layer trains; "cut": only the layers from the first cut up (cheaper steps,
    # the frozen prefix computed once). On SmolLM2 -6 angular, per 4 minutes: all 52.6, cut 54.5.
    global_layers: Literal["all", "cut"] = "all"
    # Run the global step's trained layers and head loss through torch.compile (needs a C++ compiler;
    # without one the step runs eager). SmolLM2 -6, batch 4 x 256: bench/README, Healing throughput.
    global_compile: bool = True
    global_samples: int = Field(256, ge=0)  # the shipped C4 sample holds ~570 windows of 512
    # Text the global step distils on besides the fitting windows: `global_samples` windows of it, and
    # `holdout_samples` more that join the held-out set every keep-decision reads. None: later windows
    # of the calibration stream. C4 alone fits C4 and Wikipedia-like text, and a held-out set of C4
    # alone cannot see another domain degrade; a user's own text lets both see it.
    global_text: Path | None = None
    topk: PositiveInt = 64
    # Keep the teacher's probability outside its top K as one more class (methods/distill.kd_loss_topk)
    # instead of renormalising the K: the student is not taught to be overconfident.
    topk_tail: bool = True


class Export(Strict):
    quant: QuantName = "Q4_K_M"
    # Quantize with an importance matrix computed on calibration text (stages/imatrix.py).
    # None: on for the types where it measurably helps (QuantSpec.imatrix_default).
    imatrix: bool | None = None
    imatrix_calibration: Calibration = Calibration(samples=32, seq_len=512, seed=2)
    logits_cos_min: float = Field(0.995, gt=0, le=1)  # HF vs F16 GGUF agreement gate
    # Gate: mean KL(F16 || quantized) of next-token distributions on the verify prompt, in nats.
    # None: the quant type's default (QuantSpec.kld_max).
    kld_max: float | None = Field(None, gt=0)
    # The reference logits, weight check and imatrix read the checkpoint one layer at a time (True)
    # or load it in float32 (False); None: stream when float32 weights exceed 30 % of free RAM.
    # Excluded from dumps, hence from the step keys: both paths give the same numbers.
    stream: bool | None = Field(None, exclude=True)

    def uses_imatrix(self, quant: str | None = None) -> bool:
        spec = quants.get(quant or self.quant)
        return spec.imatrix_default if self.imatrix is None else self.imatrix

    @model_validator(mode="after")
    def _imatrix_when_needed(self) -> "Export":
        if not self.uses_imatrix():
            _check(lambda: quants.usable(self.quant, imatrix=False))
        return self


class Bench(Strict):
    repetitions: PositiveInt = 3
    warmup: int = Field(1, ge=0)
    # an oversubscribed benchmark is retaken at most busy_retakes times, busy_wait_s apart (planner/load_guard.py)
    busy_retakes: int = Field(3, ge=0)
    busy_wait_s: float = Field(60.0, ge=0)


class Quality(Strict):
    path: Path | None = None  # None: WikiText-2 test, shipped with edgeprune
    ctx: PositiveInt = 512
    windows: PositiveInt = 8
    kld: bool = True  # also KL(parent || candidate) on the same windows, parent = the unpruned HF import


def _known_mix(name: str) -> str:
    _check(lambda: quants.get(f"Q8_0+{name}", where="search.mixes"))
    return name


MixName = Annotated[str, AfterValidator(_known_mix)]


class Search(Strict):
    """The planner's joint search space (planner/candidates.py); the baseline is export.quant."""

    quants: list[QuantName] = Field(default_factory=lambda: ["Q4_K_M", "Q5_K_M", "Q4_0", "Q3_K_M"], min_length=1)
    # Per-tensor mixes (edgeprune/quants.py MIXES; "a+b" applies both) tried on top of every quant type.
    mixes: list[MixName] = Field(default_factory=list)
    # Fractions of query heads / FFN channels kept; values < 1 need a registered width method.
    heads_keep: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    ffn_keep: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    margin: float = Field(0.03, ge=0, lt=0.5)  # pick candidates predicted to beat the budget by this much
    def quant_choices(self) -> list[str]:
        """The quant axis of the search: each type alone, then with each mix ("Q4_K_M+head-low")."""
        return list(dict.fromkeys([*self.quants, *(f"{q}+{m}" for q in self.quants for m in self.mixes)]))

    # Measured tok/s on a shared CPU drift by 5-20 % between runs (bench/README): a candidate
    # predicted to miss by less than this is measured rather than declared infeasible.
    noise: float = Field(0.05, ge=0, lt=0.5)


class Recipe(Strict):
    version: Literal[1] = 1
    name: str = "default"
    seed: int = 0
    calibration: Calibration = Calibration()
    depth: Depth = Depth()
    width: Width = Width()
    export: Export = Export()
    bench: Bench = Bench()
    quality: Quality = Quality()
    max_iterations: PositiveInt = 4
    search: Search = Search()
    heal: Heal | None = None  # None: no training-free healing between prune and export
    recovery: Recovery | None = None  # None: no recovery stage between prune and export
    evaluate: Evaluate | None = None  # None: no zero-shot tasks on the delivered GGUF
