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
    _load_builtins()
    return sorted(_REGISTRY.get(kind, {}))


def meta(kind: str, name: str) -> dict:
    get(kind, name)
    return _META.get(kind, {}).get(name, {})


def kinds() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(kind: str, name: str) -> Any:
    _load_builtins()
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(sorted(table))}"
    raise ConfigError(f"unknown {kind} method '{name}'", where="--method", fix=hint)


def _load_builtins() -> None:
    # Imported lazily so `import edgeprune` stays cheap and free of torch.
    import edgeprune.devices  # noqa: F401
    import edgeprune.methods  # noqa: F401
    import edgeprune.quants  # noqa: F401
