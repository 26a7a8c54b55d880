"""Grade a folder of submissions: one sandboxed driver process per student, then the CSV.

    SUBMISSIONS/<student>/<assignment>/<notebook>.ipynb  ->  OUT/grades.csv,
    OUT/feedback/<student>/<assignment>.html, OUT/manual_grades.csv, OUT/results.json

The hidden checks' expected values are computed once per batch, here on the trusted side, by
running the source's solution through the harness (checks.py); a reference that fails its own
checks stops the batch before any student is graded. A driver that crashes or overruns its wall
clock costs that student only (score 0 with a note); the batch always finishes.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import re
import socket
import stat
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from . import checks, feedback
from . import notebook as nbu
from .sandbox import UID_BASE, Limits, describe

NAME = re.compile(r"^[A-Za-z0-9_.@+-]+$")
MANUAL_FIELDS = ["student", "assignment", "cell", "max_points", "points", "rubric", "answer"]
# A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV injection:
# = + - @, tab, carriage return; also a line feed and the full-width forms some read alike).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
MAX_SLOTS = 1000  # uids UID_BASE .. UID_BASE + MAX_SLOTS - 1


def looks_like_formula(value) -> bool:
    return isinstance(value, str) and value[:1] in FORMULA_START


def csv_text(value):
    """A CSV cell as written: text a spreadsheet would run as a formula gets a leading ``'``
    (so does text that already starts with one, so that ``csv_value`` reverses it exactly)."""
    if looks_like_formula(value) or isinstance(value, str) and value.startswith("'"):
        return "'" + value
    return value


def csv_value(text):
    """The value ``csv_text`` wrote as ``text``."""
    if isinstance(text, str) and text.startswith("'") and \
            (looks_like_formula(text[1:]) or text[1:].startswith("'")):
        return text[1:]
    return text


def _csv_rows(rows: list[dict]) -> list[dict]:
    return [{k: csv_text(v) for k, v in r.items()} for r in rows]


def claim_slots(n: int) -> tuple[list[int], list[socket.socket]]:
    """``n`` uid slots no other batch on this machine holds (batches may overlap; two jails
    with one uid would share RLIMIT_NPROC). A slot is held by an abstract Unix socket named
    after its uid: nothing on disk, released when the socket closes or the process dies."""
    slots, held = [], []
    for k in range(MAX_SLOTS):
        if len(slots) == n:
            break
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(f"\0autograder-uid-{UID_BASE + k}")
        except OSError:
            s.close()
            continue
        slots.append(k)
        held.append(s)
    if len(slots) < n:
        for s in held:
            s.close()
        raise RuntimeError(f"no free uid slot for {n} parallel jobs")
    return slots, held


def assignments(course: Path) -> dict[str, list[str]]:
    """{assignment: [notebook file names]} from the nbgrader source folder."""
    src = course / "solutions"
    return {d.name: sorted(p.name for p in d.glob("*.ipynb"))
            for d in sorted(src.iterdir()) if d.is_dir() and any(d.glob("*.ipynb"))}


def venv_env() -> dict[str, str]:
    """The environment for child processes: the venv's bin first (nbgrader needs alembic)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def driver_timeout(limits: dict) -> int:
    """Seconds a driver may take: the student's wall clock, then what a run can overrun it by -
    the kernel's start (120 s), one cell past its interruption (2 x timeout + 10 s), the
    jails' setup and teardown - so that only a driver that hangs is killed (a killed driver
    leaves its cgroups behind)."""
    return int(limits["wall_seconds"] + 2 * limits["cell_timeout"] + 240)


def _run_driver(job: dict, tmp: Path, log: Path) -> dict:
    jf, rf = tmp / f"{job['key']}.job.json", tmp / f"{job['key']}.result.json"
    jf.write_text(json.dumps(job))
    os.chmod(jf, 0o600)
    try:
        with open(log, "w") as lf:
            proc = subprocess.run([sys.executable, "-m", "autograder.driver", str(jf), str(rf)],
                                  stdout=lf, stderr=subprocess.STDOUT, env=venv_env(), check=False,
                                  timeout=driver_timeout(job["limits"]))
        if proc.returncode == 0 and rf.exists():
            return json.loads(rf.read_text())
        why = f"grading process failed (exit {proc.returncode}), see {log.name}"
    except subprocess.TimeoutExpired:
        why = "grading process exceeded the wall-clock limit"
    return dict(notebook=job["notebook"], results={}, flags=[], notes=[why], cells=[])


def _plain_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def reference_expected(course: Path, limits: Limits) -> dict[tuple[str, str], dict]:
    """{(assignment, notebook): {checks, expected}}: the hidden cases and their expected values
    from the source's own solution (the drivers get both; the jails get inputs only)."""
    out = {}
    env = dict(venv_env(), OMP_NUM_THREADS="1", MPLBACKEND="Agg", COURSE_FAST="1")
    for a, nbs in assignments(course).items():
        for nb in nbs:
            src = nbu.read(course / "solutions" / a / nb)
            spec = checks.spec(src)
            ref = checks.run_reference(src, spec, limits.cell_timeout, env)
            out[(a, nb)] = dict(checks=spec, expected=checks.expected(spec, ref))
    return out


def grade(submissions: Path, out: Path, course: Path, limits: Limits, sandbox: bool,
          jobs: int = 1, notebook_run: bool = True) -> list[dict]:
    """Grade every ``student/assignment`` folder found; return the CSV records.

    ``notebook_run=False`` skips the feedback run (faster; scores are the same, the feedback
    then shows the cells without outputs)."""
    submissions, out, course = Path(submissions), Path(out), Path(course)
    todo, records = [], []
    known = assignments(course)
    for sdir in sorted(p for p in submissions.iterdir() if p.is_dir() or p.is_symlink()):
        for a, nbs in known.items():
            if not (sdir / a).exists() and not (sdir / a).is_symlink():
                continue
            why = ("student folder name not allowed" if not NAME.match(sdir.name) else
                   "the student folder is a link" if not _plain_dir(sdir) else
                   "the assignment folder is a link or not a folder"
                   if not _plain_dir(sdir / a) else None)
            if why:
                records.append(dict(student=sdir.name, assignment=a, graded=[],
                                    notes=[f"{why}: not graded"]))
                continue
            todo.append((sdir.name, a, nbs))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    expected = reference_expected(course, limits)
    slots: queue.Queue = queue.Queue()
    mine, held = claim_slots(max(1, jobs))
    for k in mine:
        slots.put(k)
    used: set[str] = set()

    def unique(key: str) -> str:  # 'a-b' + '-c-d' and 'a' + '-b-c-d' must not share a folder
        k, n = key, 1
        while k in used:
            n += 1
            k = f"{key}~{n}"
        used.add(k)
        return k
    keys = {(student, a, nb): unique(f"{student}-{a}-{Path(nb).stem}")
            for student, a, nbs in todo for nb in nbs}
    with tempfile.TemporaryDirectory(prefix="autograder-") as tmp:
        os.chmod(tmp, 0o711)  # jails (other uids) must pass through to their own folder

        def work(item):
            student, a, nbs = item
            graded, slot = [], slots.get()
            try:
                for nb in nbs:
                    key = keys[(student, a, nb)]
                    job = dict(key=key, source=str(course / "solutions" / a / nb),
                               release=str(course / "assignments" / a / nb),
                               submission_dir=str(submissions / student / a), notebook=nb,
                               workdir=str(Path(tmp) / key), limits=asdict(limits),
                               sandbox=sandbox, slot=slot, **expected[(a, nb)],
                               notebook_run=notebook_run)
                    graded.append(_run_driver(job, Path(tmp), out / "logs" / f"{key}.log"))
            finally:
                slots.put(slot)
            return dict(student=student, assignment=a, graded=graded, notes=[])
        try:
            with ThreadPoolExecutor(max(1, jobs)) as pool:
                records += list(pool.map(work, todo))
        finally:
            for h in held:
                h.close()
    where = describe(limits) if sandbox else "NONE (--unsafe-no-sandbox)"
    for r in records:
        r["sandbox"] = where
    records.sort(key=lambda r: (r["student"], r["assignment"]))
    (out / "results.json").write_text(json.dumps(records))
    write_outputs(out, course, records)
    return records


def read_manual(out: Path) -> dict[tuple, dict]:
    path = out / "manual_grades.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [{k: csv_value(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return {(r["student"], r["assignment"], r["cell"]): r for r in rows}


def write_outputs(out: Path, course: Path, records: list[dict]) -> None:
    """grades.csv, manual_grades.csv (entered points kept) and the feedback pages."""
    manual = read_manual(out)
    columns, own_cols = [], {}
    for a, nbs in assignments(course).items():
        multi = len(nbs) > 1
        for nb in nbs:
            src = nbu.read(course / "solutions" / a / nb)
            cols = [(f"{Path(nb).stem}:" if multi else "") + nbu.grade_id(c)
                    for c in nbu.graded_cells(src)]
            columns += cols
            own_cols.setdefault(a, []).extend(cols)
    columns = list(dict.fromkeys(columns))
    rows, manual_rows = [], []
    for r in records:
        row = dict(student=r["student"], assignment=r["assignment"])
        total = max_total = max_auto = 0.0
        pending = 0
        flags, notes = [], list(r["notes"])
        multi = len(r["graded"]) > 1
        for g in r["graded"]:
            flags += g["flags"]
            notes += g["notes"]
            for gid, res in g["results"].items():
                col = (f"{Path(g['notebook']).stem}:" if multi else "") + gid
                max_total += res["max"]
                if res["kind"] == "manual":
                    if looks_like_formula(res["answer"]):
                        notes.append(f"{col}: the answer starts like a spreadsheet formula "
                                     f"({res['answer'][:1]!r}): manual_grades.csv has it as "
                                     "text, after a '")
                    entered = manual.get((r["student"], r["assignment"], col), {}).get("points")
                    if entered not in (None, ""):
                        res["points"] = min(float(entered), res["max"])
                    manual_rows.append(dict(student=r["student"], assignment=r["assignment"],
                                            cell=col, max_points=res["max"],
                                            points="" if res["points"] is None else res["points"],
                                            rubric=res["rubric"], answer=res["answer"]))
                else:
                    max_auto += res["max"]
                    entered = manual.get((r["student"], r["assignment"], col), {}).get("points")
                    if entered not in (None, ""):  # an instructor's override of a test
                        res["points"] = min(float(entered), res["max"])
                        notes.append(f"{col} set to {res['points']:g} by the instructor")
                        manual_rows.append(dict(student=r["student"], assignment=r["assignment"],
                                                cell=col, max_points=res["max"],
                                                points=res["points"], rubric="(override)",
                                                answer=""))
                if res["points"] is None:
                    pending += 1
                    row[col] = "needs manual grade"
                else:
                    row[col] = res["points"]
                    total += res["points"]
        for col in own_cols.get(r["assignment"], []):  # a submission whose grading broke: 0, and the note says why
            row.setdefault(col, 0.0)
        row.update(total=total, max_total=max_total, manual_pending=pending,
                   flags="; ".join(flags), notes="; ".join(notes), sandbox=r["sandbox"])
        rows.append(row)
        page = feedback.render(r["student"], r["assignment"], r["graded"],
                               dict(row, max_auto=max_auto, total=total,
                                    manual_status=f"{pending} pending" if pending else "graded"))
        dest = out / "feedback" / r["student"] / f"{r['assignment']}.html"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(page)
    fields = ["student", "assignment"] + columns + ["total", "max_total", "manual_pending",
                                                    "flags", "notes", "sandbox"]
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields, restval="")
        w.writeheader()
        w.writerows(_csv_rows(rows))
    with open(out / "manual_grades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, MANUAL_FIELDS)
        w.writeheader()
        w.writerows(_csv_rows(manual_rows))


def enter_manual(out: Path, course: Path, student: str, assignment: str, cell: str,
                 points: float, override: bool = False) -> None:
    """Record a manual score and rewrite grades.csv (and the feedback) with it.

    ``override`` also allows setting an autograded test (e.g. after reviewing a flag)."""
    out = Path(out)
    records = json.loads((out / "results.json").read_text())
    rec = next((r for r in records if r["student"] == student and r["assignment"] == assignment),
               None)
    if rec is None:
        raise ValueError(f"no graded submission for student {student!r}, assignment {assignment!r}")
    res = next((g["results"][k] for g in rec["graded"] for k in g["results"]
                if k == cell.split(":")[-1]), None)
    if res is None or (res["kind"] != "manual" and not override):
        manual_ids = [k for g in rec["graded"] for k, v in g["results"].items()
                      if v["kind"] == "manual"]
        raise ValueError(f"{cell!r} is not a manually graded cell; expected one of {manual_ids}"
                         " (use --override to set an autograded test)")
    if not 0 <= points <= res["max"]:
        raise ValueError(f"points must be in [0, {res['max']:g}] for {cell}, got {points}")
    manual = read_manual(out)
    manual[(student, assignment, cell)] = dict(student=student, assignment=assignment,
                                               cell=cell, points=points)
    with open(out / "manual_grades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, MANUAL_FIELDS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(_csv_rows(list(manual.values())))
    write_outputs(out, Path(course), records)
