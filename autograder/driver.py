"""Grade one student's notebook. Runs on the trusted side, outside every sandbox.

    python -m autograder.driver JOB.json RESULT.json

1. **Intake** (intake.py): the student's folder is copied as plain files (no links followed).
2. **Assembly** by grade_id: instructor cells (tests, locked cells) come from the *release* -
   the visible tests only, hidden regions never leave the trusted side; solution cells keep the
   student's text with the source's metadata; missing cells are re-added, edits undone (noted).
3. **Hidden checks** (first: they get the student's whole wall clock): a fresh jail runs
   harness.py on the cells, and at each test's place calls the student's functions with that
   test's inputs (no expected value in the jail). What comes back is plain JSON, read from
   the file the grader created; checks.py validates and compares it here.
4. **Feedback run** (with the wall clock left): the notebook runs in another jail, in a
   kernel; its outputs are kept only to show the student (sanitised). Nothing it reports
   decides a point.
The scan (scan.py) only flags known tricks for the instructor; it changes nothing.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from . import checks, harness
from . import notebook as nbu
from .intake import copy_plain
from .sandbox import HARNESS_IN_JAIL, Cgroup, Limits, jail_command, own_for_jail
from .scan import scan_source

MAX_NOTEBOOK = 5 * 2**20  # bytes
MAX_TEXT = 20_000  # characters of one output kept for the feedback
FEEDBACK_MIN_SECONDS = 30  # the feedback run is skipped with less of the wall clock left
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,60}$")


def assemble(source, submission, release) -> tuple[object, list[str]]:
    """(grading notebook, notes). Cells carry ``metadata.autograder.origin``."""
    src_by_id = {nbu.grade_id(c): c for c in source.cells if nbu.grade_id(c)}
    rel_by_id = {nbu.grade_id(c): c for c in release.cells if nbu.grade_id(c)}
    owned = {g for g, c in src_by_id.items() if not nbu.is_solution(c)}
    notes, cells, seen = [], [], set()

    def instructor(gid):
        rel = rel_by_id.get(gid)
        text = rel.source if rel is not None else nbu.strip_hidden(src_by_id[gid].source)
        c = nbformat.from_dict(dict(src_by_id[gid], source=text))
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
        c.metadata["autograder"] = {"origin": "source"}
        return c

    for cell in submission.cells:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            continue
        gid = nbu.grade_id(cell)
        if gid in src_by_id and gid not in seen:
            seen.add(gid)
            src = src_by_id[gid]
            if gid in owned:
                new = instructor(gid)
                if nbu.is_test(src) and str(cell.get("source", "")).strip() != new.source.strip():
                    notes.append(f"test cell {gid} was edited: restored")
            else:
                new = nbformat.from_dict(dict(cell))
                new.metadata = nbformat.from_dict(dict(cell.get("metadata", {}),
                                                       nbgrader=dict(nbu.meta(src))))
                new.cell_type = src.cell_type
                new.metadata["autograder"] = {"origin": "student"}
        elif gid in seen:
            notes.append(f"duplicate cell {gid} dropped")
            continue
        else:  # the student's own cell (or one whose nbgrader metadata was removed)
            new = nbformat.from_dict(dict(cell))
            new.metadata.pop("nbgrader", None)
            new.metadata["autograder"] = {"origin": "student"}
        new.source = str(new.get("source", ""))
        if new.cell_type == "code":
            new.outputs, new.execution_count = [], None
        cells.append(new)
    order = [nbu.grade_id(c) for c in source.cells if nbu.grade_id(c)]
    for k, gid in enumerate(order):
        if gid in seen:
            continue
        if gid in owned:
            new = instructor(gid)
        else:  # a solution cell: the blank release version, never the source's
            new = nbformat.from_dict(dict(rel_by_id[gid], metadata=dict(src_by_id[gid].metadata)))
            if new.cell_type == "code":
                new.outputs, new.execution_count = [], None
            new.metadata["autograder"] = {"origin": "student"}
        prev = {order[j] for j in range(k)}
        pos = max([i + 1 for i, c in enumerate(cells) if nbu.grade_id(c) in prev], default=0)
        cells.insert(pos, new)
        seen.add(gid)
        notes.append(f"cell {gid} was missing: re-added from the "
                     + ("source" if gid in owned else "release (blank)"))
    return nbformat.v4.new_notebook(cells=cells, metadata=source.metadata), notes


def _label(cell, i: int) -> str:
    return nbu.grade_id(cell) or f"extra cell {i}"


def scan_flags(nb) -> list[str]:
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and c.metadata["autograder"]["origin"] == "student":
            reasons = scan_source(c.source)
            if reasons:
                out.append(f"{_label(c, i)}: {', '.join(reasons)}")
    return out


def _bound(source: str) -> dict:
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001, S110 - plain Python then
        pass
    return harness.bound_names(source)


def redefinition_flags(nb) -> list[str]:
    """Student cells that bind a name a course cell binds (``ring_sums = ...`` after the
    grading helpers): the checks use the course's definition (harness.py); the instructor is
    told. Importing the same module under the same name is not a redefinition."""
    course: dict = {}
    for c in nb.cells:
        if c.cell_type == "code" and c.metadata["autograder"]["origin"] == "source" and \
                not nbu.is_test(c):
            course.update(_bound(c.source))
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and c.metadata["autograder"]["origin"] == "student":
            hit = sorted(n for n, mod in _bound(c.source).items()
                         if n in course and (mod is None or mod != course[n]))
            if hit:
                out.append(f"{_label(c, i)}: redefines the course's {', '.join(hit)} "
                           "(the checks use the course's)")
    return out


def _jail_root(work: Path, name: str, files: Path, slot: int) -> Path:
    root = work / name
    shutil.copytree(files, root, symlinks=True)  # our own plain copy: no links in it
    own_for_jail(root, slot)
    return root


def _limit_notes(cg: Cgroup | None, what: str) -> list[str]:
    if cg is None:
        return []
    ev, notes = cg.events(), []
    if ev["oom_kill"]:
        notes.append(f"{what}: hit the memory limit ({ev['oom_kill']} process(es) killed)")
    if ev["pids_max"]:
        notes.append(f"{what}: hit the process limit ({ev['pids_max']} fork(s) refused)")
    return notes


def feedback_run(nb, root: Path, limits: Limits, job: dict) -> tuple[list[dict], list[str]]:
    """Run the notebook in a jailed kernel for the feedback only: (status per cell, notes)."""
    from .kernel import run_cells

    name = f"autograder-{job['key']}-{secrets.token_hex(4)}-nb"  # unique: batches may overlap
    cg = Cgroup.create(name, limits) if job["sandbox"] else None
    notes = []
    try:
        status = run_cells(nb, root, limits, sandbox=job["sandbox"], slot=job["slot"],
                           cgroup=cg, extra_env={"COURSE_FAST": "1"})
    except Exception as e:  # noqa: BLE001 - whatever the kernel sent; costs only the feedback
        notes.append(f"the notebook run for the feedback stopped ({type(e).__name__})")
        status = [{"status": "not-run"} for _ in nb.cells]
    finally:
        if cg is not None:
            notes += _limit_notes(cg, "notebook run")
            cg.destroy()
    for i, (cell, st) in enumerate(zip(nb.cells, status)):
        origin = cell.metadata["autograder"]["origin"]
        if st.get("status") == "timeout":
            notes.append(f"{_label(cell, i)} timed out")
        elif st.get("status") == "error" and origin == "student" and \
                st.get("ename") != "DeadKernelError":
            notes.append(f"{_label(cell, i)} raised {_ident(st.get('ename'))}")
        if st.get("ename") == "DeadKernelError":
            notes.append(f"the kernel died in {_label(cell, i)}: later cells did not run")
        if st.get("reason"):
            notes.append(st["reason"])
        if cell.cell_type == "code" and any(o.get("output_type") == "stream" and
                                            o.get("name") == "stderr" for o in cell.outputs):
            notes.append(f"{_label(cell, i)} wrote to stderr")
    return status, notes


def harness_plan(nb, spec: dict, cell_timeout: float) -> dict:
    """checks.plan for the assembled notebook, each course cell marked ``"course": true``:
    the harness binds the names those cells define to what they defined at every check, so a
    student's later cell cannot replace a course helper the checks call (harness.py)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    items = [("check", nbu.grade_id(c)) if nbu.is_test(c) else ("cell", c.source) for c in code]
    plan = checks.plan(items, spec, cell_timeout)
    course = iter([c.metadata["autograder"]["origin"] == "source"
                   for c in code if not nbu.is_test(c)])
    for item in plan["items"]:  # checks.plan keeps every cell up to the last check, in order
        if "cell" in item and next(course):
            item["course"] = True
    return plan


def _create(path: Path, data: bytes = b"") -> int:
    """A new file at ``path`` (whatever was there removed first, never followed), written with
    ``data``; returns a read descriptor of it, opened before any student code runs."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # a folder of that name in the submission (our copy: no links)
        shutil.rmtree(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _replaced(path: Path, fd: int) -> bool:
    """Whether ``path`` no longer names the file open as ``fd`` (a link, another file, gone)."""
    try:
        st, mine = os.lstat(path), os.fstat(fd)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)


def hidden_checks(nb, root: Path, limits: Limits, job: dict, spec: dict) -> tuple[dict, list]:
    """Run the harness in a fresh jail: ({grade_id: [case result]}, notes).

    The results file is created here, and a descriptor of it opened, before the jail starts;
    its answers are read through that descriptor only. The student's code may replace the
    name with a link to another student's results or to any file of the host: the grader
    still reads the file it made (and notes the swap)."""
    plan = harness_plan(nb, spec, limits.cell_timeout)
    os.close(_create(root / "plan.json", json.dumps(plan).encode()))
    results = root / "results.jsonl"
    results_fd = _create(results)
    cmd = [sys.executable, "-I", HARNESS_IN_JAIL, "plan.json", "results.jsonl"]
    cg = None
    if job["sandbox"]:
        cg = Cgroup.create(f"autograder-{job['key']}-{secrets.token_hex(4)}-checks", limits)
        own_for_jail(root, job["slot"])
        cmd = jail_command(root, cmd, limits, slot=job["slot"], cgroup=cg,
                           env={"MPLBACKEND": "Agg", "COURSE_FAST": "1"})
    else:
        cmd[2] = str(Path(__file__).resolve().parent / "harness.py")
    notes = []
    budget = max(30, limits.wall_seconds - (time.monotonic() - job["_t0"]))
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            notes.append("hidden checks: the student's wall-clock limit was reached")
    finally:
        if cg is not None:
            notes += _limit_notes(cg, "hidden checks")
            cg.destroy()
    if _replaced(results, results_fd):
        notes.append("hidden checks: the student's code replaced results.jsonl (a link or "
                     "another file): ignored, the grader read the file it had created")
    # read_results takes the descriptor (open() accepts one; it is closed after reading)
    return checks.read_results(results_fd), notes


def grade_one(job: dict) -> dict:
    """Grade one notebook. ``job``: see batch.py (source, release, submission_dir, ...)."""
    job["_t0"] = time.monotonic()
    source, release = nbu.read(Path(job["source"])), nbu.read(Path(job["release"]))
    limits = Limits(**job["limits"])
    work = Path(job["workdir"])
    shutil.rmtree(work, ignore_errors=True)
    files = work / "files"
    pre = copy_plain(Path(job["submission_dir"]), files, nofollow=2)  # student/assignment
    spec = job["checks"]  # computed once per batch (checks.spec runs the hidden regions)
    exp = {gid: [tuple(x) for x in rows] for gid, rows in job["expected"].items()}
    sub = files / job["notebook"]
    try:
        if sub.stat().st_size > MAX_NOTEBOOK:
            raise ValueError("notebook too large")
        submission = nbformat.read(str(sub), as_version=4)
        nbformat.validate(submission)
    except Exception as e:  # noqa: BLE001 - missing, not JSON, not a notebook: nothing to run
        pre.append(f"notebook missing or unreadable ({type(e).__name__}): 0 points")
        submission = None
    nb, notes = assemble(source, submission or nbformat.v4.new_notebook(), release)
    flags = scan_flags(nb) + redefinition_flags(nb)
    status = [{"status": "not-run"} for _ in nb.cells]
    got: dict = {}
    why_missing = "the notebook was not run"
    if submission is not None:
        # The hidden checks first: they decide the points, so they get the student's whole
        # wall clock; the feedback run (outputs to show, nothing scored) gets what is left -
        # run first, a slow notebook left the checks 30 s and cost an honest student points.
        t, n1 = time.monotonic(), []
        got, n2 = hidden_checks(nb, _jail_root(work, "checks", files, job["slot"]), limits, job,
                                spec)
        t1 = time.monotonic()
        if job.get("notebook_run", True):
            left = int(limits.wall_seconds - (t1 - job["_t0"]))
            if left < FEEDBACK_MIN_SECONDS:
                n1 = [("the notebook run for the feedback was skipped: the hidden checks used "
                       "the student's wall-clock time")]
            else:
                status, n1 = feedback_run(nb, _jail_root(work, "nb", files, job["slot"]),
                                          dataclasses.replace(limits, wall_seconds=left), job)
        print(f"hidden checks {t1 - t:.1f} s, feedback run {time.monotonic() - t1:.1f} s",
              file=sys.stderr)
        notes += n1 + n2
        why_missing = "the checks process ended before this test (see the notes)"
    results = {}
    for c in nb.cells:
        gid = nbu.grade_id(c)
        if not gid or not (nbu.is_test(c) or nbu.is_manual(c) or nbu.is_autograded_answer(c)):
            continue
        if nbu.is_manual(c):
            results[gid] = dict(kind="manual", max=nbu.points(c), points=None,
                                answer=c.source, rubric=_rubric(source, gid))
            continue
        ok, msg = checks.score(gid, spec.get(gid, []), exp.get(gid, []), got.get(gid),
                               why_missing)
        results[gid] = dict(kind="auto", max=nbu.points(c), points=nbu.points(c) if ok else 0.0,
                            message=msg)
    cells = [_feedback_cell(c, s) for c, s in zip(nb.cells, status)]
    shutil.rmtree(work, ignore_errors=True)
    return dict(notebook=job["notebook"], results=results, flags=flags, notes=pre + notes,
                cells=cells)


def _rubric(source, gid: str) -> str:
    """The rubric: the part of the source's answer cell from the line starting 'Rubric'."""
    for c in source.cells:
        if nbu.grade_id(c) == gid:
            text = nbu.solution_text(c.source)
            k = text.find("**Rubric")
            return text[k:].strip() if k >= 0 else "(no rubric in the source cell)"
    return ""


def _ident(x) -> str:
    return x if isinstance(x, str) and IDENT.match(x) else "an exception"


def _text(x) -> str:
    if isinstance(x, list):
        x = "".join(str(t) for t in x)
    x = str(x)
    return x if len(x) <= MAX_TEXT else x[:MAX_TEXT] + "\n[output truncated by the autograder]\n"


def clean_png(data) -> str | None:
    """Base64 of a re-encoded PNG (pixels only: text chunks and metadata dropped), or None."""
    try:
        from PIL import Image

        raw = base64.b64decode("".join(data) if isinstance(data, list) else str(data),
                               validate=False)
        if not raw.startswith(b"\x89PNG\r\n\x1a\n") or len(raw) > 5 * 2**20:
            return None
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "PNG" or im.width * im.height > 4096 * 4096:
                return None
            im.load()
            pixels = im.convert("RGBA")
        # A new image from the raw pixels: no chunk of the student's file survives.
        clean = Image.frombytes("RGBA", pixels.size, pixels.tobytes())
        buf = io.BytesIO()
        clean.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")
    except (binascii.Error, ValueError, OSError, SyntaxError, MemoryError):
        return None
    except Exception:  # noqa: BLE001 - any decoder failure: not shown
        return None


def _feedback_outputs(cell) -> list[dict]:
    out, used = [], 0
    for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
        kind = o.get("output_type")
        if kind == "stream":
            item = {"kind": "stderr" if o.get("name") == "stderr" else "stdout",
                    "text": _text(o.get("text", ""))}
        elif kind == "error":
            tb = "\n".join(str(t) for t in o.get("traceback", []) if isinstance(t, str))
            item = {"kind": "error", "text": _text(tb or f"{o.get('ename')}: {o.get('evalue')}")}
        elif kind in ("execute_result", "display_data"):
            data = o.get("data", {}) if isinstance(o.get("data"), dict) else {}
            png = clean_png(data["image/png"]) if "image/png" in data else None
            if png is not None:
                item = {"kind": "image", "png": png}
            elif "text/plain" in data:
                item = {"kind": "result", "text": _text(data["text/plain"])}
            else:
                continue
        else:
            continue
        used += len(item.get("text", item.get("png", "")))
        if used > 2 * 2**20:
            out.append({"kind": "stdout", "text": "[further output dropped by the autograder]"})
            break
        out.append(item)
    return out


def _feedback_cell(cell, st: dict) -> dict:
    """What the feedback may show of a cell (instructor cells are already the release's)."""
    return dict(grade_id=nbu.grade_id(cell), cell_type=cell.cell_type, test=nbu.is_test(cell),
                origin=cell.metadata["autograder"]["origin"], status=st.get("status"),
                source=_text(cell.source), outputs=_feedback_outputs(cell))


def main(argv=None) -> int:
    argv = argv or sys.argv[1:]
    job = json.loads(Path(argv[0]).read_text())
    result = grade_one(job)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
