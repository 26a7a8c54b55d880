"""The experiment runner: result schema, cache hit and --force, bad input, the results page."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from reference_impl.experiments import runner
from reference_impl.experiments.results_page import write_page

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setenv("REFERENCE_IMPL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOY_CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setitem(runner.EXPERIMENTS, "toy", "toy_experiment")
    return tmp_path / "calls.txt"


def calls(path):
    return path.read_text().split() if path.exists() else []


def test_result_schema(toy):
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert res.claim and res.rule and res.verdict in runner.VERDICTS
    assert res.seeds == [0, 1, 2] and res.scale == "fast"
    assert [a.name for a in res.arms] == ["slow", "fast", "speed-up"]
    slow = res.arm("slow")
    assert slow.value == pytest.approx(21.0) and slow.n == 3 and slow.per_seed == [20, 21, 22]
    assert slow.lo < 21 < slow.hi  # a t interval over three different seeds
    assert res.headline.name == "speed-up" and res.verdict == "reproduced"
    assert all(Path(f).exists() for f in res.figures) and res.wall_s >= 0
    again = runner.Result.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.to_dict() == res.to_dict()


def test_rows_decide_direction_size_and_constraint_apart(toy):
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert res.gate_met and res.gate[0]["value"] == pytest.approx(21.0) and res.gate[0]["met"]
    kinds = [(r.kind, r.verdict) for r in res.rows]
    # speed-up about 1.9 [1.83, 2.0]: above 1, and smaller than the "published" 3
    assert kinds == [("claim", "reproduced"), ("size", "smaller"), ("constraint", "held")]
    assert res.verdict == res.rows[0].verdict and res.headline == res.rows[0].measured
    assert res.date and res.rule_fixed == "2026-12-08"


def test_a_gate_not_met_makes_every_row_underpowered(toy, monkeypatch):
    import dataclasses

    import toy_experiment

    hard = dataclasses.replace(toy_experiment.EXPERIMENT,
                               gates=(runner.Gate("slow arm: mean steps", "slow_steps", ">=", 1e4),))
    monkeypatch.setattr(toy_experiment, "EXPERIMENT", hard)
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert not res.gate_met and res.verdict == "underpowered"
    assert {r.verdict for r in res.rows} == {"underpowered"}
    assert "measured 21" in res.reason and ">= 10000" in res.reason
    assert res.arm("slow").value == pytest.approx(21.0)  # the numbers stay as measured


def test_a_row_no_model_enters_is_decided_without_the_gate():
    from reference_impl.experiments.runner import Experiment, Outcome, Row, decide_rows

    arm = runner.Arm("x", "ratio", 2.0, 1.5, 2.5, n=3)
    rows = [runner.claim_row("learned", arm, 1.0),
            Row("counted cost", "claim", arm, "above 1", "reproduced", "exact", gated=False)]
    exp = Experiment("t", "c", "r", "l", "a", 1.0, {}, {}, None, None, None,
                     gates=(runner.Gate("acc", "acc", ">=", 0.6),))
    out = Outcome([arm], arm, "reproduced", "why", rows=rows, gate_values={"acc": 0.1})
    decided, _, met = decide_rows(exp, out)
    assert not met and [r.verdict for r in decided] == ["underpowered", "reproduced"]


def test_no_gate_declared_is_underpowered_and_a_missing_gate_value_is_an_error(toy, monkeypatch):
    import dataclasses

    import toy_experiment

    monkeypatch.setattr(toy_experiment, "EXPERIMENT",
                        dataclasses.replace(toy_experiment.EXPERIMENT, gates=()))
    assert runner.run_experiment("toy", "fast", workers=1, progress=False).verdict == "underpowered"
    monkeypatch.setattr(toy_experiment, "EXPERIMENT", dataclasses.replace(
        toy_experiment.EXPERIMENT, gates=(runner.Gate("x", "not_reported", ">=", 1.0),)))
    with pytest.raises(ValueError, match="no value for its gate 'not_reported'"):
        runner.run_experiment("toy", "fast", workers=1, progress=False, force=True)


def test_size_and_constraint_rules_equal_their_definitions():
    from reference_impl.evaluation.stats import check_constraint, compare_size

    assert compare_size(1.27, 1.58, 3.4)[0] == "smaller"
    assert compare_size(3.0, 3.8, 3.4)[0] == "consistent"
    assert compare_size(3.5, 3.8, 3.4)[0] == "larger"
    assert check_constraint(0.01, 0.04, 0.05)[0] == "held"
    assert check_constraint(0.03, 0.09, 0.05)[0] == "inconclusive"  # the point 0.058 decides nothing
    assert check_constraint(0.06, 0.09, 0.05)[0] == "violated"
    assert check_constraint(0.9, 0.99, 0.8, "above")[0] == "held"


def test_every_experiment_declares_a_gate_or_why_not_and_the_date_of_its_rule():
    import datetime

    for name in runner.names():
        exp = runner.get(name)
        assert exp.gates or exp.gate_note, f"{name}: no competence gate and no reason for none"
        datetime.date.fromisoformat(exp.rule_fixed)  # an ISO date, not empty


def test_cache_hit_and_force(toy):
    runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert len(calls(toy)) == 6
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert res.cached and len(calls(toy)) == 6  # nothing ran again
    runner.run_experiment("toy", "fast", seeds=4, workers=1, progress=False)
    assert len(calls(toy)) == 8  # seeds 0-2 came from the unit cache; only seed 3 ran
    res = runner.run_experiment("toy", "fast", workers=1, progress=False, force=True)
    assert not res.cached and len(calls(toy)) == 14


def test_a_cache_of_another_config_is_not_reused(toy, capsys):
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    path = Path(res.figures[0]).parents[1] / "result.json"
    stored = json.loads(path.read_text())
    stored["config"]["settings"] = {"base": 999}  # as if written by another version of the code
    path.write_text(json.dumps(stored))
    again = runner.run_experiment("toy", "fast", workers=1, progress=False)
    assert not again.cached and "another config" in capsys.readouterr().out
    assert again.arm("slow").value == pytest.approx(21.0)


def test_two_worker_processes_give_the_same_result(toy, monkeypatch):
    one = runner.run_experiment("toy", "fast", workers=1, progress=False, force=True)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # spawned workers import the toy
    two = runner.run_experiment("toy", "full", seeds=2, workers=2, progress=False)
    assert two.arm("fast").per_seed == [100, 101]
    assert one.arm("fast").per_seed == [10, 11, 12]


@pytest.mark.parametrize("kw, match", [
    ({"name": "nope"}, "unknown experiment 'nope'; known: resolution"),
    ({"name": "toy", "scale": "huge"}, "scale 'huge'; choose one of fast, full"),
    ({"name": "toy", "seeds": 0}, "seeds must be an integer from 1 to 10"),
    ({"name": "toy", "seeds": 11}, "seeds must be an integer from 1 to 10"),
])
def test_bad_input_names_what_is_allowed(toy, kw, match):
    with pytest.raises(runner.ExperimentError, match=match):
        runner.run_experiment(progress=False, workers=1, **kw)


def test_results_page_has_a_claim_a_value_and_a_verdict_per_row(toy, tmp_path):
    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    page = write_page([res], tmp_path / "docs")
    summary = page.read_text().split("\n## ")[0]  # the one-row-per-claim table
    rows = [l for l in summary.splitlines() if l.startswith("| ") and "---" not in l][1:]
    assert len(rows) == 3  # the claim, then its size and its side constraint as rows of their own
    assert rows[1].startswith("| ↳ size against the published 3 |") and "| **smaller** |" in rows[1]
    claim, value, verdict, lecture, fig = [c.strip() for c in rows[0].strip("|").split("|")]
    assert claim == res.claim and "n=3 seeds" in value and verdict == "reproduced"
    assert "00_painter_analogy" in lecture and (tmp_path / "docs" / fig.split("(")[1][:-1]).exists()
    text = page.read_text()
    assert "**Competence gate.** met: slow arm: mean steps >= 15: measured 21" in text
    assert "| size against the published 3 |" in text and "Rule changed" not in text


def test_results_page_says_when_a_rule_changed_after_the_run(toy, tmp_path, monkeypatch):
    import dataclasses

    import toy_experiment

    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    monkeypatch.setattr(toy_experiment, "EXPERIMENT", dataclasses.replace(
        toy_experiment.EXPERIMENT, rule="a new rule", rule_fixed="2999-01-01"))
    text = write_page([res], tmp_path / "docs").read_text()
    assert "**Rule changed.** the rule was changed after this run (now: a new rule)" in text
    assert "dated 2999-01-01, after this run" in text


def test_cli_unknown_name_lists_the_known_ones():
    out = subprocess.run([sys.executable, "-m", "reference_impl", "experiment", "nope"],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 2 and "known: resolution, noise_offset, min_snr, ema, stability" in out.stderr
    out = subprocess.run([sys.executable, "-m", "reference_impl", "experiment", "x", "--scale", "big"],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 2 and "invalid choice: 'big'" in out.stderr


def test_stats_equal_their_scipy_oracles():
    from scipy import stats

    from reference_impl.evaluation import stats as ours

    x = [3.1, 2.7, 3.9, 3.3]
    want = stats.t.interval(0.95, df=3, loc=sum(x) / 4, scale=stats.sem(x))
    assert ours.t_interval(x) == pytest.approx(want, rel=1e-12)
    for k, n in [(0, 10), (7, 10), (10, 10), (31, 96)]:
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert ours.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    a, b = [10.0, 12, 11, 13, 9], [5.0, 6, 5.5, 7, 4]
    want = stats.bootstrap((a, b), lambda u, v: sum(u) / sum(v), paired=True, method="percentile",
                           n_resamples=4000, random_state=0, vectorized=False).confidence_interval
    got = ours.bootstrap_interval([a, b], ours.ratio_of_means, paired=True)
    assert got == pytest.approx((want.low, want.high), rel=0.03)  # two bootstraps, other draws
    assert all(math.isnan(v) for v in ours.t_interval([1.0]))
    assert ours.decide(1.2, 2.0, 1.0)[0] == "reproduced"
    assert ours.decide(0.5, 0.9, 1.0)[0] == "not reproduced"
    assert ours.decide(0.9, 1.2, 1.0)[0] == "inconclusive"
    assert ours.decide(0.97, 1.02, 1.0, equivalence=0.05)[0] == "not reproduced"


def test_results_page_lists_every_claim_and_ships_each_result(toy, tmp_path):
    from reference_impl.experiments.results_page import cached_result

    res = runner.run_experiment("toy", "fast", workers=1, progress=False)
    out = tmp_path / "docs"
    text = write_page([res], out, pending=["collapse"]).read_text()
    assert "| *pending* |" in text and "experiment collapse --scale full" in text
    shipped = runner.Result.from_dict(json.loads((out / "results" / "toy.json").read_text()))
    assert shipped.to_dict() == res.to_dict()
    assert cached_result("toy", "fast", out).arm("slow").value == res.arm("slow").value
