"""Distributed checkpoints (reference_impl/distributed/checkpoint.py) on CPU with gloo.

One torchrun launch of 2 ranks trains a tiny diffusers UNet sharded with FSDP2 (``fully_shard``,
ZeRO-3), saves a DCP checkpoint, takes one more step, then loads the checkpoint into a freshly
initialised sharded model and takes the same step: weights and loss must be bitwise equal.
The test process then loads the same 2-rank checkpoint on 1 rank (no process group: DCP
reshards) and takes the step again: equal to the sharded run within float rounding, since a
sharded all-gather / reduce-scatter may sum in another order.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
from torchrun import launch

TOL = 1e-6  # 1-rank vs 2-rank: the same math, possibly another summation order


def build(seed: int = 0):
    from reference_impl.models.unet import build_unet

    torch.manual_seed(seed)
    return build_unet("tiny", 16, cross_attention_dim=16)


def train_step(model, opt, step: int) -> float:
    """One AdamW step of a diffusion-shaped loss on a batch fixed by ``step``."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    h = torch.randn(4, 6, 16, generator=g)
    loss = torch.nn.functional.mse_loss(model(x, t, h).sample, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def full_weights(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def sharded(seed: int):
    """A tiny UNet sharded ZeRO-3 style: each block its own FSDP2 unit, then the root."""
    from torch.distributed.fsdp import fully_shard

    model = build(seed)
    for block in [*model.down_blocks, model.mid_block, *model.up_blocks]:
        fully_shard(block)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def worker(out: Path) -> None:
    import torch.distributed as dist

    from reference_impl.distributed.checkpoint import load_distributed, save_distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, opt = sharded(seed=0)
    for step in range(2):
        train_step(model, opt, step)
    saved = full_weights(model)
    save_distributed(out / "ckpt", model, opt, extra={"step": 2})
    loss_a = train_step(model, opt, 2)
    after_a = full_weights(model)

    model, opt = sharded(seed=1)  # different initial weights: the load must overwrite them
    extra = load_distributed(out / "ckpt", model, opt)
    loaded = full_weights(model)
    loss_b = train_step(model, opt, 2)
    after_b = full_weights(model)
    if rank == 0:
        report = {"extra": extra, "loss_a": loss_a, "loss_b": loss_b,
                  "sharded": type(next(model.parameters())).__name__,
                  "loaded_equal": all(torch.equal(saved[k], loaded[k]) for k in saved),
                  "after_equal": all(torch.equal(after_a[k], after_b[k]) for k in after_a)}
        torch.save({"saved": saved, "after": after_a}, out / "weights.pt")
        (out / "report.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcp")
    launch(__file__, out, timeout=240)
    return out, json.loads((out / "report.json").read_text())


def test_round_trip_under_two_ranks_is_bitwise(two_rank_run):
    out, rep = two_rank_run
    assert rep["sharded"] == "DTensor"  # really sharded, not replicated
    assert rep["extra"] == {"step": 2}
    assert rep["loaded_equal"] and rep["after_equal"]
    assert rep["loss_a"] == rep["loss_b"]
    ckpt = out / "ckpt"
    assert (ckpt / "COMPLETE").exists() and not list(out.glob(".tmp-*"))
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_two_rank_checkpoint_loads_on_one_rank(two_rank_run):
    from reference_impl.distributed.checkpoint import load_distributed

    out, rep = two_rank_run
    ref = torch.load(out / "weights.pt")
    model = build(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert load_distributed(out / "ckpt", model, opt) == {"step": 2}
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref["saved"][k]), k
    loss = train_step(model, opt, 2)
    assert abs(loss - rep["loss_a"]) <= TOL * max(1.0, abs(rep["loss_a"]))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref["after"][k], rtol=TOL, atol=TOL)


def test_incomplete_checkpoint_is_refused(tmp_path):
    from reference_impl.distributed.checkpoint import load_distributed

    model = build()
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        load_distributed(tmp_path, model, torch.optim.AdamW(model.parameters()))


if __name__ == "__main__":  # a torchrun worker
    worker(Path(sys.argv[1]))
