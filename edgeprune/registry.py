"""One registry for every pluggable method (depth scorers, width scorers, runners, quant types).

Lookups of an unknown name answer with "did you mean" so a typo costs one try.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from edgeprune.errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}
_META: dict[str, dict[str, dict]] = {}


def register(kind: str, name: str, **meta: Any) -> Callable:
    def deco(obj: Any) -> Any:
        _REGISTRY.setdefault(kind, {})[name] = obj
        _META.setdefault(kind, {})[name] = {"kind": kind, "name": name, **meta}
        return obj

    return deco


def names(kind: str) -> list[str]:
    _load_builtins(kind)
    return sorted(_REGISTRY.get(kind, {}))


def meta(kind: str, name: str) -> dict:
    get(kind, name)
    return _META.get(kind, {}).get(name, {})


def kinds() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


# What an unknown name is called in the error; other kinds are methods ("unknown depth method").
_NOUNS = {"runner": "runner", "quant": "quant type"}


def get(kind: str, name: str, where: str = "--method") -> Any:
    _load_builtins(kind)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(sorted(table))}"
    raise ConfigError(f"unknown {_NOUNS.get(kind, f'{kind} method')} '{name}'", where=where, fix=hint)


def _load_builtins(kind: str | None = None) -> None:
    # Imported lazily so `import edgeprune` stays cheap and free of torch; runners and quant types
    # alone (the CLI's --runner choices, a target's validation) do not import the methods (torch).
    if kind in (None, "runner"):
        import edgeprune.devices  # noqa: F401
    if kind in (None, "quant"):
        import edgeprune.quants  # noqa: F401
    if kind not in ("runner", "quant"):
        import edgeprune.methods  # noqa: F401
