"""Grade one student's notebook: assemble, scan, run jailed, score. Runs outside the sandbox.

    python -m autograder.driver JOB.json RESULT.json

Assembly (nbgrader's ``OverwriteCells`` with ``add_missing_cells``, done by grade_id):
  * every cell the source owns (tests with their hidden part, locked cells) is restored from
    the source, whatever the submission did to it; a source cell missing from the submission
    is re-added after the previous cell it has, with a note;
  * solution cells keep the student's text but get the source's metadata (points cannot be
    edited); the student's extra cells are kept;
  * cells matching a known bypass (scan.py) are neutralised;
  * after each test cell the driver adds a canary ``assert`` that must fail with a random
    message: if it does not, the kernel was tampered with and that test earns nothing.
A test earns its points only if it ran, raised nothing, and its canary fired.
"""
from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from . import notebook as nbu
from .kernel import run_cells
from .sandbox import Limits
from .scan import neutralise, scan_source


def assemble(source, submission, release) -> tuple[object, list[str], list[str]]:
    """(grading notebook, flags, notes). Cells carry ``metadata.autograder.origin``."""
    src_by_id = {nbu.grade_id(c): c for c in source.cells if nbu.grade_id(c)}
    rel_by_id = {nbu.grade_id(c): c for c in release.cells if nbu.grade_id(c)}
    owned = {g for g, c in src_by_id.items() if not nbu.is_solution(c)}
    flags, notes, cells, seen = [], [], [], set()
    for cell in submission.cells:
        gid = nbu.grade_id(cell)
        if gid in src_by_id and gid not in seen:
            seen.add(gid)
            src = src_by_id[gid]
            if gid in owned:
                new = nbformat.from_dict(dict(src, outputs=[]) if src.cell_type == "code"
                                         else dict(src))
                released = rel_by_id[gid].source if gid in rel_by_id else nbu.strip_hidden(src.source)
                if nbu.is_test(src) and cell.get("source", "").strip() != released.strip():
                    notes.append(f"test cell {gid} was edited: restored from the source")
            else:
                new = nbformat.from_dict(dict(cell))
                new.metadata = nbformat.from_dict(dict(cell.get("metadata", {}),
                                                       nbgrader=dict(nbu.meta(src))))
                new.cell_type = src.cell_type
            new.metadata["autograder"] = {"origin": "source" if gid in owned else "student"}
        elif gid in seen:
            notes.append(f"duplicate cell {gid} dropped")
            continue
        else:  # the student's own cell (or one whose nbgrader metadata was removed)
            new = nbformat.from_dict(dict(cell))
            new.metadata.pop("nbgrader", None)
            new.metadata["autograder"] = {"origin": "student"}
        if new.cell_type == "code":
            new.outputs, new.execution_count = [], None
            if new.metadata["autograder"]["origin"] == "student":
                reasons = scan_source(new.source)
                if reasons:
                    flags.append(f"{gid or f'extra cell {len(cells)}'}: {', '.join(reasons)}")
                    new.source = neutralise(new.source, reasons)
        cells.append(new)
    # Re-add missing source cells after the previous source cell present.
    order = [nbu.grade_id(c) for c in source.cells if nbu.grade_id(c)]
    for k, gid in enumerate(order):
        if gid in seen:
            continue
        src = src_by_id[gid]
        if gid not in owned:  # a solution cell: the blank release version, never the source's
            src = nbformat.from_dict(dict(rel_by_id[gid], metadata=dict(src.metadata)))
        new = nbformat.from_dict(dict(src, outputs=[]) if src.cell_type == "code" else dict(src))
        new.metadata["autograder"] = {"origin": "source" if gid in owned else "student"}
        prev = {order[j] for j in range(k)}
        pos = max([i + 1 for i, c in enumerate(cells) if nbu.grade_id(c) in prev], default=0)
        cells.insert(pos, new)
        seen.add(gid)
        notes.append(f"cell {gid} was missing: re-added from the "
                     + ("source" if gid in owned else "release (blank)"))
    nb = nbformat.v4.new_notebook(cells=cells, metadata=source.metadata)
    return nb, flags, notes


def add_canaries(nb) -> None:
    """Insert after each test cell an assert that must fail with its own random message."""
    out = []
    for cell in nb.cells:
        out.append(cell)
        if nbu.is_test(cell) and cell.metadata["autograder"]["origin"] == "source":
            nonce = secrets.token_hex(8)
            a, b = secrets.randbelow(10**6), 10**6 + secrets.randbelow(10**6)
            canary = new_code_cell(f'assert {a} == {b}, "{nonce}"')
            canary.metadata["autograder"] = {"origin": "canary", "nonce": nonce,
                                             "guards": nbu.grade_id(cell)}
            out.append(canary)
    nb.cells = out


def score(nb, status: list[dict], source, release) -> tuple[dict, list[str], list[str]]:
    """({grade_id: result}, flags, notes) from the executed notebook."""
    results, flags, notes = {}, [], []
    rel_by_id = {nbu.grade_id(c): c for c in release.cells if nbu.grade_id(c)}
    canary_ok = {}
    for cell, st in zip(nb.cells, status):
        ag = cell.metadata.get("autograder", {})
        if ag.get("origin") == "canary":
            canary_ok[ag["guards"]] = st.get("status") == "error" and st.get("evalue") == ag["nonce"]
    for i, (cell, st) in enumerate(zip(nb.cells, status)):
        ag = cell.metadata.get("autograder", {})
        if ag.get("origin") == "canary":
            continue
        gid = nbu.grade_id(cell)
        if cell.cell_type == "code" and any(o.get("output_type") == "stream" and
                                            o.get("name") == "stderr" for o in cell.outputs):
            notes.append(f"{gid or f'extra cell {i}'} wrote to stderr")
        if st.get("status") == "timeout":
            notes.append(f"{gid or f'extra cell {i}'} timed out")
        elif st.get("status") == "error" and ag.get("origin") == "student" and \
                st.get("ename") != "DeadKernelError":
            notes.append(f"{gid or f'extra cell {i}'} raised {st.get('ename')}")
        if st.get("ename") == "DeadKernelError":
            notes.append(f"the kernel died in {gid or f'extra cell {i}'}: later cells did not run")
        if st.get("reason"):
            notes.append(st["reason"])
        if not gid or not (nbu.is_test(cell) or nbu.is_autograded_answer(cell) or nbu.is_manual(cell)):
            continue
        max_pts = nbu.points(cell)
        if nbu.is_manual(cell):
            results[gid] = dict(kind="manual", max=max_pts, points=None,
                                answer=cell.source, rubric=_rubric(source, gid))
            continue
        passed = st.get("status") == "ok"
        if passed and nbu.is_test(cell) and not canary_ok.get(gid, False):
            passed = False
            flags.append(f"{gid}: runtime tampering (the canary after the test did not fire)")
        rel = rel_by_id.get(gid)
        results[gid] = dict(kind="auto", max=max_pts, points=max_pts if passed else 0.0,
                            status=st.get("status"), ename=st.get("ename", ""),
                            evalue=st.get("evalue", ""),
                            visible_source=rel.source if rel is not None else "",
                            hidden=nbu.hidden_lines(cell.source))
    return results, flags, notes


def _rubric(source, gid: str) -> str:
    """The rubric: the part of the source's answer cell from the line starting 'Rubric'."""
    for c in source.cells:
        if nbu.grade_id(c) == gid:
            text = nbu.solution_text(c.source)
            k = text.find("**Rubric")
            return text[k:].strip() if k >= 0 else "(no rubric in the source cell)"
    return ""


def grade_one(job: dict) -> dict:
    """Grade one notebook. ``job``: source, release, submission_dir, notebook, workdir, limits."""
    source, release = nbu.read(Path(job["source"])), nbu.read(Path(job["release"]))
    sub_path = Path(job["submission_dir"]) / job["notebook"]
    work = Path(job["workdir"])
    shutil.rmtree(work, ignore_errors=True)
    # The student's folder (data files they made) plus the release's non-notebook material.
    shutil.copytree(Path(job["release"]).parent, work, ignore=shutil.ignore_patterns("*.ipynb"))
    shutil.copytree(Path(job["submission_dir"]), work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipc"))
    try:
        submission = nbu.read(sub_path)
        nbformat.validate(submission)
    except Exception as e:  # noqa: BLE001 - missing, not JSON, not a notebook: nothing to run
        pre_notes = [f"notebook missing or unreadable ({type(e).__name__}): 0 points"]
        nb, flags, notes = assemble(source, nbformat.v4.new_notebook(), release)
        status = [{"status": "not-run"} for _ in nb.cells]
    else:
        pre_notes = []
        nb, flags, notes = assemble(source, submission, release)
        add_canaries(nb)
        status = run_cells(nb, work, Limits(**job["limits"]), sandbox=job["sandbox"],
                           extra_env={"COURSE_FAST": "1"})
    results, flags2, notes2 = score(nb, status, source, release)
    rel_by_id = {nbu.grade_id(c): c for c in release.cells if nbu.grade_id(c)}
    cells = [_feedback_cell(c, s, rel_by_id) for c, s in zip(nb.cells, status)
             if c.metadata.get("autograder", {}).get("origin") != "canary"]
    shutil.rmtree(work, ignore_errors=True)
    return dict(notebook=job["notebook"], results=results, flags=flags + flags2,
                notes=pre_notes + notes + notes2, cells=cells)


MAX_TEXT = 20_000  # characters of one output kept for the feedback


def _truncate(o: dict) -> dict:
    o = dict(o)
    for key in ("text",):
        if isinstance(o.get(key), str) and len(o[key]) > MAX_TEXT:
            o[key] = o[key][:MAX_TEXT] + "\n[output truncated by the autograder]\n"
    return o


def _feedback_cell(cell, st: dict, rel_by_id: dict) -> dict:
    """What the feedback may show of a cell: the instructor's cells only as released."""
    gid = nbu.grade_id(cell)
    out = dict(grade_id=gid, cell_type=cell.cell_type, status=st.get("status"),
               test=nbu.is_test(cell), hidden=nbu.hidden_lines(cell.source))
    if cell.metadata.get("autograder", {}).get("origin") == "source":
        rel = rel_by_id.get(gid)
        out["source"] = rel.source if rel is not None else nbu.strip_hidden(cell.source)
    else:
        out["source"] = cell.source
    out["outputs"] = [_truncate(o) for o in cell.get("outputs", [])]
    return out


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    job = json.loads(Path(argv[0]).read_text())
    result = grade_one(job)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
