from edgeprune.store.step_store import StepStore, file_hash, tree_hash

__all__ = ["StepStore", "file_hash", "tree_hash"]
