"""Applying a pruning decision to a model."""
