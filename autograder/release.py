"""Generate the release (assignments/) from the source (solutions/) with nbgrader, and check it.

``nbgrader generate_assignment`` clears solutions and hidden tests, locks cells and adds
checksums. The check regenerates into a temporary folder and compares what matters - each
cell's type, source and metadata - ignoring volatile fields (outputs, execution counts, ids).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import notebook as nbu
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
    return [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


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
