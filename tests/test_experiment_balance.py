"""Experiment `balance` at fast scale: the schema of its result and what must hold anywhere.

No verdict is asserted: the fast scale trains a tiny model for four steps. What holds on any
machine: every arm has its rare/common accuracy, FID and unprompted-share arms with the right
n; the headline is the paired difference of the per-cell hits; the sampler really draws the
rare kind at the rate data/balance.py promises (measured in the training batches); the loss
reweighting arm keeps the plain draw; and the class-weighted loss with weights 1 is exactly
the trainer's DiffusionLoss.
"""
import math
from pathlib import Path

import pytest
import torch
from experiment_cache import private_cache

from reference_impl.experiments import balance, runner

FAST = balance.EXPERIMENT.scales["fast"]


@pytest.fixture(scope="module")
def result(probe, tmp_path_factory):
    with private_cache(tmp_path_factory):
        yield runner.run_experiment("balance", "fast", workers=1, progress=False)


def test_every_arm_has_its_measures(result):
    n = len(result.seeds)
    for arm in balance.ARMS:
        for what in ("rare", "common"):
            acc = result.arm(f"{arm}: {what}-kind prompts, kind accuracy")
            assert acc.n == n * FAST["num_prompts"] and acc.interval == "Wilson"
            fid = result.arm(f"{arm}: {what}-kind prompts, domain-FID")
            assert fid.n == n and all(f > 0 for f in fid.per_seed)  # an FID is a distance
        for label in ("empty prompt", "kind-free prompts"):
            share = result.arm(f"{arm}: rare share, {label}")
            assert share.n <= n * FAST["num_unprompted"]
            assert math.isnan(share.value) or 0 <= share.value <= 1
    assert result.headline.name == "inverse - none: rare-kind accuracy"
    assert result.verdict in runner.VERDICTS and result.reason and result.claim and result.rule
    assert set(result.details["readings"]) == {"asked_worse", "less_often_unprompted"}


def test_headline_is_the_paired_difference_of_hits(result):
    acc = {a: result.arm(f"{a}: rare-kind prompts, kind accuracy").value for a in balance.ARMS}
    assert result.headline.value == pytest.approx(acc["inverse"] - acc["none"])
    assert result.headline.per_seed and len(result.headline.per_seed) == len(result.seeds)
    assert result.headline.value == pytest.approx(sum(result.headline.per_seed) / len(result.seeds))


def test_intervals_contain_their_values(result):
    for a in result.arms:
        if math.isfinite(a.lo) and math.isfinite(a.hi):
            assert a.lo - 1e-9 <= a.value <= a.hi + 1e-9, a


def test_training_draws_follow_the_sampler(result):
    t = result.details["table"]
    counts = result.details["counts"]
    assert counts[2] == counts[3] == 0 and sum(counts) == FAST["num_train"]
    assert t["none"]["train_share"] == pytest.approx(counts[1] / sum(counts))
    assert t["inverse"]["train_share"] == pytest.approx(0.5)
    assert t["loss_reweight"]["train_share"] == pytest.approx(0.5)  # in expected loss weight
    assert t["none"]["train_share"] < t["effective"]["train_share"] <= 0.5


def test_figures_exist(result):
    assert len(result.figures) == 2
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f


def test_class_weighted_loss_with_unit_weights_is_the_diffusion_loss():
    from reference_impl.diffusion.objectives import DiffusionLoss

    class Forward:  # a fixed noisy batch: both losses see the same prediction and target
        class scheduler:
            alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

        def __call__(self, image, caption):
            from types import SimpleNamespace

            g = torch.Generator().manual_seed(0)
            return SimpleNamespace(t=torch.tensor([10, 500, 900]),
                                   target=torch.randn(3, 3, 4, 4, generator=g))

        def predict(self, unet, x):
            return torch.zeros_like(x.target)

    batch = {"image": torch.zeros(3, 3, 4, 4), "caption": ["a", "b", "c"],
             "kind": torch.tensor([0, 1, 0])}
    for gamma in (0.0, 5.0):
        want, _ = DiffusionLoss("epsilon", gamma)(None, batch, Forward())
        got, stats = balance.ClassWeightedLoss([1.0] * 4, "epsilon", gamma)(None, batch, Forward())
        assert torch.equal(got, want)
        assert stats["dogs_in_batch"] == pytest.approx(1 / 3)
    w, _ = balance.ClassWeightedLoss([0.5, 5.0, 0, 0], "epsilon", 0.0)(None, batch, Forward())
    per = Forward()(None, None).target.pow(2).mean(dim=(1, 2, 3))
    assert w.item() == pytest.approx(((torch.tensor([0.5, 5.0, 0.5]) * per).mean()).item())


def test_prompt_sets_name_the_kind_or_not():
    from reference_impl.data.captions import parse_caption

    dogs, free = balance.prompt_set("square", 18), balance.prompt_set(None, 18)
    assert all(parse_caption(p)["kind"] == balance.DOG for p in dogs)
    assert all("kind" not in parse_caption(p) for p in free)
    assert len({(parse_caption(p)["colour"], parse_caption(p)["background"]) for p in dogs}) == 18
