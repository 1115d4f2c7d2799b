"""The package map of docs/design.md, enforced: a package imports only packages below it.

Layers, lowest first (same layer = siblings that must not import each other):

    0  core                     errors, I/O, locks, distributed, XLA settings, gin, profiling
    1  layout                   the run directory's names (imports nothing of the project)
    2  data, partitioning       task pools, prompts, vocabularies | mesh, rules, shardings
    3  models                   Flax T5 / LLaMA, their kind, batches, checkpoints, conversion
    4  training, scoring        the trainer | the prompt-uncertainty scorer
    5  loop, aot                the active loop | ahead-of-time compilation for a target
    6  reporting                tables, curves, the HTML report of a run directory
    7  commands                 the command line: flags, gin, one library call each
    8  main                     the entry point

Every `import` counts, at module top or inside a function: a lazy import hides a dependency
from a reader, not from this test.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "activeit_jax"

# The package's own __init__ only installs the deprecated-name aliases (core.moved_modules).
LAYERS = {"core": 0, "__init__": 1, "layout": 1, "data": 2, "partitioning": 2, "models": 3,
          "training": 4, "scoring": 4, "loop": 5, "aot": 5, "reporting": 6, "commands": 7,
          "main": 8}


def _unit(module: str) -> str:
    """'activeit_jax.scoring.pool' -> 'scoring'; 'activeit_jax' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported project module) of every import statement in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "activeit_jax":
            if node.module == "activeit_jax":
                out += [(node.lineno, f"activeit_jax.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names
                    if a.name.split(".")[0] == "activeit_jax"]
    return out


def layer_violations(package: pathlib.Path = PACKAGE) -> list[str]:
    """'file:line imports X (layer a) from Y (layer b)' for every import that goes up or
    sideways."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        unit = _unit(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
        if unit not in LAYERS:
            found.append(f"{rel}: package {unit!r} has no layer in LAYERS")
            continue
        for line, module in _imports(path):
            target = _unit(module)
            if target == unit:
                continue
            if target not in LAYERS or LAYERS[target] >= LAYERS[unit]:
                found.append(f"{rel}.py:{line} ({unit}, layer {LAYERS[unit]}) imports "
                             f"{module} ({target}, layer {LAYERS.get(target)})")
    return found


def test_no_package_imports_one_above_or_beside_it():
    assert layer_violations() == []


def test_the_check_finds_an_upward_import(tmp_path):
    fake = tmp_path / "activeit_jax"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "x.py").write_text("def f():\n    from activeit_jax.loop import stages\n")
    (fake / "training").mkdir()
    (fake / "training" / "y.py").write_text("from activeit_jax.scoring import pool\n")
    found = layer_violations(fake)
    assert len(found) == 2
    assert "data/x.py:2" in found[0] and "activeit_jax.loop" in found[0]
    assert "training/y.py:1" in found[1] and "activeit_jax.scoring" in found[1]
