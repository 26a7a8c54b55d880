"""Diffusion-DPO under data parallelism (DDP over gloo, 2 CPU processes) equals one process.

The DPO loss noises its pairs through the trainer's one ``ForwardProcess``: every rank draws
the noise and timesteps of the *global* batch of pairs and keeps its rows, so two ranks with 2
pairs each train the same policy as one process with 4 pairs (the old DPOTrainer drew the same
local noise on every rank, and its numbers changed with the world size). Like test_ddp.py for
the base trainer: the final weights and EMA agree within float rounding, the logged loss and
DPO statistics are the global batch's.
"""
import os
import sys
from pathlib import Path

import pytest
import torch
from torchrun import launch

STEPS, PER_RANK_PAIRS, ACCUM = 3, 2, 2
TOL = 1e-5  # as test_ddp.py: the same sums in another order, after 3 AdamW steps
# AdamW's step is lr * m / (sqrt(v) + eps): for a gradient near eps it multiplies a rounding
# difference by ~lr / eps (1e5 with the default eps 1e-8 at lr 1e-3). The DPO gradient is a
# difference of winner and loser gradients, so it has many such near-zero entries: measured,
# the first all-reduced gradient agrees with one process's to 1.6e-7, yet with eps 1e-8 the
# weights differ by 1.5e-4 after 3 steps (8e-6 with eps 1e-6, 1.2e-6 with 1e-5). Both runs
# here use eps 1e-5, so the optimizer does not magnify rounding; the gradients are compared too.
ADAM_EPS = 1e-5


class Pairs(torch.utils.data.Dataset):
    """8 pairs: chosen = a clean scene, rejected = the same scene under heavy pixel noise."""

    def __init__(self):
        from reference_impl.data.shapes import ShapesWorld, WorldConfig

        items = ShapesWorld(WorldConfig(seed=3, hq_fraction=1.0), 8, 16).__getitems__(list(range(8)))
        g = torch.Generator().manual_seed(0)
        self.items = [{"image_w": it["image"], "caption": it["caption"],
                       "image_l": (it["image"] + 0.8 * torch.randn(it["image"].shape, generator=g)).clamp(-1, 1)}
                      for it in items]

    def __len__(self):
        return len(self.items)

    def __getitems__(self, idx):
        return [self.items[int(i)] for i in idx]


def train(run_dir, pairs_per_batch):
    """A DPO run of the tiny model (the same initial policy and reference on every rank)."""
    from reference_impl.alignment.dpo import DiffusionDPOLoss, dpo_config
    from reference_impl.config import load_config
    from reference_impl.models.unet import build_unet
    from reference_impl.training.trainer import Trainer

    cfg = load_config("ci", [f"dpo.steps={STEPS}", "dpo.lr=1.0e-3", f"dpo.batch_size={pairs_per_batch}",
                             "dpo.beta=50", f"train.grad_accum={ACCUM}", "train.log_every=1",
                             "train.curriculum=[{steps: 1, resolution: 16}]"])
    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 384)
    data = Pairs()
    trainer = Trainer(dpo_config(cfg, run_dir), progress=False, unet=unet,
                      loss=DiffusionDPOLoss(unet, cfg.dpo.beta), dataset_fn=lambda d, s: data)
    for group in trainer.optimizer.param_groups:
        group["eps"] = ADAM_EPS
    # keep each step's (all-reduced) gradient: the first thing that must agree
    trainer.grads, step = [], trainer.optimizer.step

    def keep_and_step(*a, **k):
        trainer.grads.append({n: p.grad.detach().clone() for n, p in trainer.raw_unet.named_parameters()
                              if p.grad is not None})
        return step(*a, **k)
    trainer.optimizer.step = keep_and_step
    trainer.fit()
    return trainer


def logged(trainer):
    return [{k: v for k, v in r.items() if k == "loss" or k.startswith("dpo/")}
            for r in trainer.history if "loss" in r]


def worker(out: Path) -> None:
    """Runs in each launched process."""
    rank = int(os.environ["RANK"])
    os.environ["REFERENCE_IMPL_CACHE"] = str(out / f"cache_rank{rank}")
    trainer = train(out / f"run_rank{rank}", PER_RANK_PAIRS)
    assert trainer.accelerator.num_processes == 2
    torch.save({"unet": trainer.raw_unet.state_dict(), "ema": trainer.ema.shadow.state_dict(),
                "logged": logged(trainer), "grads": trainer.grads}, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_ddp")
    launch(__file__, out, timeout=300)
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]
    return ranks, train(out / "single", 2 * PER_RANK_PAIRS)


def test_dpo_ddp_equals_one_process_with_the_global_batch(runs):
    (r0, r1), single = runs
    assert len(r0["grads"]) == len(single.grads) == STEPS
    for i, (g, h) in enumerate(zip(r0["grads"], single.grads)):
        print(f"step {i + 1}: max |grad diff| {max(float((g[k] - h[k]).abs().max()) for k in h):.3g}")
        for k in h:
            torch.testing.assert_close(g[k], h[k], rtol=TOL, atol=TOL, msg=f"step {i + 1} grad {k}")
    diff = max(float((r0["unet"][k] - v).abs().max()) for k, v in single.raw_unet.state_dict().items())
    print(f"DPO, 2 processes vs 1: max |weight diff| = {diff:.3g}")
    moved = max(float((single.raw_unet.state_dict()[k] - v).abs().max())
                for k, v in single.loss.reference.state_dict().items())
    assert moved > 100 * TOL, "the policy hardly moved: the comparison would prove nothing"
    for k, v in single.raw_unet.state_dict().items():
        torch.testing.assert_close(r0["unet"][k], v, rtol=TOL, atol=TOL, msg=k)
    for k, v in single.ema.shadow.state_dict().items():
        torch.testing.assert_close(r0["ema"][k], v, rtol=TOL, atol=TOL, msg=k)
    for name in ("unet", "ema"):
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), f"{name}.{k}"


def test_dpo_logs_the_global_batch_statistics(runs):
    (r0, r1), single = runs
    assert r0["logged"] == r1["logged"]
    one = logged(single)
    assert len(r0["logged"]) == len(one) == STEPS
    for a, b in zip(r0["logged"], one):
        assert set(a) == set(b) and "dpo/implicit_acc" in a
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


if __name__ == "__main__":  # a torchrun worker
    worker(Path(sys.argv[1]))
