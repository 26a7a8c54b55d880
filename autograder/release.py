"""Generate the release (assignments/) from the source (solutions/) with nbgrader, and check it.

``nbgrader generate_assignment`` clears solutions and hidden tests, locks cells and adds
checksums; it keeps the notebook's metadata, so the release carries the assignment's
declaration of what the student must write (``metadata.autograder``, scan.py). The check
regenerates into a temporary folder and compares what matters - each cell's type, source and
metadata, and the notebook's ``autograder`` metadata - ignoring volatile fields (outputs,
execution counts, ids), and checks each declaration (``declaration_problems``).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import notebook as nbu
from . import scan
from .batch import assignments, venv_env

CONFIG = Path(__file__).resolve().parent / "nbgrader_config.py"


def generate(course: Path, release_dir: Path | None = None) -> None:
    """Run ``nbgrader generate_assignment`` for every assignment of ``course``."""
    course = Path(course).resolve()
    env = venv_env()
    env["COURSE_ROOT"] = str(course)
    # nbgrader reads nbgrader_config.py from the Jupyter config path: put ours first.
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join([str(CONFIG.parent)] + [
        p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p])
    for a in assignments(course):
        cmd = [str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", a,
               "--force", "--no-db", "--log-level=WARN"]
        if release_dir is not None:
            cmd.append(f"--CourseDirectory.release_directory={Path(release_dir).resolve()}")
        proc = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {a} failed:\n{proc.stderr[-3000:]}")


def _essence(nb) -> list[tuple]:
    return [("notebook", "", dict(nb.metadata.get("autograder", {})))] + \
        [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


def stale(course: Path) -> list[str]:
    """Differences between ``course/assignments`` and a fresh generation (empty: up to date)."""
    course = Path(course).resolve()
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(course, Path(tmp))
        fresh_files = {p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file()}
        rel = course / "assignments"
        have = {p.relative_to(rel) for p in rel.rglob("*") if p.is_file()} if rel.exists() else set()
        for p in sorted(fresh_files ^ have):
            problems.append(f"{p}: {'missing from' if p in fresh_files else 'extra in'} assignments/")
        problems += declaration_problems(course)
        for p in sorted(fresh_files & have):
            if p.suffix != ".ipynb":
                if (Path(tmp) / p).read_bytes() != (rel / p).read_bytes():
                    problems.append(f"{p}: differs")
                continue
            a, b = _essence(nbu.read(rel / p)), _essence(nbu.read(Path(tmp) / p))
            if a != b:
                k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                problems.append(f"{p}: differs from a fresh generation at cell {k}")
    return problems


def _reference_imports(path: Path) -> set[str]:
    """The reference_impl modules a file imports (at any depth, relative imports resolved)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return set()
    root = scan.module_file("reference_impl.__init__")
    here = (["reference_impl", *path.resolve().relative_to(root.parent).with_suffix("").parts]
            if root is not None and path.resolve().is_relative_to(root.parent) else [])
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = here[:len(here) - n.level] if n.level else []
            mod = ".".join(base + ([n.module] if n.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in n.names}
    return {m for m in out if m.startswith("reference_impl")}


def _reaches(modules: set[str], targets: set[str]) -> set[str]:
    """The targets that importing ``modules`` imports, through reference_impl's own imports."""
    class Imports(dict):  # the import graph, each module's edges read when first asked for
        def get(self, m, default=()):
            f = scan.module_file(m) or scan.module_file(m + ".__init__")
            return _reference_imports(f) if f is not None else default

    seen = scan.closure(Imports(), modules)
    return {t for t in targets if any(m == t or m.startswith(t + ".") for m in seen)}


def declaration_problems(course: Path) -> list[str]:
    """What is wrong with the assignments' declarations of what the student must write: a
    function, test or module that does not exist, a finding in the
    instructor's own solution or given cells, or a module the notebook itself imports (its
    given code or the solution) that needs a module the jail withholds."""
    problems = []
    withheld_anywhere = set(scan.course_declaration(str(course))["withhold"])
    for a, nbs in assignments(course).items():
        for name in nbs:
            src = nbu.read(course / "solutions" / a / name)
            decl = scan.declaration(src)
            where = f"{a}/{name}"
            tests = {nbu.grade_id(c) for c in src.cells if nbu.is_test(c)}
            code = [nbu.solution_text(c.source) if nbu.is_solution(c) else c.source
                    for c in src.cells if c.cell_type == "code" and not nbu.is_test(c)]
            defined = set(scan.analyse(code, dict(decl, parts=[]))[1])
            for p in decl["parts"]:
                for f in p["functions"]:
                    if f not in defined:
                        problems.append(f"{where}: {p['name']} declares {f}, which the "
                                        "solution does not define")
                for t in p["tests"]:
                    if t not in tests:
                        problems.append(f"{where}: {p['name']} lists {t}, not a test cell")
                for m in p["reference"]:
                    if scan.module_file(m) is None:
                        problems.append(f"{where}: reference module {m} not found")
            for m in decl["withhold"]:
                if scan.module_file(m) is None:
                    problems.append(f"{where}: withheld module {m} not found")
            for p, found in zip(decl["parts"], scan.part_findings(code, decl)):
                for f in found:
                    problems.append(f"{where}: the solution itself has {f.flag()} in "
                                    f"{p['name']}")
            uses = set()
            for text in code:
                tree = scan._parse(text)
                for n in ast.walk(tree) if tree is not None else ():
                    for imported, _ in scan._imports(n):
                        if imported.startswith("reference_impl"):
                            uses.add(imported)
            for m in sorted(_reaches(uses, withheld_anywhere)):
                problems.append(f"{where}: the notebook imports reference_impl code that needs "
                                f"{m}, which the jail withholds")
    return problems
