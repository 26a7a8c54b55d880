"""Every lecture notebook runs top to bottom in FAST mode (COURSE_FAST=1) without an error."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

LECTURES = sorted((Path(__file__).resolve().parents[1] / "lectures").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", LECTURES, ids=[p.stem for p in LECTURES])
def test_lecture_runs_in_fast_mode(path, tmp_path):
    nb = nbformat.read(str(path), as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), \
        f"{path.name} needs a cell tagged 'parameters'"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} is stored with outputs: clear them"
    env = dict(os.environ, COURSE_FAST="1", PYTHONWARNINGS="ignore")
    env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError, with the traceback, on any error
