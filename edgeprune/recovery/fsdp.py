"""FSDP for the lean recovery loop: the frozen base (and a live teacher) sharded over the
processes of `accelerate launch --use_fsdp --fsdp_version 2 ...` (or `--config_file
configs/accelerate/fsdp-cpu.yaml`), LoRA trained on top; without that launch nothing here runs.

Why torch's FSDP2 (`fully_shard`), applied here and not by `accelerator.prepare`:
- accelerate 1.15 switches to FSDP only on an accelerator: on a CPU its state stays MULTI_CPU and
  `prepare` would wrap the model in DDP, every process holding the whole model;
- FSDP2 shards each parameter on its own (a DTensor, dim 0), so the frozen base and the trainable
  LoRA tensors of one decoder layer share a unit as they are. FSDP1 flattens a unit into one
  parameter: it needs use_orig_params=True for mixed requires_grad and refuses mixed dtypes
  outright ("Must flatten tensors with uniform dtype"), i.e. a bf16 base under fp32 LoRA;
- with FSDP1 accelerate's plugin asks for a GPU at `Accelerator()` time (sync_module_states).
Both run on CPU with gloo (tried); FSDP2 is the one that also takes a bf16 base.

Gradients are reduce-scattered as a mean over processes, like DDP's all-reduce, so a recipe gives
the same optimisation on 1 or N processes (tests/test_recovery_fsdp.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from edgeprune.errors import ConfigError

CONFIG = "configs/accelerate/fsdp-cpu.yaml"


def requested() -> bool:
    """`accelerate launch` asked for FSDP (--use_fsdp, or a config file with distributed_type: FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_launch(trainer: str) -> None:
    """Refuse what this module cannot do, before `Accelerator()` (which itself fails on a CPU with
    FSDP1's defaults, with a message that does not say what to change)."""
    if not requested():
        return
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"FSDP version {version} requested; recovery shards with FSDP2", where="accelerate launch",
                          fix=f"add --fsdp_version 2 (or use --config_file {CONFIG})")
    if trainer != "lean":
        raise ConfigError(f"FSDP runs the lean trainer only, not '{trainer}'", where="recovery.train.trainer",
                          fix="use trainer: lean, or launch without FSDP")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


@dataclass
class Sharding:
    """How the models of one run are sharded: one device mesh over every process."""

    mesh: object
    mixed_precision: str = "no"
    activation_checkpointing: bool = False

    @classmethod
    def from_launch(cls, acc) -> "Sharding | None":
        """The run's sharding when FSDP was asked for on more than one process; None otherwise
        (one process has nothing to shard across, and runs the plain loop)."""
        if not requested() or acc.num_processes < 2:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(acc.device.type, (acc.num_processes,))
        return cls(mesh, acc.mixed_precision, _flag("FSDP_ACTIVATION_CHECKPOINTING"))

    def _policy(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # Compute in the launch's precision; gradients are reduced in fp32 (the LoRA weights are fp32).
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)

    def apply(self, model, train: bool = True):
        """Shard `model` in place: each decoder layer is a unit (its weights are gathered only while
        it runs), the embeddings, final norm and head form the root unit. Returns the same module."""
        from torch.distributed.fsdp import fully_shard

        if train and self.activation_checkpointing:
            # Non-reentrant: needs no input that requires grad, which a frozen embedding does not give.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy = self._policy()
        for block in decoder_layers(model):
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        return model


def decoder_layers(model) -> list:
    """The repeated blocks, by the class names HF lists as never split (LlamaDecoderLayer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"found no decoder layers to shard in {type(base).__name__}", where="FSDP",
                          fix="FSDP recovery supports HF Llama checkpoints")
    return layers


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a collective: every process must call it), else `t`."""
    return t.full_tensor() if is_sharded(t) else t


def local_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor, the same on every process) cut to `param`'s shard; no communication."""
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def full_optim_state(opt) -> dict:
    """The optimizer's state dict with every shard gathered: the same file a single process writes,
    so a checkpoint resumes on any number of processes. A collective under FSDP."""
    sd = opt.state_dict()
    sd["state"] = {i: {k: full(v) if torch.is_tensor(v) else v for k, v in st.items()}
                   for i, st in sd["state"].items()}
    return sd


def local_optim_state(opt, sd: dict) -> dict:
    """A whole-tensor optimizer state dict cut to this process's shards (moments have the param's
    shape; the step counter is a scalar and stays whole)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not any(is_sharded(p) for p in params):
        return sd
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {k: local_like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in st.items()}
    return {**sd, "state": state}
