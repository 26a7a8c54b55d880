"""Data flows one way (DESIGN.md section 2): no module imports from a later lifecycle layer.

Every ``import`` in reference_impl is read with ``ast`` - those inside functions too, which a
plain import-time check would miss - and resolved to the top-level part of the package it
names (``reference_impl.training.ema`` -> ``training``). Layers, earliest first:

    data, models, diffusion, config, paths   (the ingredients)
    curation, evaluation
    training, distributed
    alignment, adapters
    experiments, pipeline, CLI (cli, __main__, bench)

Within a layer two parts may not import each other both ways either (a cycle): the piece both
need moves down to where both may import it. Nor may modules, anywhere in the package: no file
imports, through any chain of imports, a file that imports it. ``from . import x`` reads the
package's ``__init__.py`` as well as ``x``: a package's ``__init__`` may import its own modules,
but a module of it that says ``from . import ...`` makes a cycle with it.
"""
import ast
from pathlib import Path

import networkx as nx  # installed with torch, which depends on it

PKG = Path(__file__).resolve().parents[1] / "reference_impl"
LAYERS = [
    {"data", "models", "diffusion", "config", "paths", "__init__"},
    {"curation", "evaluation"},
    {"training", "distributed"},
    {"alignment", "adapters"},
    {"experiments", "pipeline", "cli", "__main__", "bench", "configs"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """``reference_impl.training.ema`` -> ``training``; the package itself -> ``__init__``."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute module) of every reference_impl import in the file, at any depth."""
    here = ["reference_impl", *path.relative_to(pkg).with_suffix("").parts]
    package = here[:-1]  # what ``from .`` means (for __init__.py: its own package)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("reference_impl")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("reference_impl"):
                found.append((node.lineno, mod))
                # ``from . import checkpoint``: a name may be a module of that package
                folder = pkg.joinpath(*mod.split(".")[1:])
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names
                          if (folder / f"{a.name}.py").exists() or (folder / a.name).is_dir()]
    return found


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported part) for every cross-part import."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        src = part_of(".".join(["reference_impl", *path.relative_to(PKG).with_suffix("").parts]))
        for line, mod in imports(path):
            dst = part_of(mod)
            if dst != src:
                out.append((str(path.relative_to(PKG.parent)), line, src, dst))
    return out


def module_graph(pkg: Path = PKG) -> nx.DiGraph:
    """Every import between two modules of the package, an edge importer -> imported whose
    ``where`` is the first ``file:line`` that makes it. A package is its ``__init__.py``."""
    def name(path: Path) -> str:
        parts = path.relative_to(pkg).with_suffix("").parts
        return ".".join(["reference_impl", *(parts[:-1] if parts[-1] == "__init__" else parts)])

    files = {name(path): path for path in sorted(pkg.rglob("*.py"))}
    graph = nx.DiGraph()
    for src, path in files.items():
        for line, dst in sorted(imports(path, pkg)):
            if dst in files and dst != src and not graph.has_edge(src, dst):
                graph.add_edge(src, dst, where=f"{path.relative_to(pkg.parent)}:{line}")
    return graph


def module_cycles(graph: nx.DiGraph) -> list[str]:
    """One entry per group of modules that import each other in a circle (a strongly connected
    component of more than one module), with every import inside it: cut one of those."""
    found = []
    for group in sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1):
        inside = sorted(f"{a} -> {b} ({where})"
                        for a, b, where in graph.subgraph(group).edges(data="where"))
        found.append(f"{', '.join(group)}:\n    " + "\n    ".join(inside))
    return found


def test_every_part_has_a_layer():
    parts = {part_of(".".join(["reference_impl", *p.relative_to(PKG).with_suffix("").parts]))
             for p in PKG.rglob("*.py")}
    assert parts <= set(LAYER), f"give these a layer in LAYERS: {sorted(parts - set(LAYER))}"


def test_no_import_from_a_later_layer():
    bad = [f"{f}:{line}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
           for f, line, src, dst in edges() if LAYER[dst] > LAYER[src]]
    assert not bad, "an earlier layer imports a later one:\n" + "\n".join(bad)


def test_no_cycle_between_parts():
    pairs = {(src, dst): f"{f}:{line}" for f, line, src, dst in edges()}
    bad = [f"{a} <-> {b}: {where} and {pairs[(b, a)]}" for (a, b), where in sorted(pairs.items())
           if (b, a) in pairs and a < b]
    assert not bad, "parts that import each other:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    sample = PKG / "diffusion" / "sampling.py"
    mods = {m for _, m in imports(sample)}
    assert all(m.startswith("reference_impl.") for m in mods)
    trainer = {m for _, m in imports(PKG / "training" / "trainer.py")}
    assert "reference_impl.training.checkpoint" in trainer  # ``from . import checkpoint as ckpt``
    assert "reference_impl.data.curriculum" in trainer  # also imported inside a function


def test_no_cycle_between_modules():
    cycles = module_cycles(module_graph())
    assert not cycles, "modules that import each other, through a chain of imports:\n" + \
        "\n".join(cycles)


def test_the_cycle_checker_finds_a_cycle(tmp_path):
    """A package whose ``__init__`` imports a module (inside a function) that says
    ``from . import sibling``; the sibling imports a third module, which imports nothing back."""
    pkg = tmp_path / "reference_impl"
    (pkg / "part").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "part" / "__init__.py").write_text("def run():\n    from . import stages\n")
    (pkg / "part" / "stages.py").write_text("from . import launch\n")
    (pkg / "part" / "launch.py").write_text("from ..other import helper\n")
    (pkg / "other.py").write_text("import json\n")
    graph = module_graph(pkg)
    assert graph.edges["reference_impl.part.stages", "reference_impl.part"]["where"] == \
        "reference_impl/part/stages.py:1"
    cycles = module_cycles(graph)
    assert [c.splitlines() for c in cycles] == [[
        "reference_impl.part, reference_impl.part.stages:",
        "    reference_impl.part -> reference_impl.part.stages (reference_impl/part/__init__.py:2)",
        "    reference_impl.part.stages -> reference_impl.part (reference_impl/part/stages.py:1)",
    ]], cycles
    (pkg / "part" / "stages.py").write_text("from .launch import helper\n")  # the fix
    assert module_cycles(module_graph(pkg)) == []
