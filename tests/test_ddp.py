"""Data-parallel training (DDP over gloo, 2 CPU processes) with the unchanged trainer.

One ``torchrun`` launch of 2 ranks (no accelerate launcher, no ACCELERATE_USE_CPU: the trainer
must join the gloo process group by itself; ``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml is run in test_accelerate_configs.py) trains the ci preset
for a few steps with per-rank batch 4 and gradient accumulation 2; the test process trains the
same config in one process with batch 8. What must hold:

* the union of the two ranks' batch i is the single-process batch i (DistributedSampler deals
  each global batch out as positions rank, rank + 2, ...), and the shards are disjoint;
* the final weights and EMA equal the single-process ones within float rounding (the trainer
  draws noise/timesteps/dropout for the global batch and slices by rank: see micro_batch_loss),
  and the logged loss is the global batch's loss;
* both ranks end with identical weights and EMA;
* gradient accumulation all-reduces only on the last micro-batch of a step (accelerator.no_sync);
* only rank 0 writes: checkpoints, metrics, final export and the text-embedding cache.
"""
import os
import sys
from pathlib import Path

import pytest
import torch
from torchrun import launch

STEPS, PER_RANK_BATCH, ACCUM = 3, 4, 2
# DDP averages two half-batch gradients instead of one full-batch mean: the same sum in another
# order. After 3 AdamW steps the weights agree to ~1e-7; 1e-5 leaves room for other CPUs.
TOL = 1e-5


def overrides(run_dir, batch):
    return [f"output_dir={run_dir}", f"train.batch_size={batch}", f"train.grad_accum={ACCUM}",
            f"train.curriculum=[{{steps: {STEPS}, resolution: 16}}]", "train.warmup_steps=1",
            "train.checkpoint_every=2", "train.log_every=1"]


def worker(out: Path) -> None:
    """Runs in each launched process."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torchrun import count_micro_batches

    from reference_impl.config import load_config
    from reference_impl.data.curriculum import BatchStream, stage_dataset
    from reference_impl.training.trainer import Trainer

    rank = int(os.environ["RANK"])
    # separate output folders and caches per rank: a rank that writes anything is caught
    os.environ["REFERENCE_IMPL_CACHE"] = str(out / f"cache_rank{rank}")
    cfg = load_config("ci", overrides(out / f"run_rank{rank}", PER_RANK_BATCH))
    trainer = Trainer(cfg, progress=False)
    acc = trainer.accelerator
    assert acc.num_processes == 2 and acc.distributed_type.value == "MULTI_CPU"

    # record, for every gradient all-reduce, which micro-batch of the step triggered it
    micro = count_micro_batches(trainer)
    reduces = []

    def counting_hook(state, bucket):
        reduces.append(micro["n"])
        return allreduce_hook(state, bucket)
    trainer.unet.register_comm_hook(None, counting_hook)
    trainer.fit()

    stream = BatchStream(stage_dataset(cfg.data, cfg.train.curriculum[0]), cfg.data,
                         PER_RANK_BATCH, seed=cfg.seed, rank=rank, world_size=2)
    indices = [next(stream)["index"].tolist() for _ in range(STEPS * ACCUM)]
    torch.save({"unet": trainer.raw_unet.state_dict(), "ema": trainer.ema.shadow.state_dict(),
                "reduces": reduces, "indices": indices,
                "losses": [r["loss"] for r in trainer.history if "loss" in r]},
               out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(__file__, out, timeout=300)
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]

    from reference_impl.config import load_config
    from reference_impl.training.trainer import Trainer

    single = Trainer(load_config("ci", overrides(out / "single", 2 * PER_RANK_BATCH)), progress=False)
    single.fit()
    return out, ranks, single


def test_shards_are_disjoint_and_make_the_global_batch(runs):
    from reference_impl.data.curriculum import BatchStream, stage_dataset

    _, ranks, single = runs
    cfg = single.cfg
    stream = BatchStream(stage_dataset(cfg.data, cfg.train.curriculum[0]), cfg.data,
                         2 * PER_RANK_BATCH, seed=cfg.seed)
    for i, a, b in zip(range(STEPS * ACCUM), ranks[0]["indices"], ranks[1]["indices"]):
        assert not set(a) & set(b), f"batch {i}: ranks share samples"
        assert set(a) | set(b) == set(next(stream)["index"].tolist()), f"batch {i}"


def test_ddp_equals_one_process_with_the_global_batch(runs):
    _, ranks, single = runs
    for k, v in single.raw_unet.state_dict().items():
        torch.testing.assert_close(ranks[0]["unet"][k], v, rtol=TOL, atol=TOL, msg=k)
    for k, v in single.ema.shadow.state_dict().items():
        torch.testing.assert_close(ranks[0]["ema"][k], v, rtol=TOL, atol=TOL, msg=k)
    single_losses = [r["loss"] for r in single.history if "loss" in r]
    assert ranks[0]["losses"] == pytest.approx(single_losses, rel=1e-5)


def test_ranks_hold_identical_weights_and_ema(runs):
    _, (r0, r1), _ = runs
    for name in ("unet", "ema"):
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), f"{name}.{k}"
    assert r0["losses"] == r1["losses"]  # the logged loss is the global (all-reduced) one


def test_gradients_sync_only_on_the_last_micro_batch(runs):
    _, ranks, _ = runs
    for r in ranks:
        in_steps = [m for m in r["reduces"] if m is not None]  # None: the FLOP count's backward
        assert in_steps, "no all-reduce recorded"
        assert set(in_steps) == {ACCUM}, r["reduces"]
        assert len(in_steps) % STEPS == 0  # the same number of buckets every step


def test_only_rank_zero_writes(runs):
    out, _, _ = runs
    main = out / "run_rank0"
    assert (main / "final" / "unet_ema").is_dir() and (main / "metrics.jsonl").exists()
    assert list((main / "checkpoints").glob("step_*"))
    assert list((out / "cache_rank0").rglob("*.pt"))  # rank 0 saved the embedding cache
    assert not (out / "run_rank1").exists()
    assert not [p for p in (out / "cache_rank1").rglob("*") if p.is_file()]


if __name__ == "__main__":  # a torchrun worker
    worker(Path(sys.argv[1]))
