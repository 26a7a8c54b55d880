"""The experiment runner: one claim of the course, its arms, its seeds, an honest verdict.

An experiment (one file per claim in this folder) is an ``Experiment``: the claim in one
sentence, the rule that will decide it and the *competence gate* its baseline must pass - both
written down, with the date they were fixed, *before* the run - and three functions:

  units(settings, seeds)        -> [{"arm": ..., "seed": ..., ...}]   the independent runs
  run_unit(unit, settings)      -> {...}                              plain JSON numbers
  summarize(Summary)            -> Outcome(arms, headline, verdict, reason, figures, details,
                                           rows, gate_values)

Why a gate: a comparison between two models that never learned to draw says nothing about
drawing (blobs beat noise). Each ``Gate`` names a number the baseline must reach (the control
arm's prompt accuracy at least 0.6, say); ``summarize`` reports the measured value in
``gate_values``, and the runner checks it. A gate that is not met turns every verdict into
**underpowered**, with the numbers kept: never reproduced, not reproduced or inconclusive.

Why rows: one experiment may decide several questions, and each gets its own rule and verdict
(``Row``): a sub-claim, the *direction* of an effect, its *size* against the published one
("1.4x [1.27, 1.58] against 3.4x: smaller"), or a *side constraint* (an accuracy drop, a
weight gap) decided on its own paired interval, never by silently flipping the headline.

The runner does the rest: it caches every unit on disk (keyed by the experiment, its version,
the scale's settings and the unit), so an interrupted run loses at most the unit in flight; it
spreads units over worker processes of one torch thread each (two processes on two cores train
~1.96x faster than one; more threads in one process do not); it shows a progress bar over the
arms and seeds; and it caches the whole ``Result`` keyed by its config. A rerun loads the cache,
``force=True`` recomputes, and a cached result whose stored config differs from the one asked
for is never reused.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm.auto import tqdm

from ..evaluation.stats import CONSTRAINTS, SIZES, check_constraint, compare_size, decide
from ..paths import cache_dir, content_hash

SCALES = ("fast", "full")
MAX_SEEDS = 10
UNDERPOWERED = "underpowered"  # the gate was not met: the comparison cannot decide anything
VERDICTS = ("reproduced", "not reproduced", "inconclusive", UNDERPOWERED)
# what each kind of row may conclude (evaluation/stats.py decides, compare_size, check_constraint)
ROW_VERDICTS = {"claim": VERDICTS, "size": SIZES + (UNDERPOWERED,),
                "constraint": CONSTRAINTS + (UNDERPOWERED,)}


@dataclass
class Arm:
    """One measured value: an arm of the comparison, or a derived quantity (a ratio)."""

    name: str
    metric: str  # what was measured, with its unit: "steps to prompt accuracy 0.5"
    value: float
    lo: float = math.nan  # the 95% interval
    hi: float = math.nan
    n: int = 0  # how many independent things the interval is over
    n_what: str = "seeds"  # seeds, prompts, pairs, runs, ...
    interval: str = "t over seeds"  # t over seeds | Wilson | bootstrap | exact | none
    per_seed: list = field(default_factory=list)

    def text(self, digits: int = 3) -> str:
        """'0.812 [0.75, 0.86] (n=3 seeds)'."""
        v = _fmt(self.value, digits)
        ci = f" [{_fmt(self.lo, digits)}, {_fmt(self.hi, digits)}]" \
            if math.isfinite(self.lo) and math.isfinite(self.hi) else ""
        return f"{v}{ci} (n={self.n} {self.n_what})"


def _fmt(x, digits: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.3e}"


@dataclass(frozen=True)
class Gate:
    """What the baseline must reach for the comparison to mean anything; fixed before the run.

    ``summarize`` reports the measured value as ``Outcome.gate_values[key]``.
    """

    what: str  # "control arm: kind+colour+background prompt accuracy at 32 px (n=96 prompts)"
    key: str
    op: str  # ">=" or "<="
    threshold: float

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"gate {self.key!r}: op must be '>=' or '<=', got {self.op!r}")

    def met(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def text(self, value: float | None = None) -> str:
        need = f"{self.what} {self.op} {self.threshold:g}"
        return need if value is None else f"{need}: measured {_fmt(value, 3)}"


@dataclass
class Row:
    """One decided question: a sub-claim, the direction of an effect ("claim"), its size
    against a published value ("size"), or a side constraint ("constraint")."""

    label: str  # "direction", "size against the published 3.4x", "accuracy drop at most 0.05"
    kind: str  # claim | size | constraint
    measured: Arm
    rule: str
    verdict: str
    reason: str
    # False for a question no trained model enters (a counted cost, a measured time): the
    # competence gate does not decide whether it can be answered
    gated: bool = True


def claim_row(label: str, arm: Arm, null: float, direction: str = "above",
              equivalence: float | None = None, rule: str | None = None) -> Row:
    """A claim (or an effect's direction) decided by where ``arm``'s interval lies (stats.decide)."""
    verdict, reason = decide(arm.lo, arm.hi, null, direction, equivalence)
    rule = rule or (f"reproduced if the 95% interval lies {direction} {null:g}"
                    + (f"; not reproduced if it lies within {null:g} +- {equivalence:g}"
                       if equivalence is not None else ""))
    return Row(label, "claim", arm, rule, verdict, reason)


def size_row(arm: Arm, published: float, source: str = "published") -> Row:
    """The size of an effect against the published one (stats.compare_size)."""
    verdict, reason = compare_size(arm.lo, arm.hi, published)
    return Row(f"size against the {source} {published:g}", "size", arm,
               f"consistent if the 95% interval contains {published:g}; else smaller or larger",
               verdict, reason)


def constraint_row(label: str, arm: Arm, limit: float, direction: str = "below") -> Row:
    """A side constraint on a paired difference (stats.check_constraint)."""
    verdict, reason = check_constraint(arm.lo, arm.hi, limit, direction)
    return Row(label, "constraint", arm,
               f"held if the 95% interval lies {direction} {limit:g}", verdict, reason)


@dataclass
class Outcome:
    """What ``summarize`` returns. ``rows`` decide the experiment's questions, headline first;
    without rows, (headline, verdict, reason) is its one row."""

    arms: list[Arm]
    headline: Arm  # the one number of the results page
    verdict: str
    reason: str
    figures: list[str] = field(default_factory=list)  # paths inside the figure folder given
    details: dict = field(default_factory=dict)  # tables the lecture may show
    rows: list[Row] = field(default_factory=list)
    gate_values: dict[str, float] = field(default_factory=dict)  # Gate.key -> measured value


@dataclass
class Summary:
    """What ``summarize`` is given: the units, their outputs, and where to draw figures."""

    units: list[dict]
    outputs: list[dict]
    settings: dict
    scale: str
    seeds: list[int]
    figure_dir: Path

    def by_arm(self) -> dict[str, list[dict]]:
        """{arm: [output of each seed, in seed order]}, arms in the order of ``units``."""
        out: dict[str, list[dict]] = {}
        for u, o in sorted(zip(self.units, self.outputs), key=lambda p: p[0].get("seed", 0)):
            out.setdefault(u["arm"], []).append(o)
        order = list(dict.fromkeys(u["arm"] for u in self.units))
        return {a: out[a] for a in order}


@dataclass
class Experiment:
    name: str
    claim: str  # the seed's claim, one sentence
    rule: str  # how the verdict is decided, fixed before any run
    lecture: str  # the notebook that teaches it, e.g. "04_min_snr"
    anchor: str  # the published number it is held against
    full_minutes: float  # estimated wall time at full scale on the 2-core laptop
    scales: dict[str, dict]  # {"fast": settings, "full": settings}: the config of the run
    default_seeds: dict[str, int]  # {"fast": 1, "full": 3}
    units: Callable[[dict, list[int]], list[dict]]
    run_unit: Callable[[dict, dict], dict]
    summarize: Callable[[Summary], Outcome]
    version: int = 1  # bump when the measurement changes: old caches stop matching
    # the competence gate; an experiment that measures a system rather than a model (a
    # network's cost, a memory formula) has none and says why in ``gate_note``
    gates: tuple[Gate, ...] = ()
    gate_note: str = ""
    rule_fixed: str = ""  # ISO date the rule and the gate were fixed (before the run)
    # prepare(settings, seeds, scale): builds what the units share (bases.py's pre-trained
    # models) once, in the runner's own process on every core, before the units start
    prepare: Callable[[dict, list[int], str], None] | None = None


@dataclass
class Result:
    name: str
    claim: str
    rule: str
    lecture: str
    anchor: str
    scale: str
    seeds: list[int]
    config: dict  # everything the result depends on; its hash names the cache
    config_key: str
    arms: list[Arm]
    headline: Arm
    verdict: str
    reason: str
    figures: list[str]  # absolute paths
    wall_s: float  # seconds this computation took (units loaded from the cache count ~0)
    unit_seconds: list[float]  # each unit's own seconds, when it was computed
    units_cached: int
    details: dict
    machine: dict
    cached: bool = False
    rows: list[Row] = field(default_factory=list)
    gate: list[dict] = field(default_factory=list)  # {what, key, op, threshold, value, met}
    gate_met: bool = True
    gate_note: str = ""
    rule_fixed: str = ""
    date: str = ""  # when it was measured (UTC, ISO)
    commit: str = ""  # the code it was measured with

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        d = dict(d)
        d["arms"] = [Arm(**a) for a in d["arms"]]
        d["headline"] = Arm(**d["headline"])
        d["rows"] = [Row(**{**r, "measured": Arm(**r["measured"])}) for r in d.get("rows", [])]
        return cls(**d)

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no arm {name!r}; it has {[a.name for a in self.arms]}")

    def table(self) -> str:
        """The arms as a Markdown table."""
        rows = ["| arm | metric | value [95% interval] (n) | interval |", "|---|---|---|---|"]
        rows += [f"| {a.name} | {a.metric} | {a.text()} | {a.interval} |" for a in self.arms]
        return "\n".join(rows)


# ------------------------------------------------------------------ registry
# The course's claims in lecture order. A name whose module is not written yet is skipped,
# so experiments can land one at a time without editing this line.
COURSE_ORDER = ("resolution", "noise_offset", "min_snr", "ema", "stability",
                "captioning", "collapse", "balance", "allreduce", "zero", "data_parallel",
                "sft", "dpo", "safety", "lora")
EXPERIMENTS = {  # name -> module; the module defines EXPERIMENT
    name: f"reference_impl.experiments.{name}"
    for name in COURSE_ORDER
    if importlib.util.find_spec(f"reference_impl.experiments.{name}") is not None
}


class ExperimentError(ValueError):
    """A bad experiment name, scale or seed count; the message says what is allowed."""


def names() -> list[str]:
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).EXPERIMENT


def seed_list(exp: Experiment, scale: str, seeds: int | None) -> list[int]:
    if scale not in SCALES:
        raise ExperimentError(f"scale {scale!r}; choose one of {', '.join(SCALES)}")
    n = exp.default_seeds[scale] if seeds is None else seeds
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SEEDS:
        raise ExperimentError(f"seeds must be an integer from 1 to {MAX_SEEDS}, got {seeds!r}")
    return list(range(n))


def experiment_config(exp: Experiment, scale: str, seeds: list[int]) -> dict:
    return {"name": exp.name, "version": exp.version, "scale": scale,
            "settings": exp.scales[scale], "seeds": seeds}


def result_dir(name: str, scale: str, key: str) -> Path:
    return cache_dir("experiments", name, f"{scale}-{key}")


# ------------------------------------------------------------------ running
def _unit_key(exp: Experiment, scale: str, unit: dict) -> str:
    return content_hash({"name": exp.name, "version": exp.version, "scale": scale,
                         "settings": exp.scales[scale], "unit": unit})


def _run_one(module: str, unit: dict, settings: dict) -> tuple[dict, float]:
    """Worker entry point (module-level, so it pickles): one unit, timed."""
    import torch

    torch.set_num_threads(1)
    exp = importlib.import_module(module).EXPERIMENT
    t0 = time.perf_counter()
    out = exp.run_unit(unit, settings)
    return out, time.perf_counter() - t0


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def default_workers() -> int:
    """Worker processes: REFERENCE_IMPL_WORKERS, else one per core up to 2 (the laptop)."""
    env = os.environ.get("REFERENCE_IMPL_WORKERS")
    return max(1, int(env)) if env else max(1, min(2, os.cpu_count() or 1))


def _run_units(exp: Experiment, scale: str, units: list[dict], force: bool, workers: int,
               progress: bool) -> tuple[list[dict], list[float], int]:
    settings = exp.scales[scale]
    unit_dir = cache_dir("experiments", exp.name, "units")
    outputs: list[dict | None] = [None] * len(units)
    seconds = [0.0] * len(units)
    todo = []
    for i, u in enumerate(units):
        path = unit_dir / f"{_unit_key(exp, scale, u)}.json"
        if path.exists() and not force:
            stored = json.loads(path.read_text())
            if stored.get("unit") == u and stored.get("settings") == settings:
                outputs[i], seconds[i] = stored["output"], stored["seconds"]
                continue
        todo.append(i)
    module = EXPERIMENTS[exp.name]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), disable=not progress,
               desc=f"{exp.name} [{scale}]", unit="run", dynamic_ncols=True)

    def done(i: int, out: dict, secs: float) -> None:
        outputs[i], seconds[i] = out, secs
        path = unit_dir / f"{_unit_key(exp, scale, units[i])}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"unit": units[i], "settings": settings, "output": out,
                                   "seconds": secs}))
        tmp.replace(path)  # atomic: a killed run never leaves half a unit
        bar.set_postfix_str(f"{units[i]['arm']} seed {units[i].get('seed', 0)}")
        bar.update(1)

    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            bar.set_postfix_str(f"{units[i]['arm']} seed {units[i].get('seed', 0)}")
            done(i, *_run_one(module, units[i], settings))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = {pool.submit(_run_one, module, units[i], settings): i for i in todo}
            for f in as_completed(futures):
                i = futures[f]
                try:
                    out, secs = f.result()
                except Exception as e:
                    raise RuntimeError(f"{exp.name}: unit {units[i]} failed: {e!r}") from e
                done(i, out, secs)
    bar.close()
    return outputs, seconds, len(units) - len(todo)  # type: ignore[return-value]


def decide_rows(exp: Experiment, outcome: Outcome) -> tuple[list[Row], list[dict], bool]:
    """The rows (headline first), the gate's record and whether it was met. A gate not met
    makes every row underpowered; its reason keeps the numbers."""
    rows = outcome.rows or [Row("claim", "claim", outcome.headline, exp.rule, outcome.verdict,
                                outcome.reason)]
    for r in rows:
        if r.kind not in ROW_VERDICTS or r.verdict not in ROW_VERDICTS[r.kind]:
            raise ValueError(f"{exp.name}: row {r.label!r} of kind {r.kind!r} has verdict "
                             f"{r.verdict!r}; allowed: {ROW_VERDICTS.get(r.kind)}")
    record = []
    for g in exp.gates:
        if g.key not in outcome.gate_values:
            raise ValueError(f"{exp.name}: summarize reported no value for its gate {g.key!r}")
        value = float(outcome.gate_values[g.key])
        record.append({**dataclasses.asdict(g), "value": value, "met": g.met(value)})
    if not exp.gates and not exp.gate_note:
        record.append({"what": "a competence gate (none declared)", "key": "", "op": "",
                       "threshold": math.nan, "value": math.nan, "met": False})
    met = all(g["met"] for g in record)
    if not met:
        failed = "; ".join(
            f"{g['what']} {g['op']} {g['threshold']:g}: measured {_fmt(g['value'], 3)}"
            if g["key"] else g["what"] for g in record if not g["met"])
        rows = [dataclasses.replace(r, verdict=UNDERPOWERED,
                                    reason=f"the competence gate was not met ({failed}), so this "
                                           f"comparison decides nothing; the numbers stand as "
                                           f"measured") if r.gated else r for r in rows]
    return rows, record, met


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    import torch

    return {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "processor": platform.processor() or platform.machine()}


def run_experiment(name: str, scale: str = "fast", seeds: int | None = None, force: bool = False,
                   workers: int | None = None, progress: bool = True) -> Result:
    """Run (or load from the cache) one experiment; returns its ``Result``."""
    exp = get(name)
    seed_ids = seed_list(exp, scale, seeds)
    config = experiment_config(exp, scale, seed_ids)
    key = content_hash(config)
    out_dir = result_dir(name, scale, key)
    path = out_dir / "result.json"
    if path.exists() and not force:
        stored = json.loads(path.read_text())
        if stored.get("config") == config:
            res = Result.from_dict(stored)
            res.cached = True
            # figures live in this result's folder, wherever the cache has moved since
            res.figures = [str(out_dir / "figures" / Path(f).name) for f in res.figures]
            return res
        print(f"{name}: the cached result in {out_dir} was made with another config; recomputing")
    t0 = time.perf_counter()
    commit = _commit()  # the code the run starts with (the checkout may move while it runs)
    if exp.prepare is not None:
        exp.prepare(exp.scales[scale], seed_ids, scale)
    units = exp.units(exp.scales[scale], seed_ids)
    for u in units:
        if "arm" not in u:
            raise ValueError(f"{name}: every unit needs an 'arm', got {u}")
    outputs, unit_seconds, n_cached = _run_units(exp, scale, units, force,
                                       default_workers() if workers is None else workers, progress)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    outcome = exp.summarize(Summary(units, outputs, exp.scales[scale], scale, seed_ids, fig_dir))
    if outcome.verdict not in VERDICTS:
        raise ValueError(f"{name}: verdict {outcome.verdict!r} is not one of {VERDICTS}")
    rows, gate, met = decide_rows(exp, outcome)
    wall = time.perf_counter() - t0  # this run's; units loaded from their cache cost ~0 here
    res = Result(name=name, claim=exp.claim, rule=exp.rule, lecture=exp.lecture,
                 anchor=exp.anchor, scale=scale, seeds=seed_ids, config=config, config_key=key,
                 arms=outcome.arms, headline=rows[0].measured, verdict=rows[0].verdict,
                 reason=rows[0].reason, figures=[str(fig_dir / f) for f in outcome.figures],
                 wall_s=wall, unit_seconds=unit_seconds, units_cached=n_cached, details=outcome.details,
                 machine=machine(), rows=rows, gate=gate, gate_met=met, gate_note=exp.gate_note,
                 rule_fixed=exp.rule_fixed, commit=commit,
                 date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res.to_dict(), indent=1, default=float))
    tmp.replace(path)
    return res
