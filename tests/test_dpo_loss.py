"""Diffusion-DPO loss (alignment/dpo.py) against hand computations of eq. 14."""
import math

import pytest
import torch
import torch.nn.functional as F

from reference_impl.alignment.dpo import (
    DiffusionDPOLoss,
    dpo_loss,
    dpo_loss_from_mse,
    per_sample_mse,
)
from reference_impl.config import DiffusionConfig
from reference_impl.diffusion.objectives import ForwardProcess
from reference_impl.diffusion.schedule import make_scheduler


class _Text:
    """A stand-in text encoder: (N, 1, 4) zeros."""

    def encode(self, captions):
        return torch.zeros(len(captions), 1, 4), torch.ones(len(captions), 1, dtype=torch.long)


def _forward(seed=0, rank=0, world=1):
    return ForwardProcess(make_scheduler("linear", 1000), DiffusionConfig(caption_dropout=0.0,
                          noise_offset=0.0), _Text(), torch.Generator().manual_seed(seed), rank, world)


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
    beta = 50.0
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


def diffusers_dpo_loss(model_pred, ref_pred, target, beta_dpo):
    """diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py, "Compute
    losses" to "Final loss" (loss_type sigmoid), line for line: predictions (2B, C, H, W),
    winners first."""
    model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    model_losses = model_losses.mean(dim=list(range(1, len(model_losses.shape))))
    model_losses_w, model_losses_l = model_losses.chunk(2)
    model_diff = model_losses_w - model_losses_l
    ref_loss = F.mse_loss(ref_pred.float(), target.float(), reduction="none")
    ref_loss = ref_loss.mean(dim=list(range(1, len(ref_loss.shape))))
    ref_losses_w, ref_losses_l = ref_loss.chunk(2)
    ref_diff = ref_losses_w - ref_losses_l
    logits = ref_diff - model_diff
    return -1 * F.logsigmoid(beta_dpo * logits).mean()


def test_beta_is_diffusers_beta_dpo():
    # a hand case: pair 0 as in test_matches_hand_computation (margin -0.05 -> inside 2.5 at
    # beta 50), and random pairs, against diffusers' formula with the same beta
    g = torch.Generator().manual_seed(3)
    target = torch.randn(6, 3, 4, 4, generator=g)
    model = target + 0.1 * torch.randn(6, 3, 4, 4, generator=g)
    ref = target + 0.1 * torch.randn(6, 3, 4, 4, generator=g)
    for beta in (50.0, 1250.0):
        ours, _ = dpo_loss(model[:3], model[3:], ref[:3], ref[3:], target[:3], target[3:], beta=beta)
        theirs = diffusers_dpo_loss(model, ref, target, beta)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6), beta
    hand = torch.tensor([[[[0.0, 0.0]]]])
    mw, ml = torch.tensor([[[[0.1, 0.1]]]]), torch.tensor([[[[0.3, 0.1]]]])  # mse 0.01, 0.05
    rw, rl = torch.tensor([[[[0.2, 0.0]]]]), torch.tensor([[[[0.1, 0.1]]]])  # mse 0.02, 0.01
    theirs = diffusers_dpo_loss(torch.cat([mw, ml]), torch.cat([rw, rl]), hand.repeat(2, 1, 1, 1), 50.0)
    ours, _ = dpo_loss(mw, ml, rw, rl, hand, hand, beta=50.0)
    assert ours.item() == pytest.approx(math.log1p(math.exp(-2.5)), rel=1e-5)
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-6)


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
    loss, _ = dpo_loss_from_mse(mse_w, mse_l, torch.tensor([0.3]), torch.tensor([0.3]), beta=2.0)
    loss.backward()
    # d/d mse_w of -log sigmoid(-beta (mse_w - ...)) at 0 is beta/2 = 1; the loser's is -1.
    assert mse_w.grad.item() == pytest.approx(1.0)
    assert mse_l.grad.item() == pytest.approx(-1.0)


def test_shared_noise_and_timesteps():
    # the trainer's one noising path with repeat=2: winner row i and loser row B + i share
    # noise and timestep, and they are the draw a plain (B, ...) batch would get
    x_w, x_l = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    plain = _forward()(x_w, ["a", "b", "c"])
    assert plain.t.shape == (3,) and plain.t.dtype == torch.long
    assert int(plain.t.min()) >= 0 and int(plain.t.max()) < 1000
    pair = _forward()(torch.cat([x_w, x_l]), ["a", "b", "c"], repeat=2)
    assert torch.equal(pair.target[:3], pair.target[3:]) and torch.equal(pair.t[:3], pair.t[3:])
    assert torch.equal(pair.target[:3], plain.target) and torch.equal(pair.t[:3], plain.t)
    assert pair.hidden.shape[0] == 6


def test_shared_draw_is_the_global_batch_sliced_by_rank():
    # the DPO bug of the old dpo_trainer.py: every rank drew the same local noise. Now rank r
    # of 2 gets rows r, r + 2, ... of the global (2B) draw, which one process would get whole.
    x = torch.zeros(4, 1, 4, 4)
    whole = _forward()(torch.cat([x, x]), list("abcd"), repeat=2)
    for rank in (0, 1):
        part = _forward(rank=rank, world=2)(torch.cat([x[:2], x[:2]]), list("ab"), repeat=2)
        assert torch.equal(part.t[:2], whole.t[:4][rank::2])
        assert torch.equal(part.target[:2], whole.target[:4][rank::2])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        dpo_loss_from_mse(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss_from_mse(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0)
    with pytest.raises(ValueError, match="differ"):
        per_sample_mse(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        loss = DiffusionDPOLoss(torch.nn.Linear(1, 1), beta=1.0)
        loss(None, {"image_w": torch.zeros(2, 3), "image_l": torch.zeros(3, 3), "caption": ["a"] * 2},
             _forward())
