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
