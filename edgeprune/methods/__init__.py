"""Method maths. Importing this package registers every built-in method."""

from edgeprune.methods import depth  # noqa: F401
from edgeprune.methods import angular, attention_norm, heal, ppl_greedy, sparsity, width  # noqa: F401,E402
