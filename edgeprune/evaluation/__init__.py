"""Evaluation: pure metrics (perplexity terms, KL divergence, paired bootstrap) and the packaged
lm-eval task YAMLs (tasks/). Running lm-eval lives in toolchain/lmeval*.py."""
