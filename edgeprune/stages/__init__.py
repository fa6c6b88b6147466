"""Pipeline stages: small callables that take and return artifacts (paths + metadata)."""
