"""The autograder's honesty, on a temporary copy of the course.

One batch grades every planted submission (solution, blank, one per planted mistake, and one
per trick); the tests below read its grades.csv, results.json and feedback pages.
"""
from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from autograder import notebook as nbu
from autograder import release
from autograder.sandbox import Limits, SandboxUnavailable, bwrap_command, check_sandbox
from autograder.scan import scan_source

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "solutions" / "ema" / "ema.ipynb"
RELEASE = REPO / "assignments" / "ema" / "ema.ipynb"
AUTO_MAX = 13.0  # autograded points of the EMA assignment


def _sandbox_reason() -> str | None:
    try:
        check_sandbox()
    except SandboxUnavailable as e:
        return str(e)
    return None


SANDBOX_PROBLEM = _sandbox_reason()
needs_bwrap = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                                 reason=f"bubblewrap cannot run here: {SANDBOX_PROBLEM}")


def solved():
    """The release with every solution cell filled in from the source."""
    src, nb = nbu.read(SOURCE), nbu.read(RELEASE)
    answers = {nbu.grade_id(c): nbu.solution_text(c.source) for c in src.cells if nbu.is_solution(c)}
    for c in nb.cells:
        if nbu.grade_id(c) in answers:
            c.source = answers[nbu.grade_id(c)]
    return nb


def _cell(nb, gid):
    return next(c for c in nb.cells if nbu.grade_id(c) == gid)


def _replace(nb, gid, old, new):
    c = _cell(nb, gid)
    assert old in c.source, f"plant does not apply: {old!r} not in {gid}"
    c.source = c.source.replace(old, new)
    return nb


def _insert_after(nb, gid, source):
    k = next(i for i, c in enumerate(nb.cells) if nbu.grade_id(c) == gid)
    nb.cells.insert(k + 1, new_code_cell(source))
    return nb


def _blank_with(source):
    nb = nbu.read(RELEASE)
    return _insert_after(nb, "imports", source)


def planted(course: Path, port: int) -> dict[str, tuple]:
    """{student: (notebook, expected autograded total)}."""
    p = {"solution": (solved(), AUTO_MAX), "blank": (nbu.read(RELEASE), 0.0)}
    p["swap_decay"] = (_replace(solved(), "ema_impl", "e.sub_((1 - decay) * (e - p.detach()))",
                                "e.copy_(decay * p + (1 - decay) * e)"), AUTO_MAX - 3)
    p["no_clip"] = (_replace(solved(), "ema_impl", "value = 1 - (1 + step / inv_gamma) ** -power",
                             "return 1 - (1 + step / inv_gamma) ** -power"), AUTO_MAX - 2)
    p["wrong_ratio"] = (_replace(solved(), "variance_impl",
                                 "return (1 - beta) * (1 + a * beta) / ((1 + beta) * (1 - a * beta))",
                                 "return (1 - beta) / (1 + beta)"), AUTO_MAX - 2)
    p["std_ratio"] = (_replace(solved(), "variance_impl",
                               "return float(emas[burn:].var() / thetas[burn:].var())",
                               "return float(emas[burn:].std() / thetas[burn:].std())"), AUTO_MAX - 2)
    nb = _replace(solved(), "ema_impl", "step = max(0, optimization_step - update_after_step - 1)",
                  "raise NotImplementedError()")
    for gid in ("test_decay_first_steps", "test_decay_default_schedule", "test_decay_warmup_schedule"):
        _cell(nb, gid).source = "pass"
    p["edited_tests"] = (nb, AUTO_MAX - 5)
    nb = solved()
    nb.cells = [c for c in nb.cells if nbu.grade_id(c) not in
                ("test_update_simple", "test_measured_ratio", "variance_impl", "ema_derivation")]
    p["deleted_cells"] = (nb, AUTO_MAX - 4)  # a deleted solution comes back blank
    p["infinite_loop"] = (_insert_after(solved(), "imports", "while True:\n    pass"), AUTO_MAX)
    p["os_exit"] = (_insert_after(solved(), "test_update_in_place", "import os\nos._exit(1)"),
                    AUTO_MAX)
    p["kernel_kill"] = (_insert_after(solved(), "test_update_in_place",
                                      "import os\ngetattr(os, '_ex' + 'it')(1)"), AUTO_MAX - 4)
    trick = 'get_ipython().input_transformers_cleanup.append(lambda lines: ["pass\\n"])'
    p["transformer"] = (_blank_with(trick), 0.0)
    p["sneaky_transformer"] = (_blank_with(
        'ip = get_ipython()\nhooks = getattr(ip, "input_" + "transformers_cleanup")\n'
        'hooks.append(lambda lines: ["pass\\n"])'), 0.0)
    snoop = f"""
import os, socket
for root in ({str(course)!r}, {str(REPO)!r}):
    path = os.path.join(root, "solu" + "tions", "ema", "ema.ipynb")
    try:
        open(path).read()
        print("LEAKED", path)
    except OSError as e:
        print("SOLUTIONS BLOCKED", type(e).__name__)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3)
    print("LEAKED network")
except OSError as e:
    print("NETWORK BLOCKED", type(e).__name__)
"""
    nb = _insert_after(solved(), "imports", snoop)
    # Test cells are visible to code while they run: print every cell IPython has cached.
    nb.cells.append(new_code_cell(
        "import linecache, re\nfor name, entry in list(linecache.cache.items()):\n"
        "    if re.search(r'/ipykernel_\\d+/', name) and len(entry) > 2:\n"
        "        print(''.join(entry[2]))"))
    p["snoop"] = (nb, AUTO_MAX)
    p["noisy"] = (_insert_after(solved(), "ema_impl",
                                "import sys\nprint('debug', file=sys.stderr)\nraise ValueError('boom')"),
                  AUTO_MAX)
    return p


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade all planted submissions in one batch; return (out, rows, plants, listener)."""
    if SANDBOX_PROBLEM is not None:
        pytest.skip(f"bubblewrap cannot run here: {SANDBOX_PROBLEM}")
    tmp = tmp_path_factory.mktemp("course")
    course = tmp / "course"
    for d in ("solutions", "assignments"):
        shutil.copytree(REPO / d, course / d)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    plants = planted(course, listener.getsockname()[1])
    subs = tmp / "submissions"
    for student, (nb, _) in plants.items():
        (subs / student / "ema").mkdir(parents=True)
        nbformat.write(nb, str(subs / student / "ema" / "ema.ipynb"))
    (subs / "garbage" / "ema").mkdir(parents=True)
    (subs / "garbage" / "ema" / "ema.ipynb").write_text("{not a notebook")
    plants["garbage"] = (None, 0.0)
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(subs), "--out", str(out),
                           "--course", str(course), "--jobs", "2", "--cell-timeout", "20"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    yield course, out, rows, plants, listener
    listener.close()


def auto_total(row) -> float:
    return sum(float(v) for k, v in row.items() if k.startswith("test_"))


@needs_bwrap
def test_every_submission_gets_a_row(graded):
    _, _, rows, plants, _ = graded
    assert set(rows) == set(plants)
    assert all(r["sandbox"] == "bwrap" for r in rows.values())


@pytest.mark.parametrize("student", ["solution", "blank", "swap_decay", "no_clip", "wrong_ratio",
                                     "std_ratio", "edited_tests", "deleted_cells", "infinite_loop",
                                     "os_exit", "kernel_kill", "transformer", "sneaky_transformer",
                                     "snoop", "noisy", "garbage"])
@needs_bwrap
def test_autograded_score(graded, student):
    """Solution = full marks, blank = 0, each mistake or trick loses exactly its points."""
    _, _, rows, plants, _ = graded
    assert auto_total(rows[student]) == plants[student][1], rows[student]


@needs_bwrap
def test_planted_mistakes_fail_only_their_tests(graded):
    rows = graded[2]
    failed = {s: {k for k, v in rows[s].items() if k.startswith("test_") and float(v) == 0}
              for s in ("swap_decay", "no_clip", "wrong_ratio", "std_ratio")}
    assert failed == {"swap_decay": {"test_update_simple", "test_update_matches_reference_trajectory"},
                      "no_clip": {"test_decay_warmup_schedule"},
                      "wrong_ratio": {"test_predicted_ratio"},
                      "std_ratio": {"test_measured_ratio"}}


@needs_bwrap
def test_edited_and_deleted_test_cells_are_restored(graded):
    rows = graded[2]
    assert rows["edited_tests"]["notes"].count("was edited: restored from the source") == 3
    assert float(rows["edited_tests"]["test_decay_first_steps"]) == 0
    assert "test_update_simple was missing: re-added" in rows["deleted_cells"]["notes"]
    assert "test_measured_ratio was missing: re-added" in rows["deleted_cells"]["notes"]
    assert "variance_impl was missing: re-added from the release (blank)" in \
        rows["deleted_cells"]["notes"]
    assert float(rows["deleted_cells"]["test_measured_ratio"]) == 0


@needs_bwrap
def test_timeout_and_kernel_death_do_not_stop_the_batch(graded):
    rows = graded[2]
    assert "timed out" in rows["infinite_loop"]["notes"]
    assert "the kernel died" in rows["kernel_kill"]["notes"]
    assert float(rows["kernel_kill"]["test_update_in_place"]) == 1  # earned before the death
    assert "os._exit" in rows["os_exit"]["flags"]


@needs_bwrap
def test_input_transformer_tricks_earn_nothing(graded):
    rows = graded[2]
    assert "ipython-transformers" in rows["transformer"]["flags"]
    assert "runtime tampering" in rows["sneaky_transformer"]["flags"]


@needs_bwrap
def test_sandbox_blocks_solutions_and_network(graded):
    _, out, _, _, listener = graded
    page = (out / "feedback" / "snoop" / "ema.html").read_text()
    printed = re.findall(r'<pre class="stdout">(.*?)</pre>', page, re.DOTALL)[0]
    assert printed.count("SOLUTIONS BLOCKED FileNotFoundError") == 2, printed
    assert "NETWORK BLOCKED" in printed and "LEAKED" not in printed, printed
    with pytest.raises(OSError):  # nothing ever reached the listener
        listener.accept()


@needs_bwrap
def test_unreadable_notebook_scores_zero_with_a_note(graded):
    row = graded[2]["garbage"]
    assert "unreadable" in row["notes"] and float(row["total"]) == 0


@needs_bwrap
def test_noisy_submission_is_noted(graded):
    notes = graded[2]["noisy"]["notes"]
    assert "wrote to stderr" in notes and "raised ValueError" in notes


@needs_bwrap
def test_feedback_hides_hidden_tests(graded):
    _, out, _, plants, _ = graded
    public = "\n".join(c.source for c in nbu.read(RELEASE).cells)
    hidden = [ln for c in nbu.read(SOURCE).cells for ln in nbu.hidden_lines(c.source)
              if len(ln) >= 12 and ln not in public]
    assert hidden
    for student, (nb, _) in plants.items():
        own = "\n".join(c.source for c in nb.cells) if nb else ""  # a student may write one too
        text = html.unescape((out / "feedback" / student / "ema.html").read_text())
        leaks = [ln for ln in hidden if ln in text and ln not in own]
        assert not leaks, (student, leaks[:3])
        assert "**Rubric" in own or "**Rubric" not in text, student
        assert "### BEGIN SOLUTION" not in text, student
    records = json.loads((out / "results.json").read_text())
    snoop = next(r for r in records if r["student"] == "snoop")["graded"][0]["cells"][-1]
    raw = "".join(o.get("text", "") for o in snoop["outputs"])
    assert any(ln in raw for ln in hidden), "the snoop should have seen the hidden tests"
    page = html.unescape((out / "feedback" / "no_clip" / "ema.html").read_text())
    assert "test_decay_warmup_schedule</b>: 0 / 2 - AssertionError: ema_decay(" in page


@needs_bwrap
def test_solution_test_cells_never_write_to_stderr(graded):
    records = json.loads((graded[1] / "results.json").read_text())
    sol = next(r for r in records if r["student"] == "solution")
    for cell in sol["graded"][0]["cells"]:
        if cell["test"]:
            assert not [o for o in cell["outputs"] if o.get("name") == "stderr"], cell["grade_id"]


@needs_bwrap
def test_manual_grade_is_pending_then_entered(graded):
    course, out, rows, _, _ = graded
    assert rows["solution"]["ema_derivation"] == "needs manual grade"
    with open(out / "manual_grades.csv", newline="") as f:
        todo = [r for r in csv.DictReader(f) if r["student"] == "solution"]
    assert todo[0]["cell"] == "ema_derivation" and "Rubric" in todo[0]["rubric"]
    cmd = [sys.executable, "-m", "autograder", "manual", str(out), "--student", "solution",
           "--assignment", "ema", "--cell", "ema_derivation", "--course", str(course)]
    bad = subprocess.run(cmd + ["--points", "7"], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "points must be in [0, 6]" in bad.stderr
    ok = subprocess.run(cmd + ["--points", "5"], cwd=REPO, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    with open(out / "grades.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["student"] == "solution")
    assert float(row["ema_derivation"]) == 5 and float(row["total"]) == AUTO_MAX + 5
    assert row["manual_pending"] == "0"
    # An autograded test can be overridden only on purpose (after reviewing a flag).
    cmd = [sys.executable, "-m", "autograder", "manual", str(out), "--student", "kernel_kill",
           "--assignment", "ema", "--cell", "test_predicted_ratio", "--course", str(course),
           "--points", "2"]
    refused = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "--override" in refused.stderr
    assert subprocess.run(cmd + ["--override"], cwd=REPO, check=False).returncode == 0
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert float(rows["kernel_kill"]["total"]) == AUTO_MAX - 2
    assert "set to 2 by the instructor" in rows["kernel_kill"]["notes"]
    assert float(rows["solution"]["ema_derivation"]) == 5  # earlier entries are kept


def test_scan_flags_known_bypasses():
    tricks = {"get_ipython().input_transformers_cleanup.append(f)": "ipython-transformers",
              "get_ipython().set_custom_exc((Exception,), h)": "custom-exception-handler",
              "import os\nos._exit(0)": "os._exit",
              "import sys\nsys.modules['numpy'] = fake": "sys.modules-tampering",
              "__builtins__.AssertionError = Warning": "builtins-tampering",
              "AssertionError = Warning": "AssertionError-redefined",
              "np.testing.assert_allclose = lambda *a, **k: None": "testing-monkeypatch",
              "torch.testing.assert_close = print": "testing-monkeypatch",
              "open('/etc/passwd').read()": "file-access-outside-submission"}
    for code, name in tricks.items():
        assert name in scan_source(code), code
    honest = ("import numpy as np\nx = np.ones(3)  # os._exit is not called here\n"
              "assert x.sum() == 3\nmods = sys.modules['numpy']\n")
    assert scan_source(honest) == []


@needs_bwrap
def test_sandbox_command_has_no_network_and_limits(tmp_path):
    cmd = bwrap_command(tmp_path, ["python"], Limits(cpu_seconds=7, memory_mb=100))
    assert cmd[:3] == ["prlimit", "--cpu=7", f"--as={100 * 2**20}"]
    assert "--unshare-all" in cmd and "--die-with-parent" in cmd and "--clearenv" in cmd
    mounted = {cmd[i + 2] for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind")}
    assert str(tmp_path.resolve()) in mounted
    assert not any(m == str(REPO) or m.startswith(str(REPO / "solutions")) for m in mounted)


def test_refuses_to_run_unsandboxed_without_the_flag(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no bwrap on PATH
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--unsafe-no-sandbox" in proc.stderr


def test_unsafe_mode_is_explicit_and_recorded(tmp_path):
    (tmp_path / "subs" / "bob" / "ema").mkdir(parents=True)
    shutil.copy(RELEASE, tmp_path / "subs" / "bob" / "ema" / "ema.ipynb")
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "subs"),
                           "--out", str(tmp_path / "out"), "--unsafe-no-sandbox"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "WITHOUT a sandbox" in proc.stderr
    with open(tmp_path / "out" / "grades.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["sandbox"] == "NONE (--unsafe-no-sandbox)" and float(row["total"]) == 0


def test_release_is_fresh():
    assert release.stale(REPO) == []


def test_hidden_reference_and_solution_match_diffusers():
    """The hidden tests' transcribed schedule and the reference solution equal EMAModel."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.training_utils import EMAModel
    src = nbu.read(SOURCE)
    ns: dict = {}
    reference = _cell(src, "test_decay_default_schedule").source.split("for kw in")[0]
    exec(reference.split("### BEGIN HIDDEN TESTS")[1], ns)  # noqa: S102 - our own source
    exec(nbu.solution_text(_cell(src, "ema_impl").source), ns)  # noqa: S102
    cases = [dict(), dict(decay=0.99, min_decay=0.3, update_after_step=4),
             dict(use_ema_warmup=True), dict(use_ema_warmup=True, inv_gamma=2.0, power=0.75,
                                             decay=0.999, min_decay=0.5, update_after_step=2)]
    param = [torch.nn.Parameter(torch.zeros(2))]
    for kw in cases:
        ema = EMAModel(param, **kw)
        for s in [1, 2, 3, 5, 17, 300, 10**5]:
            want = ema.get_decay(s)
            assert ns["_diffusers_get_decay"](s, **kw) == pytest.approx(want, abs=1e-12)
            assert ns["ema_decay"](s, **kw) == pytest.approx(want, abs=1e-12)
    # The full EMA trajectory: reference solution vs EMAModel.step.
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 2)
    oracle = EMAModel(model.parameters(), use_ema_warmup=True, power=0.75)
    mine = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        oracle.step(model.parameters())
        ns["ema_update_"](mine, list(model.parameters()),
                          ns["ema_decay"](step, use_ema_warmup=True, power=0.75))
    for a, b in zip(mine, oracle.shadow_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
