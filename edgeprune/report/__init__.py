"""Manifest and human-readable reports of a run."""
