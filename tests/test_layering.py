"""The package's import graph: arrows only point down the layers, no private name crosses a package, and an import
inside a function says why it is there. Read off the source with `ast` (nothing is imported)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "saferlhf_jax"

# top to bottom: a package imports only from the layers below its own
LAYERS = (("pipeline",), ("testbed",), ("evaluation", "planner"), ("algorithms",), ("training", "generation"),
          ("models", "data", "checkpoint"), ("ops", "parallel"), ("errors", "assets", "__init__"))
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports():
    """(file, line, importing package, imported module, imported names, inside a function?) of every import of
    saferlhf_jax in the package."""
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        src = _package(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saferlhf_jax"):
                targets = [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [(a.name, "") for a in node.names if a.name.startswith("saferlhf_jax")]
            else:
                continue
            inside, p = False, parents.get(node)
            while p is not None and not inside:
                inside = isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef))
                p = parents.get(p)
            for module, name in targets:
                # `from saferlhf_jax import ops`: the package is the name itself
                dst = _package(f"{module}.{name}") if module == "saferlhf_jax" else _package(module)
                yield path, node.lineno, src, dst, name, inside, source.splitlines()[node.lineno - 2:node.lineno]


def test_every_arrow_points_down():
    up = [f"{p.relative_to(ROOT)}:{line}: {src} → {dst}" for p, line, src, dst, *_ in _imports()
          if src != dst and LEVEL[dst] <= LEVEL[src]]
    assert not up, up


def test_no_private_name_crosses_a_package():
    crossing = [f"{p.relative_to(ROOT)}:{line}: {src} imports {dst}.{name}" for p, line, src, dst, name, *_ in
                _imports() if name.startswith("_") and src != dst]
    assert not crossing, crossing


def test_function_local_imports_are_few_and_say_why():
    local = [(p, line, above) for p, line, _, _, _, inside, above in _imports() if inside]
    assert len(local) <= 10, [f"{p.relative_to(ROOT)}:{line}" for p, line, _ in local]
    unexplained = [f"{p.relative_to(ROOT)}:{line}" for p, line, above in local
                   if not any("local:" in text for text in above)]
    assert not unexplained, unexplained


def test_the_loop_settings_are_read_in_one_place():
    """train.stop_after_steps and train.max_skipped_fraction belong to the one stage loop (training/loop.py)."""
    readers = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                     if "stop_after_steps" in p.read_text() or "max_skipped" in p.read_text())
    assert readers == ["training/loop.py"], readers
