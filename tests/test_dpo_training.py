"""Diffusion-DPO training (alignment/dpo.py: DiffusionDPOLoss on the ordinary Trainer) on the
tiny model: it learns the pairs."""
import math

import torch

from reference_impl.alignment.dpo import DiffusionDPOLoss, dpo_config
from reference_impl.config import load_config
from reference_impl.data.curriculum import BatchStream, collate
from reference_impl.data.shapes import ShapesWorld, WorldConfig
from reference_impl.models.unet import build_unet
from reference_impl.training.trainer import Trainer


class FixedPairs(torch.utils.data.Dataset):
    """4 pairs: chosen = a clean scene, rejected = the same scene under heavy pixel noise."""

    def __init__(self):
        items = ShapesWorld(WorldConfig(seed=3, hq_fraction=1.0), 4, 16).__getitems__([0, 1, 2, 3])
        g = torch.Generator().manual_seed(0)
        self.items = [{"image_w": it["image"],
                       "image_l": (it["image"] + 0.8 * torch.randn(it["image"].shape, generator=g)).clamp(-1, 1),
                       "caption": it["caption"]} for it in items]

    def __len__(self):
        return len(self.items)

    def __getitems__(self, idx):
        return [self.items[int(i)] for i in idx]


def _eval(trainer, batch, draws: int = 8):
    """Mean DPO loss and implicit accuracy on a fixed batch over fixed draws of noise and t."""
    state = trainer.gen.get_state()
    trainer.gen.manual_seed(123)
    losses, acc = [], []
    with torch.no_grad():
        for _ in range(draws):
            loss, stats = trainer.micro_batch_loss(batch)
            losses.append(float(loss))
            acc.append(stats["dpo/implicit_acc"])
    trainer.gen.set_state(state)
    return sum(losses) / draws, sum(acc) / draws


def test_dpo_steps_learn_the_preference(tmp_path):
    cfg = load_config("ci", ["dpo.steps=12", "dpo.lr=1.0e-3", "dpo.batch_size=4", "dpo.beta=50",
                             "train.curriculum=[{steps: 1, resolution: 16}]"])
    run = dpo_config(cfg, tmp_path)
    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 384)
    data = FixedPairs()
    trainer = Trainer(run, progress=False, unet=unet, loss=DiffusionDPOLoss(unet, cfg.dpo.beta),
                      dataset_fn=lambda d, s: data)
    batch = collate(data.__getitems__([0, 1, 2, 3]))
    loss0, acc0 = _eval(trainer, batch)
    assert math.isclose(loss0, math.log(2), abs_tol=1e-6)  # policy == reference at the start
    assert acc0 == 0.0
    stream = BatchStream(data, run.data, 4, seed=0)
    records = [trainer.train_step(stream) for _ in range(run.train.curriculum[0].steps)]
    assert all("dpo/implicit_acc" in r and "dpo/reward_margin" in r for r in records)
    loss1, acc1 = _eval(trainer, batch)
    assert loss1 < loss0 - 0.2, (loss0, loss1)  # measured 0.69 -> 0.15
    assert acc1 >= 0.75, acc1  # measured 1.0
    # the policy moved, the reference is frozen
    ref = dict(trainer.loss.reference.named_parameters())
    changed = any(not torch.equal(p, ref[n]) for n, p in trainer.raw_unet.named_parameters())
    assert changed and not any(p.requires_grad for p in trainer.loss.reference.parameters())
