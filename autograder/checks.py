"""Hidden checks on the trusted side: read from the source, expected values, comparison.

In the source notebook, the ``### BEGIN/END HIDDEN TESTS`` region of a test cell is *grader
code*: it is executed here, outside every sandbox, never in a student's kernel (nbgrader's
release strips it). It declares the cases with ``check(...)``:

    check("ema_decay", 7, kwargs=dict(decay=0.99), atol=1e-12)      # vs the reference solution
    check("predicted_variance_ratio", 0.5, 0.9, want=0.0505, rtol=1e-9)   # vs a given value
    check("ema_update_", [tensor(e)], [tensor(p)], 0.5, report=["args", "props"])

The student's functions get the inputs only (``harness.py`` in the sandbox); what comes back is
plain JSON, validated and compared here with our own arithmetic (no student ``abs``,
``allclose`` or float subclass is involved). Expected values come from ``want`` or from running
the source's own solution through the same harness, on the trusted side, once per batch.

**Measurements** are made here, not taken from the student: ``check(..., measure=fn)`` applies
``fn``, a function of the hidden region, on the trusted side to what the student's function
returned (e.g. a trained model's weights) and compares *its* result with ``want``; the hidden
region's code travels with the case and never reaches a jail.

**Code the student did not write** (scan.py): ``spec`` attaches the source's declaration
(``metadata.autograder``) to each test's first case; ``plan`` - which sees every cell the
harness will run - records, for each declared part whose functions reach an import of a
withheld module, a library equivalent or a function copied from the course's reference code,
``not_written`` on that part's test cases (trusted side only, never sent to the jail), and
``score`` gives those tests 0 with the reason. The instructor can restore them after review
(``manual --override``).
"""
from __future__ import annotations

import builtins
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from . import notebook as nbu
from . import scan
from .sandbox import HARNESS

MAX_RESULTS = 20 * 2**20  # bytes of harness output read back
# What a case holds for the trusted side only: stripped from the plan the jail gets.
EXPECTED_KEYS = ("want", "atol", "rtol", "measure", "declared", "not_written")


def tensor(values, requires_grad: bool = False) -> dict:
    """An input tensor (float32; a Parameter if ``requires_grad``), built inside the sandbox."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return {"tensor": values, "requires_grad": bool(requires_grad)}


def arg(i: int) -> dict:
    """In ``then``: the first call's i-th argument, the same object (for in-place updates)."""
    return {"arg": i}


def cases_of(source_cell_text: str) -> list[dict]:
    """Run a test cell's hidden region (trusted grader code) and return its cases."""
    found: list[dict] = []

    code = ""

    def check(call, *args, kwargs=None, then=None, report=("return",), want=None,
              atol=0.0, rtol=0.0, measure=None):
        c = {"call": call, "args": list(args), "kwargs": dict(kwargs or {}),
             "report": list(report), "atol": float(atol), "rtol": float(rtol)}
        if then:
            c["then"] = [list(t) for t in then]
        if want is not None:
            c["want"] = want
        if measure is not None:  # a function of this hidden region, applied on this side
            c["measure"] = {"code": code, "name": measure.__name__}
        found.append(json.loads(json.dumps(c)))  # plain data only, and a fresh copy

    for block in nbu.HIDDEN.finditer(source_cell_text):
        code = "\n".join(block.group(0).splitlines()[1:-1])
        _hidden_namespace(code, check)
    return found


def _hidden_namespace(code: str, check) -> dict:
    ns = {"check": check, "tensor": tensor, "arg": arg, "__name__": "hidden_checks"}
    exec(compile(code, "<hidden checks>", "exec"), ns)  # noqa: S102 - the instructor's source
    return ns


_MEASURES: dict[tuple[str, str], object] = {}


def measured(case: dict, value: dict) -> dict:
    """What is compared for a case: the student's reported values, or - for a measured case -
    the grader's own measurement of the returned value (its ``measure`` function, here)."""
    m = case.get("measure")
    if not m:
        return value
    key = (m["code"], m["name"])
    if key not in _MEASURES:
        _MEASURES[key] = _hidden_namespace(m["code"], lambda *a, **k: None)[m["name"]]
    return {"return": _MEASURES[key](value.get("return"))}


def spec(source) -> dict[str, list[dict]]:
    """{test grade_id: [case, ...]} for every test cell of the source notebook; each test's
    first case also carries the source's declaration (``declared``, see scan.py)."""
    out = {nbu.grade_id(c): cases_of(c.source) for c in source.cells if nbu.is_test(c)}
    decl = scan.declaration(source)
    for cases in out.values():
        if cases and decl["parts"]:
            cases[0]["declared"] = json.loads(json.dumps(decl))
    return out


def inputs_only(cases: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k not in EXPECTED_KEYS} for c in cases]


def plan(cells: list[tuple[str, str | None]], checks: dict[str, list[dict]],
         cell_timeout: float) -> dict:
    """The harness plan: ``cells`` is [(kind, source-or-grade_id)] in notebook order, kind
    "cell" (run it) or "check" (run that test's cases there). Inputs only."""
    items = []
    last = max([k for k, (kind, x) in enumerate(cells) if kind == "check"], default=-1)
    for kind, x in cells[:last + 1]:  # cells after the last check cannot change a result
        if kind == "cell":
            items.append({"cell": x})
        elif checks.get(x):
            items.append({"check": x, "cases": inputs_only(checks[x])})
    mark_not_written([i["cell"] for i in items if "cell" in i], checks)
    return {"items": items, "cell_timeout": cell_timeout}


def mark_not_written(sources: list[str], checks: dict[str, list[dict]]) -> None:
    """On the trusted side: ``not_written`` (the reason) on the first case of a test one of whose
    declared parts reaches code the student did not write (scan.part_findings); removed from
    every other case (the batch's reference run goes through here first)."""
    decl = next((cases[0]["declared"] for cases in checks.values()
                 if cases and "declared" in cases[0]), None)
    reasons: dict[str, list[str]] = {}
    if decl is not None:
        for part, found in zip(decl["parts"], scan.part_findings(sources, decl)):
            if found:
                why = ", ".join(dict.fromkeys(f.flag() for f in found))
                for gid in part["tests"]:
                    reasons.setdefault(gid, []).append(f"{part['name'] or 'a part'}: {why}")
    for gid, cases in checks.items():
        for c in cases:
            c.pop("not_written", None)
        if cases and gid in reasons:
            cases[0]["not_written"] = "; ".join(reasons[gid])


def reference_plan(source, checks, cell_timeout) -> dict:
    """The plan for the source's own solution (its answer cells without the delimiters)."""
    cells = []
    for c in source.cells:
        if c.cell_type != "code":
            continue
        if nbu.is_test(c):
            cells.append(("check", nbu.grade_id(c)))
        else:
            cells.append(("cell", nbu.solution_text(c.source) if nbu.is_solution(c) else c.source))
    return plan(cells, checks, cell_timeout)


def read_results(path: Path) -> dict[str, list[dict]]:
    """{grade_id: [case result]} from a harness's output file (the student could write it: it
    is untrusted data, size-capped, parsed as JSON only)."""
    out: dict[str, list[dict]] = {}
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RESULTS + 1)
    except OSError:
        return out
    for line in raw[:MAX_RESULTS].splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("check"), str) and \
                isinstance(rec.get("results"), list):
            out[rec["check"]] = rec["results"]
    return out


def run_reference(source, checks, cell_timeout: float, env: dict) -> dict[str, list[dict]]:
    """Run the source's solution through the harness here (trusted code, no sandbox)."""
    with tempfile.TemporaryDirectory(prefix="autograder-ref-") as tmp:
        p, r = Path(tmp) / "plan.json", Path(tmp) / "results.jsonl"
        p.write_text(json.dumps(reference_plan(source, checks, cell_timeout)))
        subprocess.run([sys.executable, "-I", str(HARNESS), str(p), str(r)], cwd=tmp, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
                       check=False)
        return read_results(r)


def expected(checks: dict[str, list[dict]], reference: dict[str, list[dict]]) -> dict:
    """{grade_id: [(wanted value dict, atol, rtol)]}; raise if the reference fails its own."""
    out = {}
    for gid, cases in checks.items():
        ref = reference.get(gid, [])
        rows = []
        for k, c in enumerate(cases):
            if "want" in c:
                w = {"return": c["want"]}
                if k < len(ref) and "value" in ref[k] and not match(
                        measured(c, ref[k]["value"]), w, c["atol"], c["rtol"])[0]:
                    raise RuntimeError(f"the reference solution fails {gid} case {k}")
            elif k < len(ref) and "value" in ref[k]:
                w = measured(c, ref[k]["value"])
            else:
                raise RuntimeError(f"the reference solution did not answer {gid} case {k}: "
                                   f"{ref[k] if k < len(ref) else 'no result'}")
            rows.append((w, c["atol"], c["rtol"]))
        out[gid] = rows
    return out


def match(got, want, atol: float, rtol: float) -> tuple[bool, str]:
    """(ok, why) comparing plain JSON data; numbers within atol + rtol * |want|."""
    if isinstance(want, bool) or want is None or isinstance(want, str):
        return (type(got) is type(want) and got == want), "a wrong value"
    if isinstance(want, (int, float)):
        if type(got) not in (int, float):
            return False, "a value of the wrong type"
        if not (math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)):
            return False, "a wrong value"
        return True, ""
    if isinstance(want, list):
        if type(got) is not list or len(got) != len(want):
            return False, "a value of the wrong type or shape"
        for g, w in zip(got, want):
            ok, why = match(g, w, atol, rtol)
            if not ok:
                return ok, why
        return True, ""
    if isinstance(want, dict):
        if type(got) is not dict or set(got) != set(want):
            return False, "a value of the wrong type or shape"
        if "shape" in want and got.get("shape") != want["shape"]:
            return False, "a tensor of the wrong shape"
        for k in want:
            ok, why = match(got[k], want[k], atol, rtol)
            if not ok:
                return ok, why
        return True, ""
    return False, "a value of an unknown type"


BUILTIN_EXC = {n for n, v in vars(builtins).items()
               if isinstance(v, type) and issubclass(v, BaseException)}


def score(gid: str, cases: list[dict], exp: list[tuple], got: list | None,
          why_missing: str) -> tuple[bool, str]:
    """(passed, trusted message) for one test: all its cases must match."""
    if not cases:
        return False, "no hidden check is defined for this test (instructor: see checks.py)"
    ok, msg = _score(cases, exp, got, why_missing)
    taken = next((c["not_written"] for c in cases if c.get("not_written")), None)
    if taken:
        return False, (f"0 points: this test grades code the student did not write ({taken}); "
                       f"its checks: {msg}. The instructor may restore the points after review")
    return ok, msg


def _score(cases, exp, got, why_missing) -> tuple[bool, str]:
    if got is None:
        return False, f"not checked: {why_missing}"
    reasons: dict[str, int] = {}
    for k, (case, (want, atol, rtol)) in enumerate(zip(cases, exp)):
        r = got[k] if k < len(got) else None
        call = case["call"]
        if not isinstance(r, dict):
            why = f"{call} was not checked"
        elif "value" in r:
            try:
                ok, why = match(measured(case, r["value"]), want, atol, rtol)
                why = "" if ok else f"{call} returned {why}"
            except Exception:  # noqa: BLE001 - the grader could not measure what came back
                why = f"{call} returned a value the grader could not measure"
        else:
            e = r.get("error")
            why = (f"{call} is not defined" if e == "missing" else
                   f"{call} timed out" if e == "timeout" else
                   f"{call} raised {e}" if e in BUILTIN_EXC else f"{call} raised an exception")
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    bad = sum(reasons.values())
    if not bad:
        return True, f"all {len(cases)} checks passed"
    detail = "; ".join(f"{why} ({n}x)" for why, n in reasons.items())
    return False, f"{bad} of {len(cases)} checks failed: {detail}"
