"""Preference pairs (alignment/preferences.py): the judge's stated rule, the Wilson interval,
and the pair data set's round trip through disk."""
import pytest
import torch
from scipy.stats import binomtest

from reference_impl.alignment.preferences import (
    Judge,
    PairDataset,
    load_pairs,
    make_pairs,
    random_prompts,
    wilson_interval,
)
from reference_impl.curation.aesthetic import AestheticScorer
from reference_impl.curation.captioner import AutoCaptioner
from reference_impl.evaluation.validation import real_images


@pytest.fixture(scope="module")
def judge():
    captioner = AutoCaptioner.load_or_train(progress=False)
    return Judge(captioner, AestheticScorer.load_or_train(captioner))


def test_prompts_are_distinct_deterministic_and_held_out():
    a = random_prompts(50, seed=1)
    assert a == random_prompts(50, seed=1) and len(set(a)) == 50
    held = random_prompts(50, seed=2, exclude=a)
    assert not set(held) & set(a)
    assert all(p.endswith("in the brand style") for p in random_prompts(5, 3, brand=True))


def test_judge_rule_match_first_then_aesthetic(judge):
    a = {"match": torch.tensor([1.0, 0.5, 0.5]), "aesthetic": torch.tensor([1.0, 9.0, 5.0])}
    b = {"match": torch.tensor([0.5, 1.0, 0.5]), "aesthetic": torch.tensor([9.0, 1.0, 4.0])}
    assert judge.prefers_first(a, b).tolist() == [True, False, True]
    aes = Judge(judge.captioner, judge.scorer, "aesthetic")
    assert aes.prefers_first(a, b).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="judge"):
        Judge(judge.captioner, judge.scorer, "vibes")


@pytest.mark.parametrize("k,n", [(0, 10), (7, 16), (50, 100), (16, 16)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-4) and hi == pytest.approx(ref.high, abs=1e-4)


def test_pairs_round_trip_and_prefer_the_right_image(judge, tmp_path):
    prompts = random_prompts(12, seed=0)

    def sample_fn(p, seed):  # seed 0: clean renders of the prompts; seed 1: pure noise
        if seed == 0:
            return real_images(p, len(p), 32, seed=0)
        return torch.rand(len(p), 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    pairs = make_pairs(sample_fn, prompts, judge, seed=0)
    # the judge reads the right render back far better than noise
    assert sum(m > r for m, r in zip(pairs["chosen_match"], pairs["rejected_match"])) >= 10
    pairs.save_to_disk(str(tmp_path / "pairs"))
    again = load_pairs(tmp_path / "pairs")
    assert again["prompt"] == prompts
    stored, made = again.with_format("numpy")[:]["chosen"], pairs.with_format("numpy")[:]["chosen"]
    assert again.features["chosen"].dtype == "uint8" and stored.shape == (12, 3, 32, 32)
    assert (stored == made).all()
    data = PairDataset(again)
    item = data[0]
    assert item["image_w"].shape == (3, 32, 32) and item["caption"] == prompts[0]
    assert item["image_w"].min() >= -1 and item["image_w"].max() <= 1


def test_pair_rounds_are_new_seeds_for_the_same_prompts(judge):
    prompts = random_prompts(3, seed=4)

    def sample_fn(p, seed):
        return torch.rand(len(p), 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    both = make_pairs(sample_fn, prompts, judge, seed=10, rounds=2)
    first = make_pairs(sample_fn, prompts, judge, seed=10)
    second = make_pairs(sample_fn, prompts, judge, seed=12)
    assert list(both["prompt"]) == prompts + prompts
    assert list(both["chosen_area"]) == list(first["chosen_area"]) + list(second["chosen_area"])
    chosen = both.with_format("numpy")[:]["chosen"]
    assert (chosen[3:] == second.with_format("numpy")[:]["chosen"]).all()
    with pytest.raises(ValueError, match="rounds"):
        make_pairs(sample_fn, prompts, judge, rounds=0)
