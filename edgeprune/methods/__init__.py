"""Method maths. Importing this package registers every built-in method."""

from edgeprune.methods import depth  # noqa: F401
