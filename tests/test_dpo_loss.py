"""Diffusion-DPO loss (alignment/dpo.py) against hand computations of eq. 14."""
import math

import pytest
import torch

from reference_impl.alignment.dpo import (
    dpo_loss,
    dpo_loss_from_mse,
    pair_batch,
    per_sample_mse,
    shared_noise_and_timesteps,
)


def test_loss_is_log2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(0)
    target_w, target_l = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    pred_w, pred_l = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    loss, stats = dpo_loss(pred_w, pred_l, pred_w.clone(), pred_l.clone(), target_w, target_l)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["implicit_acc"] == 0.0  # a tie is no preference
    assert stats["reward_margin"] == 0.0


def test_matches_hand_computation():
    # Two pairs of 1x1x2 "images"; every number below is worked out by hand.
    target = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    model_w = torch.tensor([[[[0.1, 0.1]]], [[[1.0, 1.2]]]])   # mse 0.01, 0.02
    model_l = torch.tensor([[[[0.3, 0.1]]], [[[1.0, 1.0]]]])   # mse 0.05, 0.00
    ref_w = torch.tensor([[[[0.2, 0.0]]], [[[1.0, 1.0]]]])     # mse 0.02, 0.00
    ref_l = torch.tensor([[[[0.1, 0.1]]], [[[0.9, 1.1]]]])     # mse 0.01, 0.01
    beta = 100.0
    loss, stats = dpo_loss(model_w, model_l, ref_w, ref_l, target, target, beta=beta)
    # pair 0: (0.01 - 0.02) - (0.05 - 0.01) = -0.05 -> inside = -50 * -0.05 = 2.5
    # pair 1: (0.02 - 0.00) - (0.00 - 0.01) = 0.03 -> inside = -50 * 0.03 = -1.5
    logsig = lambda z: -math.log1p(math.exp(-z))
    expected = -(logsig(2.5) + logsig(-1.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["implicit_acc"] == 0.5
    assert stats["reward_margin"] == pytest.approx((2.5 - 1.5) / 2, rel=1e-5)
    assert stats["reward_w"] == pytest.approx((0.5 - 1.0) / 2, rel=1e-5)  # -50 * (-0.01, 0.02)
    assert stats["reward_l"] == pytest.approx((-2.0 + 0.5) / 2, rel=1e-5)  # -50 * (0.04, -0.01)


def test_implicit_accuracy_on_constructed_pairs():
    ref = torch.full((5,), 0.5)
    # The policy improves on the winner in pairs 0, 1, 2 and on the loser in pairs 3, 4.
    model_w = torch.tensor([0.4, 0.3, 0.45, 0.6, 0.5])
    model_l = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.4])
    _, stats = dpo_loss_from_mse(model_w, model_l, ref, ref, beta=10.0)
    assert stats["implicit_acc"] == pytest.approx(3 / 5)


def test_gradient_pushes_winner_error_down_and_loser_error_up():
    mse_w = torch.tensor([0.3], requires_grad=True)
    mse_l = torch.tensor([0.3], requires_grad=True)
    loss, _ = dpo_loss_from_mse(mse_w, mse_l, torch.tensor([0.3]), torch.tensor([0.3]), beta=4.0)
    loss.backward()
    # d/d mse_w of -log sigmoid(-beta/2 (mse_w - ...)) at 0 is beta/4 = 1; the loser's is -1.
    assert mse_w.grad.item() == pytest.approx(1.0)
    assert mse_l.grad.item() == pytest.approx(-1.0)


def test_shared_noise_and_timesteps():
    x_w, x_l = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    noise, t = shared_noise_and_timesteps(x_w, x_l, 1000, torch.Generator().manual_seed(0))
    assert noise.shape == x_w.shape and t.shape == (3,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    x, n, tt = pair_batch(x_w, x_l, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.cat([x_w, x_l]))
    assert torch.equal(n[:3], n[3:]) and torch.equal(tt[:3], tt[3:])
    assert torch.equal(n[:3], noise) and torch.equal(tt[:3], t)  # same generator, same draw


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        dpo_loss_from_mse(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss_from_mse(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0)
    with pytest.raises(ValueError, match="differ"):
        per_sample_mse(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        shared_noise_and_timesteps(torch.zeros(2, 3), torch.zeros(3, 3), 10)
