"""Recovery training after pruning: LoRA (PEFT), a lean loop and a TRL path, distillation,
checkpoints. Loss maths live in edgeprune.methods.distill; the stage in edgeprune.stages.recover."""
