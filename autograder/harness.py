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
"""
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
    for item in plan["items"]:
        if "cell" in item:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                shell.run_cell(item["cell"], store_history=True)
            except BaseException:  # noqa: BLE001 - a timeout between IPython's own handlers
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            continue
        got = []
        for case in item["cases"]:
            try:
                got.append(run_case(shell.user_ns, case, timeout))
            except BaseException as e:  # noqa: BLE001 - e.g. a tensor that cannot be read
                got.append({"error": type(e).__name__})
        results.write(json.dumps({"check": item["check"], "results": got}) + "\n")
        results.flush()
    results.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
