"""The import graph of our packages flows one way (issue #14).

Every ``import`` of ours is read from the source with ``ast`` -- at module level *and* inside functions, so a
function-local import cannot hide a cycle -- and resolved to the module it names (``from renderers import pbr`` is
an edge to ``renderers.pbr``). Two rules:

- no cycle among our modules;
- no upward import: each module belongs to the layer of its longest matching prefix in ``LAYERS`` and may import only
  its own layer or those below it.

The layers, bottom to top (README, "How it fits together"):

0. ``foundation``: the shared vocabulary (cameras, the shapes and materials worlds, mesh I/O, device copies).
1. ``renderers.kernels``: the op families with their backend switch.
2. ``renderers``: the scenes.
3. ``guidance.priors``: the diffusion priors, their wrappers and the eps/v/x0 conversions.
4. ``guidance``: the objectives.
5. ``engine``: configuration, the training loop, run folders, export.
6. the front ends: the ``engine`` command's modules, the batch runner and the web app.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("foundation", "renderers", "guidance", "engine", "apps")

LAYERS: dict[str, int] = {
    "foundation": 0,
    "renderers.kernels": 1,
    "renderers": 2,
    "guidance.priors": 3,
    "guidance": 4,
    "engine": 5,
    "engine.cli": 6,
    "engine.cli_app": 6,
    "engine.cli_batch": 6,
    "engine.cli_export": 6,
    "engine.cli_material": 6,
    "engine.cli_texture": 6,
    "engine.cli_train_prior": 6,
    "engine.batch": 6,
    "engine.batch_report": 6,
    "apps": 6,
}


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, pathlib.Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in mods:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" for a in node.names] + [origin]
                # `from pkg import sub` names the submodule; `from pkg import name` names pkg itself
                targets = [t for t in targets[:-1] if t in mods] or [origin]
            for t in targets:
                dep = _resolve(t, mods)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def layer(mod: str) -> int:
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[best]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for mod in import_graph():
        assert any(mod == p or mod.startswith(p + ".") for p in LAYERS), mod


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_no_upward_import():
    graph = import_graph()
    upward = sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                    for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_foundation_imports_nothing_of_ours():
    graph = import_graph()
    assert {m: sorted(d) for m, d in graph.items()
            if m.startswith("foundation") and any(not x.startswith("foundation") for x in d)} == {}


def test_the_checker_sees_function_local_imports_and_cycles():
    """The checker itself: a function-local import is an edge, and a two-module loop is reported."""
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert _cycles(graph) == [["a", "b"]]
    src = "def f():\n    from renderers import pbr\n"
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    assert nodes and nodes[0].module == "renderers"
