"""Experiment `lora` at fast scale (it shares the dpo/sft/safety experiments' cached base).

No verdict is asserted: the fast scale trains a tiny model for two steps. What holds on any
machine: every arm draws the same held-out brand prompts and plain prompts; the rates have
Wilson intervals over them; the headline is the rank-4 arm's brand rate; trainable parameters
grow with the rank exactly as r * (d_in + d_out) (conv: r * (c_in k k + c_out)) predicts and full
fine-tuning trains the whole UNet; unmerging and disabling the adapter gives back the base's
plain-prompt accuracy (the base is untouched).
"""
import math

import pytest
from experiment_cache import alignment_cache

from reference_impl.experiments import lora, runner


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with alignment_cache(tmp_path_factory):
        yield runner.run_experiment("lora", "fast", workers=1, progress=False)


def test_arms_share_prompts_and_have_intervals(result):
    n = lora.EXPERIMENT.scales["fast"]["num_prompts"]
    for a in lora.ARMS:
        for what in ("brand rate", "brand leak", "plain prompt accuracy"):
            arm = result.arm(f"{a}: {what}")
            assert arm.n == n and arm.interval == "Wilson"
            assert arm.lo - 1e-9 <= arm.value <= arm.hi + 1e-9, arm
    assert result.headline.name == "r4: brand rate"
    assert result.verdict in runner.VERDICTS


def test_trainable_parameters_follow_the_rank(result):
    d = result.details["arms"]
    assert d["r4"]["trainable"] == 4 * d["r1"]["trainable"]
    assert d["r16"]["trainable"] == 16 * d["r1"]["trainable"]
    assert d["r4_attention"]["trainable"] < d["r4"]["trainable"]  # the convs add parameters
    assert d["pipeline"]["trainable"] == d["r4_attention"]["trainable"]
    assert d["full"]["trainable"] > d["r16"]["trainable"]
    assert d["r1"]["adapter_mb"] < d["r4"]["adapter_mb"] < d["r16"]["adapter_mb"]
    assert all(math.isfinite(d[a]["train_seconds"]) for a in lora.RECIPES)


def test_disabled_adapter_is_the_base(result):
    d = result.details["arms"]
    for a in ("r1", "r4", "r16", "pipeline"):
        assert d[a]["plain_acc_unmerged"] == pytest.approx(d["base"]["plain_acc"])
