"""The package's architecture, checked on its source (nothing is imported).

ulviz/ is a stack of layers, one sub-package each (:data:`LAYERS`, bottom first); a module imports
only modules of its own sub-package or of lower layers (two sub-packages of one rank, data and
store, import neither each other), a late import inside a function included (it is an arrow all
the same). Beside that: no circle of imports between modules, none between the
sub-packages, nothing inside the package imports the facade ``ulviz/__init__.py`` (the public API,
which may import any layer), only ``ulviz/app/ui.py`` imports streamlit, and a module longer than
500 lines says why at its top.

Every check is a function of the source tree, so :func:`test_the_checks_catch_what_they_forbid`
can run them on a small tree built to break each rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ulviz"

# sub-package -> rank, bottom first; a module may import its own rank or lower ones
LAYERS = {
    "core": 1,      # errors, config, devices, provenance, accuracy
    "data": 2,      # datasets, recipes, tasks
    "store": 2,     # run files and everything else on disk (HDF5)
    "models": 3,    # architectures, train and eval steps
    "protect": 4,   # unlearnable methods, defenses, the protected training set
    "measure": 5,   # SAL, UD, landscapes, paths, probe, sharpness, surgery, perturbations, compare
    "training": 6,  # the training loop (it measures SAL as it trains), verify
    "studies": 7,   # demo, cross-task, defense studies, sweeps
    "app": 8,       # the dashboard's library side: ui, plots, jobs, teaching
    "cli": 9,       # the `ulviz` command
}
STREAMLIT_MODULES = {"ulviz.app.ui"}  # the only module of the package that may import streamlit
LONG = 500  # lines; a longer module must say why at its top
REASON = "Longer than 500 lines because"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    """Module -> (imported name, line) for every import statement in it, top-level or inside a
    function, relative ones resolved. A package module's name stands for the module when one of
    its modules is imported by name (``from .store import runs`` -> ``ulviz.store.runs``)."""
    mods = modules(root)
    out = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    found.append((sub if sub in mods else source, node.lineno))
        out[name] = found
    return out


def graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Module -> {module of the package it imports: line of the first such import}."""
    mods = modules(root)
    out = {}
    for name, found in imports(root).items():
        edges = {}
        for target, line in found:
            while target not in mods and "." in target:  # ``import ulviz.a.b`` names ulviz.a.b; a name inside a module
                target = target.rsplit(".", 1)[0]
            if target in mods and target != name:
                edges.setdefault(target, line)
        out[name] = edges
    return out


def layer_of(module: str) -> str | None:
    """The sub-package (layer) a module lies in; None for the facade."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One circle (a path that returns to its start) per strongly connected group of nodes."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges.get(v, {}):
                groups.append(set(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    out = []
    for group in groups:  # a shortest circle through the group's first member, by breadth-first search
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = [w for w in sorted(edges.get(path[-1], {})) if w in group]
            if start in nxt:
                out.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return out


def describe(path: list[str], edges: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {edges[a][b]})" for a, b in zip(path, path[1:])) + f" -> {path[-1]}"


def module_cycles(root: Path = ROOT) -> list[str]:
    edges = graph(root)
    return [describe(c, edges) for c in cycles(edges)]


def package_cycles(root: Path = ROOT) -> list[str]:
    """Circles between the sub-packages (layers), each arrow one import that makes it."""
    edges: dict[str, dict[str, int]] = {}
    example: dict[tuple[str, str], str] = {}
    for a, targets in graph(root).items():
        for b, line in targets.items():
            pa, pb = layer_of(a), layer_of(b)
            if pa and pb and pa != pb:
                edges.setdefault(pa, {}).setdefault(pb, line)
                example.setdefault((pa, pb), f"{a}:{line} imports {b}")
    return [" -> ".join(c) + "  (" + "; ".join(example[(x, y)] for x, y in zip(c, c[1:])) + ")"
            for c in cycles(edges)]


def layer_violations(root: Path = ROOT) -> list[str]:
    """Imports that point up the stack, or at the facade, or come from a module outside every layer."""
    out = []
    for a, targets in sorted(graph(root).items()):
        la = layer_of(a)
        if la is None:
            continue  # the facade may import any layer
        if la not in LAYERS:
            out.append(f"{a} lies in no layer: add {PACKAGE}/{la} to LAYERS or move the module into a layer")
            continue
        for b, line in sorted(targets.items()):
            lb = layer_of(b)
            if lb is None:
                out.append(f"{a}:{line} imports the facade {b}; import the module that defines the name instead")
            elif lb in LAYERS and LAYERS[lb] > LAYERS[la]:
                out.append(f"{a}:{line} imports {b}: {la} (layer {LAYERS[la]}) may not import {lb} (layer "
                           f"{LAYERS[lb]}); move what it needs down to {la} or below, or the importing code up")
            elif lb in LAYERS and lb != la and LAYERS[lb] == LAYERS[la]:
                out.append(f"{a}:{line} imports {b}: {la} and {lb} are side by side (layer {LAYERS[la]}) and "
                           f"import neither each other; move what it needs down a layer")
    return out


def streamlit_importers(root: Path = ROOT) -> list[str]:
    return [f"{m}:{line} imports {target}" for m, found in sorted(imports(root).items()) for target, line in found
            if target.split(".")[0] == "streamlit" and m not in STREAMLIT_MODULES]


def unexplained_long_modules(root: Path = ROOT) -> list[str]:
    out = []
    for name, path in modules(root).items():
        text = path.read_text()
        n = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > LONG and REASON not in " ".join(doc.split()):
            out.append(f"{path.relative_to(root)}: {n} lines; split it, or say why in its docstring "
                       f"(a sentence with {REASON!r})")
    return out


# -- the tests -----------------------------------------------------------------------------------

def test_every_module_lies_in_a_layer():
    stray = [m for m in modules() if layer_of(m) is not None and layer_of(m) not in LAYERS]
    assert not stray, f"modules outside every layer of {sorted(LAYERS)}: {stray}"


def test_no_import_cycle_between_modules():
    found = module_cycles()
    assert not found, "import circles (late imports inside functions count):\n" + "\n".join(found)


def test_no_import_cycle_between_layers():
    found = package_cycles()
    assert not found, "circles between sub-packages:\n" + "\n".join(found)


def test_imports_point_down_the_layers():
    found = layer_violations()
    assert not found, "imports against the layer order (LAYERS in tests/test_architecture.py):\n" + "\n".join(found)


def test_only_the_ui_module_imports_streamlit():
    found = streamlit_importers()
    assert not found, (f"inside the package only {sorted(STREAMLIT_MODULES)} may import streamlit (the pages "
                       "import it themselves):\n" + "\n".join(found))


def test_long_modules_say_why():
    found = unexplained_long_modules()
    assert not found, "\n".join(found)


def test_the_facade_names_hide_no_layer():
    """No public name of the facade hides a sub-package (``ulviz.train`` is the function; its
    layer is ``ulviz.training``), so ``import ulviz.<layer>.<module>`` always works."""
    tree = ast.parse((ROOT / PACKAGE / "__init__.py").read_text())
    exported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not exported & set(LAYERS)
    import importlib
    for layer in LAYERS:
        assert importlib.import_module(f"{PACKAGE}.{layer}").__name__ == f"{PACKAGE}.{layer}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_what_they_forbid(tmp_path):
    """Each check, on a small package built to break its rule, reports the offending import."""
    long_module = '"""A long module."""\n' + "x = 1\n" * LONG
    root = _tree(tmp_path, {
        "__init__.py": "from .core.a import f\n",
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from ..measure.b import g  # late, and upwards\n",
        "core/c.py": "from . import d\n",
        "core/d.py": "import ulviz.core.c\nimport ulviz\n",
        "data/__init__.py": "",
        "data/e.py": "from ..store import s\n",
        "store/__init__.py": "",
        "store/s.py": "from ..data.e import x\n",
        "measure/__init__.py": "",
        "measure/b.py": "import streamlit as st\n",
        "measure/long.py": long_module,
        "extra/__init__.py": "",
    })
    assert any("ulviz.core.a:2 imports ulviz.measure.b" in v for v in layer_violations(root))
    assert any("imports the facade" in v for v in layer_violations(root))
    assert any("ulviz.extra lies in no layer" in v for v in layer_violations(root))
    assert any("ulviz.data.e:1 imports ulviz.store.s: data and store are side by side" in v
               for v in layer_violations(root))
    assert any(c.startswith("ulviz.core.c (line 1) -> ulviz.core.d (line 1) -> ulviz.core.c") for c in module_cycles(root))
    assert any(c.startswith("data -> store -> data") for c in package_cycles(root))
    assert streamlit_importers(root) == ["ulviz.measure.b:1 imports streamlit"]
    assert [v.split(":")[0] for v in unexplained_long_modules(root)] == ["ulviz/measure/long.py"]
    (root / PACKAGE / "measure" / "long.py").write_text(f'"""A long module. {REASON} it must be."""\n' + "x = 1\n" * LONG)
    assert unexplained_long_modules(root) == []
