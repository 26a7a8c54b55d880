"""Experiment `zero` at fast scale: bytes per rank of DDP / ZeRO-2 / ZeRO-3 on 2 gloo ranks.

No verdict is asserted. What holds anywhere: DDP replicates every kind, the sharded kinds of
the two ranks add up to the whole (FSDP2 shards cover the tensor exactly), sharding follows
the stage (optimizer state from stage 1, gradients from 2, parameters at rest under 2 and 3),
and the memory model reproduces the paper's 7.5B x 64 table.
"""
from pathlib import Path

import pytest

from reference_impl.experiments import runner, zero


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("REFERENCE_IMPL_CACHE", str(tmp_path_factory.mktemp("cache")))  # private: xdist-safe
    res = runner.run_experiment("zero", "fast", workers=1, progress=False)
    yield res
    mp.undo()


def _rows(result):
    return {(r["strategy"], r["kind"]): r for r in result.details["rows"]}


def test_ddp_replicates_and_sharded_kinds_add_up(result):
    rows, world = _rows(result), result.details["world"]
    assert world == 2
    for (strategy, kind), r in rows.items():
        whole = rows[("ddp", kind)]["measured"][0]
        assert len(set(rows[("ddp", kind)]["measured"])) == 1  # replicated: equal on every rank
        stage = zero.STRATEGIES[strategy]
        sharded = stage >= {"optim": 1, "grads": 2, "params": 3}[kind]
        if sharded:
            assert sum(r["measured"]) == whole, (strategy, kind)
        else:
            assert r["measured"] == [whole] * world, (strategy, kind)
    at_rest = result.details["params_at_rest"]
    assert sum(at_rest["shard_grad_op"]) == sum(at_rest["full_shard"]) == at_rest["ddp"][0]


def test_paper_table_and_schema(result):
    for k, want in enumerate(zero.PAPER["GB"]):
        assert result.arm(f"model: 7.5B on 64 GPUs, stage {k}").value == pytest.approx(want, abs=0.05)
    assert result.details["h100_params"] > 1e8
    assert result.verdict in runner.VERDICTS and result.reason and result.rule
    for f in result.figures:
        assert Path(f).exists() and Path(f).stat().st_size > 1000, f
