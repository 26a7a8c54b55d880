"""Class-balanced weights against Cui et al.'s formula, and samplers against their intent."""
import math

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from reference_impl.data.balance import (
    DistributedWeightedSampler,
    balanced_weights,
    class_probabilities,
    class_weights,
    effective_number,
    loss_weights,
)

CATS_DOGS = torch.tensor([900.0, 100.0])  # the 90% cats / 10% dogs problem
LABELS = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(100, dtype=torch.long)])

# Hand-computed from E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019, arXiv:1901.05555, Eq. 3),
# class weight 1 / E_n normalised to sum to C = 2, sampling probability p_c ∝ n_c / E_{n_c}.
# e.g. beta = 0.99: E_900 = (1 - 0.99^900) / 0.01 = 99.98820562, E_100 = 63.39676587,
# p_dog = (100 / 63.39676587) / (900 / 99.98820562 + 100 / 63.39676587) = 0.1491116978.
CUI = {  # beta: (E_900, E_100), (w_cat, w_dog), (p_cat, p_dog)
    0.9: ((10.0, 9.999734386), (0.9999867191, 1.000013281), (0.8999976094, 0.1000023906)),
    0.99: ((99.98820562, 63.39676587), (0.776041582, 1.223958418), (0.8508883022, 0.1491116978)),
    0.999: ((593.6133775, 95.20785289), (0.2764370455, 1.723562955),
            (0.5907480844, 0.4092519156)),
}


@pytest.mark.parametrize("beta", sorted(CUI))
def test_effective_number_weights_and_probabilities_match_cui_et_al(beta):
    e, w, p = (torch.tensor(v, dtype=torch.float64) for v in CUI[beta])
    torch.testing.assert_close(effective_number(CATS_DOGS, beta), e, rtol=1e-8, atol=0)
    torch.testing.assert_close(class_weights(CATS_DOGS, beta), w, rtol=1e-8, atol=0)
    torch.testing.assert_close(class_probabilities(CATS_DOGS, "effective", beta=beta), p,
                               rtol=1e-8, atol=0)


def test_effective_number_limits_are_natural_and_inverse_frequency():
    torch.testing.assert_close(class_probabilities(CATS_DOGS, "effective", beta=0.0),
                               torch.tensor([0.9, 0.1], dtype=torch.float64))
    near_one = class_probabilities(CATS_DOGS, "effective", beta=0.999999)
    assert abs(near_one[1].item() - 0.5) < 1e-3, near_one


def test_inverse_frequency_gives_fifty_fifty_and_none_keeps_ninety_ten():
    torch.testing.assert_close(class_probabilities(CATS_DOGS, "inverse"),
                               torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(class_probabilities(CATS_DOGS, "none"),
                               torch.tensor([0.9, 0.1], dtype=torch.float64))


def test_temperature_natural_at_one_square_root_at_two_uniform_when_large():
    def t(temp):
        return class_probabilities(CATS_DOGS, "temperature", temperature=temp)

    torch.testing.assert_close(t(1.0), torch.tensor([0.9, 0.1], dtype=torch.float64))
    # T = 2: sqrt(900) = 30, sqrt(100) = 10 -> 0.75 / 0.25
    torch.testing.assert_close(t(2.0), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert abs(t(1000.0)[1].item() - 0.5) < 1e-3


def test_sample_weights_sum_to_class_probabilities_and_empty_class_is_never_drawn():
    labels = torch.tensor([0, 0, 0, 2, 2, 0])  # class 1 has no sample
    probs, w = balanced_weights(labels, "inverse", num_classes=3)
    torch.testing.assert_close(probs, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))
    assert w.shape == (6,) and math.isclose(w.sum().item(), 1.0)
    torch.testing.assert_close(w[labels == 0].sum(), probs[0])
    torch.testing.assert_close(w[labels == 2], torch.full((2,), 0.25, dtype=torch.float64))


def test_bad_input_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="unknown balance method"):
        class_probabilities(CATS_DOGS, "oversample")
    with pytest.raises(ValueError, match="beta"):
        effective_number(CATS_DOGS, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        DistributedWeightedSampler(torch.tensor([1.0, -1.0]), 10)
    with pytest.raises(ValueError, match="without replacement"):
        DistributedWeightedSampler(torch.ones(5), 6, replacement=False)
    with pytest.raises(ValueError, match="rank"):
        DistributedWeightedSampler(torch.ones(5), 6, rank=2, world_size=2)


def _dog_fraction(indices) -> float:
    return LABELS[torch.as_tensor(list(indices))].float().mean().item()


@pytest.mark.parametrize("method,kwargs", [("inverse", {}), ("effective", {"beta": 0.999}),
                                           ("temperature", {"temperature": 2.0})])
def test_samplers_reproduce_the_intended_class_frequencies(method, kwargs):
    probs, weights = balanced_weights(LABELS, method, **kwargs)
    n = 200_000
    p = probs[1].item()
    tol = 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations (~1e-4 false alarm)
    oracle = WeightedRandomSampler(weights, n, replacement=True,
                                   generator=torch.Generator().manual_seed(0))
    assert abs(_dog_fraction(oracle) - p) < tol
    ours = DistributedWeightedSampler(weights, n, rank=0, world_size=1, seed=1)
    assert abs(_dog_fraction(ours) - p) < tol
    # and without balancing the dogs really are 10%: the test can tell the two apart
    assert abs(p - 0.1) > 10 * tol


@pytest.mark.parametrize("num_samples", [1000, 1001])
def test_distributed_shards_are_a_partition_of_the_single_process_draw(num_samples):
    _, weights = balanced_weights(LABELS, "inverse")
    single = list(DistributedWeightedSampler(weights, num_samples, 0, 1, seed=3))
    assert len(single) == num_samples
    shards = [list(DistributedWeightedSampler(weights, num_samples, r, 2, seed=3))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == math.ceil(num_samples / 2)
    interleaved = [i for pair in zip(*shards) for i in pair]
    # positions 0..num_samples-1 of the interleaving are exactly the 1-process draw ...
    assert interleaved[:num_samples] == single
    # ... and the padding wraps round to its start
    assert interleaved[num_samples:] == single[: len(interleaved) - num_samples]


def test_drop_last_truncates_to_equal_shards():
    shards = [list(DistributedWeightedSampler(torch.ones(50), 101, r, 4, seed=0, drop_last=True))
              for r in range(4)]
    assert [len(s) for s in shards] == [25] * 4


def test_without_replacement_shards_are_disjoint_and_complete():
    w = torch.rand(100, generator=torch.Generator().manual_seed(0)) + 0.1
    single = list(DistributedWeightedSampler(w, 60, 0, 1, seed=5, replacement=False))
    shards = [set(DistributedWeightedSampler(w, 60, r, 2, seed=5, replacement=False))
              for r in range(2)]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == set(single) and len(set(single)) == 60


def test_set_epoch_reseeds_identically_on_every_rank():
    _, weights = balanced_weights(LABELS, "effective", beta=0.99)
    a = DistributedWeightedSampler(weights, 400, 0, 1, seed=7)
    b = DistributedWeightedSampler(weights, 400, 0, 1, seed=7)
    first = list(a)
    assert list(a) == first, "the same epoch must give the same draw"
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    assert list(DistributedWeightedSampler(weights, 400, 0, 1, seed=8)) != first


def test_loss_weights_give_the_sampler_s_expected_loss():
    # E_shuffle[w_i * f_i] = E_sampler[f_i] for any per-sample loss f: importance weighting
    f = torch.rand(len(LABELS), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for method in ("inverse", "effective", "temperature", "none"):
        _, q = balanced_weights(LABELS, method, beta=0.99)
        w = loss_weights(LABELS, method, beta=0.99)
        assert w.mean().item() == pytest.approx(1.0)
        assert (w * f).mean().item() == pytest.approx((q * f).sum().item())
    assert torch.allclose(loss_weights(LABELS, "none"), torch.ones(len(LABELS), dtype=torch.float64))
