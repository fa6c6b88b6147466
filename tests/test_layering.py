"""Import layering, checked on the source with ast (no import-linter needed).

The allowed order, top to bottom: a top-level unit (subpackage or module of edgeprune) may import
units of its own layer or of lower layers, never of a higher one; and no two units may import each
other, directly or round a longer loop. Imports inside functions count: a lazy import is still a
dependency. The one exception is the registry's plugin discovery (registry._load_builtins), which
imports the built-in methods, runners and quant types so that they register themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgeprune

ROOT = Path(edgeprune.__file__).parent

LAYERS = [
    ("__main__", "cli", "cli_eval", "cli_errors"),               # click entry points only
    ("commands",),                                                # one stage outside a plan (export, bench, eval)
    ("planner",),                                                 # budget -> plan -> search loop
    ("stages",),                                                  # prune, recover, export, evaluate, bench
    ("recovery", "report"),                                       # training loop; manifest, tables, cards
    ("store", "devices", "streaming", "methods", "surgery", "evaluation"),  # step store; bench runners;
    # layer-by-layer plumbing; maths; surgery
    ("toolchain", "targets", "data"),                             # llama.cpp/gguf/hf; cost model; texts
    # strict configs, specs, the registry, atomic writes
    ("config", "quants", "registry", "paths", "errors", "atomic", "faults", "__init__"),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
PLUGIN_DISCOVERY = ("registry", "_load_builtins")


def unit_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0].removesuffix(".py")


def imports(source: str):
    """(line, imported unit, enclosing function) for every `edgeprune.X` import in the source."""
    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] if child.module != "edgeprune" else [f"edgeprune.{a.name}" for a in child.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "edgeprune" and len(parts) > 1 and parts[1] in UNITS:
                    yield child.lineno, parts[1], func
            yield from walk(child, inner)

    yield from walk(ast.parse(source), None)


UNITS = {unit_of(p) for p in ROOT.rglob("*.py")}


def edges() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: first place it is imported}"""
    out: dict[str, dict[str, str]] = {u: {} for u in UNITS}
    for path in sorted(ROOT.rglob("*.py")):
        src = unit_of(path)
        for line, dst, func in imports(path.read_text(encoding="utf-8")):
            if dst != src and (src, func) != PLUGIN_DISCOVERY:
                out[src].setdefault(dst, f"{path.relative_to(ROOT.parent)}:{line}")
    return out


def test_every_unit_has_a_layer():
    assert not UNITS - set(LAYER), f"place these in LAYERS: {sorted(UNITS - set(LAYER))}"


def test_no_upward_import():
    upward = [f"{where}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
              for src, targets in edges().items() for dst, where in targets.items()
              if src in LAYER and dst in LAYER and LAYER[dst] < LAYER[src]]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = edges()
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(" -> ".join(path + [nxt]) + f"  ({graph[node][nxt]})")
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest unit
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_lazy_imports():
    """The checks are only as good as `imports`: a function-level import must count."""
    source = "import edgeprune.stages\ndef f():\n    from edgeprune.planner.run import run_plan\n"
    assert [(dst, func) for _, dst, func in imports(source)] == [("stages", None), ("planner", "f")]


def test_sft_labels_use_the_losses_ignore_index():
    """data/sft.py keeps its own IGNORE so that data does not import methods; they must agree."""
    from edgeprune.data.sft import IGNORE as DATA_IGNORE
    from edgeprune.methods.distill import IGNORE as LOSS_IGNORE

    assert DATA_IGNORE == LOSS_IGNORE == -100
