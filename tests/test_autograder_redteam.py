"""The red-team suite: planted submissions (autograder/redteam/plants.py) with expected scores.

Two batches on a temporary copy of the course, one grade command each (--jobs 2):
* ``full``: with the feedback run - tricks against the kernel, the file intake, the limits and
  the feedback page, plus honest, blank, garbage and slow submissions, and manual grading;
* ``checks``: --checks-only - plausible wrong answers and tricks aimed at the hidden checks.
Each trick must get exactly its honest score, keep the batch alive (exit 0) and leak nothing.
"""
from __future__ import annotations

import base64
import codecs
import csv
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import notebook as nbu
from autograder.redteam import plants, reference_plants, trust_plants
from autograder.sandbox import SandboxUnavailable, check_sandbox

REPO = Path(__file__).resolve().parents[1]


def _sandbox_problem() -> str | None:
    try:
        check_sandbox()
    except SandboxUnavailable as e:
        return str(e)
    return None


SANDBOX_PROBLEM = _sandbox_problem()
pytestmark = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                                reason=f"bubblewrap cannot run here: {SANDBOX_PROBLEM}")


def _course(tmp: Path) -> Path:
    course = tmp / "course"
    for d in ("solutions", "assignments"):  # ema only: the other assignments' references cost time
        shutil.copytree(REPO / d / "ema", course / d / "ema")
    plants.write(course / "subs")
    return course


def _grade(course: Path, group: str, *extra: str) -> tuple[Path, dict]:
    out = course / f"out-{group}"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(course / "subs" / group),
                           "--out", str(out), "--course", str(course), "--jobs", "2",
                           "--cell-timeout", "10", "--memory-mb", "2048", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    return out, rows


def _tests(row) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k.startswith("test_")}


def _check_scores(rows, table):
    wrong = []
    for student, plant in table.items():
        got = _tests(rows[student])
        if sum(got.values()) != plant.points:
            wrong.append((student, sum(got.values()), plant.points, rows[student]["notes"][:300]))
        elif plant.failed and {k for k, v in got.items() if v == 0} != plant.failed:
            wrong.append((student, "failed", sorted(k for k, v in got.items() if v == 0)))
    assert not wrong, wrong


def _hidden_forms() -> list[str]:
    """Every hidden line of the source (12+ characters), and its encodings."""
    src = nbu.read(plants.SOURCE)
    public = "\n".join(c.source for c in nbu.read(plants.RELEASE).cells)
    lines = [ln for c in src.cells for ln in nbu.hidden_lines(c.source)
             if len(ln) >= 12 and ln not in public]
    assert lines
    forms = []
    for ln in lines:
        forms += [ln, base64.b64encode(ln.encode()).decode()[:-4], codecs.encode(ln, "rot13"),
                  ln.encode().hex(), ln[::-1], ln.upper(), ln.replace(" ", "\u00a0")]
    return forms


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]*)"', page)]


def _png_chunks(data: bytes) -> list[bytes]:
    k, out = 8, []
    while k + 8 <= len(data):
        n = int.from_bytes(data[k:k + 4], "big")
        out.append(data[k + 4:k + 8])
        k += 12 + n
    return out


def _own_text(subs: Path, student: str) -> str:
    """What the student wrote (a student may type a hidden line too: that is no leak)."""
    p = subs / student / "ema" / "ema.ipynb"
    if p.is_symlink() or not p.is_file():
        return ""
    try:
        cells = json.loads(p.read_text())["cells"]
        return "\n".join("".join(c.get("source", "")) for c in cells)
    except ValueError:
        return ""


def _leaks(out: Path, subs: Path) -> list:
    forms, found = _hidden_forms(), []
    for page_path in sorted((out / "feedback").glob("*/ema.html")):
        student = page_path.parent.name
        raw = page_path.read_text()
        text = html.unescape(raw)
        own = _own_text(subs, student)
        found += [(student, f[:40]) for f in forms if f in text and f not in own]
        for bad in ("### BEGIN SOLUTION", "**Rubric", "check(\"", "_diffusers_get_decay",
                    "PEER-SECRET"):
            if bad in text and bad not in own:
                found.append((student, bad))
        for bad in ("<script", "<h1>INJECTED", "<b>INJECTED", "<div class='pass'>", "<b>13 / 13"):
            if bad.lower() in raw.lower():
                found.append((student, "unescaped " + bad))
        if re.search(r"<[^>]*\son\w+\s*=", raw, re.IGNORECASE):  # an event handler in a tag
            found.append((student, "event handler attribute"))
        for png in _pngs(raw):
            chunks = _png_chunks(png)
            if not png.startswith(b"\x89PNG") or {b"tEXt", b"iTXt", b"zTXt"} & set(chunks) or \
                    plants.MARKER.encode() in png:
                found.append((student, "png with text", chunks))
    return found


def test_redteam_full_batch(tmp_path):
    course = _course(tmp_path)
    link = course / "subs" / "full" / "files" / "ema" / "notes.txt"
    assert link.resolve() == (course / "solutions" / "ema" / "ema.ipynb").resolve()  # real threat
    with trust_plants.host_trap(course / "subs" / trust_plants.HOST) as reached:
        out, rows = _grade(course, "full")
    assert not reached, reached  # the grader connected to a host socket a jail linked to
    assert not trust_plants.problems(rows, out)
    assert set(rows) == set(plants.FULL) | {"linked_student"}
    assert all(r["sandbox"].startswith("bwrap") for r in rows.values()), rows["solution"]["sandbox"]
    _check_scores(rows, plants.FULL)
    notes = {s: r["notes"] for s, r in rows.items()}
    assert "a link: not graded" in notes["linked_student"]
    assert "notebook missing or unreadable" in notes["linked_notebook"]
    assert "unreadable" in notes["garbage"]
    assert "timed out" in notes["slow_and_looping"]
    assert "the kernel died" in notes["os_exit"]
    assert "wrote to stderr" in notes["slow_and_looping"]
    assert "raised ValueError" in notes["slow_and_looping"]
    assert "ipython-transformers" in rows["kernel_tamper"]["flags"]
    assert notes["files"].count("a symbolic link") == 4 and "not a regular file" in notes["files"]
    assert ".home: a name the grader reserves" in notes["files"]
    if "cgroup" in rows["leaker"]["sandbox"]:
        assert "hit the memory limit" in notes["leaker"], notes["leaker"]
        assert "hit the process limit" in notes["leaker"], notes["leaker"]

    records = {r["student"]: r for r in json.loads((out / "results.json").read_text())}
    printed = "".join(o.get("text", "") for c in records["files"]["graded"][0]["cells"]
                      for o in c["outputs"])
    assert "NETWORK BLOCKED" in printed and "NO STARTUP" in printed, printed[-2000:]
    assert "LEAKED" not in printed and "HOME" in printed, printed[-2000:]
    assert re.search(r"HOME \S+/\.home \[", printed), printed[-2000:]  # the grader's HOME

    sol_page = (out / "feedback" / "solution" / "ema.html").read_text()
    assert _pngs(sol_page), "the solution's plot should be in its feedback"
    assert "all 51 checks passed" in sol_page
    leaker = html.unescape((out / "feedback" / "leaker" / "ema.html").read_text())
    assert plants.MARKER in leaker  # it printed: escaped, shown as text
    assert not _leaks(out, course / "subs" / "full")

    # Manual grading: pending, then entered; an autograded test only with --override.
    assert rows["solution"]["ema_derivation"] == "needs manual grade"
    with open(out / "manual_grades.csv", newline="") as f:
        todo = [r for r in csv.DictReader(f) if r["student"] == "solution"]
    assert todo[0]["cell"] == "ema_derivation" and "Rubric" in todo[0]["rubric"]
    base = [sys.executable, "-m", "autograder", "manual", str(out), "--assignment", "ema",
            "--course", str(course)]
    cmd = base + ["--student", "solution", "--cell", "ema_derivation"]
    bad = subprocess.run(cmd + ["--points", "7"], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "points must be in [0, 6]" in bad.stderr
    assert subprocess.run(cmd + ["--points", "5"], cwd=REPO, check=False).returncode == 0
    cmd = base + ["--student", "os_exit", "--cell", "test_predicted_ratio", "--points", "2"]
    refused = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "--override" in refused.stderr
    assert subprocess.run(cmd + ["--override"], cwd=REPO, check=False).returncode == 0
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert float(rows["solution"]["ema_derivation"]) == 5
    assert float(rows["solution"]["total"]) == plants.AUTO_MAX + 5
    assert rows["solution"]["manual_pending"] == "0"
    assert float(rows["os_exit"]["total"]) == plants.AUTO_MAX - 2
    assert "set to 2 by the instructor" in rows["os_exit"]["notes"]


def test_redteam_checks_batch(tmp_path):
    course = _course(tmp_path)
    out, rows = _grade(course, "checks", "--checks-only")
    assert set(rows) == set(plants.CHECKS)
    _check_scores(rows, plants.CHECKS)
    assert not trust_plants.problems(rows, out)  # links, hard links, formulas (issue 25)
    assert "frame-or-object-walking" in rows["frames"]["flags"]
    assert "builtins-tampering" in rows["weak_builtins"]["flags"]
    assert rows["edited_tests"]["notes"].count("was edited: restored") == 3
    assert "test_update_simple was missing: re-added" in rows["deleted_cells"]["notes"]
    assert "variance_impl was missing: re-added from the release (blank)" in \
        rows["deleted_cells"]["notes"]
    records = {r["student"]: r for r in json.loads((out / "results.json").read_text())}
    msg = records["no_clip"]["graded"][0]["results"]["test_decay_warmup_schedule"]["message"]
    assert re.fullmatch(r"\d+ of 51 checks failed: ema_decay returned a wrong value \(\d+x\)", msg)
    assert records["off_by_one"]["graded"][0]["results"]["test_decay_first_steps"]["message"] \
        == "2 of 2 checks failed: ema_decay returned a wrong value (2x)"
    # borrowed code (reference_plants.py): flagged; where it runs and is right, taken by the scan
    for student in set(plants.CHECKS) & set(reference_plants.FLAGS):
        for flag in reference_plants.FLAGS[student]:
            assert flag in rows[student]["flags"], (student, rows[student]["flags"])
        if not reference_plants.FLAGS[student]:
            assert not any(k in rows[student]["flags"] for k in reference_plants.BORROWED)
    for student, test in reference_plants.NOT_WRITTEN.items():
        if student in plants.CHECKS:
            msg = records[student]["graded"][0]["results"][test]["message"]
            assert "did not write" in msg and "checks passed" in msg, (student, msg)
    assert not _leaks(out, course / "subs" / "checks")
