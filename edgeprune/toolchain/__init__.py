"""Adapters for third-party tools; the only modules that import them."""
