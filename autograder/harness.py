"""The hidden-check harness: runs INSIDE the sandbox, holds inputs only, never expected values.

    python -I /opt/autograder/harness.py PLAN.json RESULTS.jsonl

PLAN.json: {"items": [{"cell": source} | {"check": grade_id, "cases": [case, ...]}, ...],
"cell_timeout": s}. Cells run in order in one IPython shell (no kernel: magics work, nothing is
sent anywhere); at each check's place in the notebook the student's functions are called with
the check's inputs and what they return is written to RESULTS.jsonl as plain JSON (numbers,
lists, strings, bools, None). Everything printed goes to /dev/null (the grader discards it).

A case: {"call": name, "args": [...], "kwargs": {...}, "then": [[args...], ...],
"report": ["return", "args", "props"]}. ``{"tensor": nested list, "requires_grad": b}`` in the
inputs builds a float32 torch tensor (a Parameter if requires_grad); ``{"arg": i}`` inside
``then`` is the first call's i-th argument (the same object). ``args``: the first call's
arguments after every call; ``props``: for each tensor argument, whether the list still holds
the same object, requires_grad and ``grad_fn is None``.

Student code shares this process, so it can rewrite anything here: that is fine. All it can
change is the data it hands back, and the trusted grader (checks.py) validates and compares
that data outside the sandbox. This file uses only the standard library at import time.

The course's own cells (``"course": true`` in the plan: locked cells such as a notebook's
grading helpers) own the names they bind. A check calls its function, and every function of
the notebook runs, with those names bound to what the course's cells defined - not to a
later student cell's replacement of, say, ``ring_sums`` or ``run_ring_on_processes`` (an
edited locked cell is restored the same way by the driver). The student's bindings are put
back after the check. A student who instead rewrites the course's objects in place (their
code, this harness) is in the case above: only the data handed back changes.
"""
import ast
import json
import math
import signal
import sys


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def plain(x, depth=0):
    """A JSON-able copy of a return value: numbers, bools, strings, None, lists, tensors."""
    if depth > 20:
        return {"unsupported": "nesting"}
    if x is None or type(x) in (bool, str):
        return x
    if type(x) in (int, float):
        return x if type(x) is int or math.isfinite(x) else repr(x)
    mods = sys.modules
    torch, np = mods.get("torch"), mods.get("numpy")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return {"tensor": plain(t.tolist(), depth + 1), "shape": list(t.shape)}
    if np is not None and isinstance(x, np.ndarray):
        return {"tensor": plain(x.tolist(), depth + 1), "shape": list(x.shape)}
    if np is not None and isinstance(x, (np.floating, np.integer, np.bool_)):
        return plain(x.item(), depth + 1)
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return plain(float.__float__(x), depth + 1)
    if isinstance(x, (list, tuple)):
        return [plain(v, depth + 1) for v in list(x)[:100_000]]
    return {"unsupported": type(x).__name__[:40]}


def build(x, made):
    """Inputs: lists/dicts as given, tensor markers made into tensors (recorded in ``made``)."""
    if isinstance(x, dict) and "tensor" in x:
        import torch
        t = torch.tensor(x["tensor"], dtype=torch.float32)
        if x.get("requires_grad"):
            t = torch.nn.Parameter(t)
        made.append(t)
        return t
    if isinstance(x, list):
        return [build(v, made) for v in x]
    return x


def resolve(x, first):
    if isinstance(x, dict) and set(x) == {"arg"}:
        return first[x["arg"]]
    if isinstance(x, dict) and "tensor" in x:
        return build(x, [])
    if isinstance(x, list):
        return [resolve(v, first) for v in x]
    return x


def run_case(ns, case, timeout):
    fn = ns.get(case["call"])
    if not callable(fn):
        return {"error": "missing"}
    made = []
    args = build(case.get("args", []), made)
    kwargs = case.get("kwargs", {})
    holders = [(a, list(a)) for a in args if isinstance(a, list)]
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        value = fn(*args, **kwargs)
        for more in case.get("then", []):
            value = fn(*resolve(more, args), **kwargs)
    except _Timeout:
        return {"error": "timeout"}
    except BaseException as e:  # noqa: BLE001 - the student's exception, any kind
        return {"error": type(e).__name__}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    out = {}
    report = case.get("report", ["return"])
    if "return" in report:
        out["return"] = plain(value)
    if "args" in report:
        out["args"] = plain(args)
    if "props" in report:
        out["props"] = [[all(x is y for x, y in zip(a, orig)), bool(t.requires_grad),
                         t.grad_fn is None] for a, orig in holders for t in orig
                        if hasattr(t, "requires_grad")]
    return {"value": out}


def _targets(node, out):
    if isinstance(node, ast.Name):
        out[node.id] = None
    elif isinstance(node, (ast.Tuple, ast.List)):
        for e in node.elts:
            _targets(e, out)
    elif isinstance(node, ast.Starred):
        _targets(node.value, out)


def bound_names(source, conditional=None):
    """{name: module or None}: the names a cell's top level binds (assignments, def, class,
    import - with the module an import binds it to - for and with targets, also inside
    top-level if/try/for/while/with blocks; not inside functions). ``conditional``, a set,
    gets the names bound only inside such blocks (maybe not bound at all)."""
    out, sure = {}, set()

    def visit(body, cond):
        for node in body:
            found = {}
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = None
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        found[a.asname] = a.name
                    else:
                        found[a.name.split(".")[0]] = a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name != "*":
                        found[a.asname or a.name] = None
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    _targets(t, found)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
                _targets(node.target, found)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        _targets(item.optional_vars, found)
            out.update(found)
            if not cond and not isinstance(node, (ast.For, ast.AsyncFor)):
                sure.update(found)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [], True)
            for h in getattr(node, "handlers", []) or []:
                if h.name:
                    out[h.name] = None
                visit(h.body, True)

    try:
        visit(ast.parse(source).body, False)
    except (SyntaxError, ValueError, RecursionError):
        pass
    if conditional is not None:
        conditional.update(set(out) - sure)
    return out


def pin(ns, names, conditional, before, ok, pinned):
    """After a course cell ran: record in ``pinned`` what it bound each of its names to. A name
    it did not get to bind (the cell failed - a student can make it fail, to keep a stand-in
    defined earlier) is pinned as unbound, unless it holds a module (the same object whoever
    imports it)."""
    import types

    for n in names:
        now = ns.get(n, _MISSING)
        if now is not before[n] or (ok and n not in conditional):
            if now is not _MISSING:
                pinned[n] = now
        elif not ok and n not in conditional and not isinstance(now, types.ModuleType):
            pinned[n] = _MISSING


_MISSING = object()


def bind(ns, pinned):
    """Bind the course's names in ``ns``; return what they were bound to before."""
    saved = {}
    for name, value in pinned.items():
        saved[name] = ns.get(name, _MISSING)
        if value is _MISSING:
            ns.pop(name, None)
        else:
            ns[name] = value
    return saved


def unbind(ns, saved):
    for name, value in saved.items():
        if value is _MISSING:
            ns.pop(name, None)
        else:
            ns[name] = value


PRELOAD = ("numpy", "torch", "matplotlib")


def preload():
    """Import the heavy libraries before the first cell, outside its timer (a busy machine
    can take longer than a cell's timeout just to import torch)."""
    import importlib.util
    for m in PRELOAD:
        if importlib.util.find_spec(m) is not None:
            __import__(m)


def main(plan_path, results_path):
    plan = json.load(open(plan_path))
    results = open(results_path, "w")
    sys.stdout = sys.stderr = open("/dev/null", "w")
    signal.signal(signal.SIGALRM, _alarm)
    timeout = float(plan.get("cell_timeout", 60))
    preload()
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    sys.path.append(".")
    pinned = {}  # the course cells' names and what those cells bound them to
    for item in plan["items"]:
        if "cell" in item:
            names, conditional = {}, set()
            if item.get("course"):
                try:
                    names = bound_names(shell.transform_cell(item["cell"]), conditional)
                except Exception:  # noqa: BLE001 - not Python: nothing to pin
                    names = {}
            before = {n: shell.user_ns.get(n, _MISSING) for n in names}
            ok = False
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                ok = bool(shell.run_cell(item["cell"], store_history=True).success)
            except BaseException:  # noqa: BLE001 - a timeout between IPython's own handlers
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            pin(shell.user_ns, names, conditional, before, ok, pinned)
            continue
        got = []
        saved = bind(shell.user_ns, pinned)
        try:
            for case in item["cases"]:
                try:
                    got.append(run_case(shell.user_ns, case, timeout))
                except BaseException as e:  # noqa: BLE001 - e.g. a tensor that cannot be read
                    got.append({"error": type(e).__name__})
        finally:
            unbind(shell.user_ns, saved)
        results.write(json.dumps({"check": item["check"], "results": got}) + "\n")
        results.flush()
    results.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
