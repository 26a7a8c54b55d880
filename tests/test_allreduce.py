"""Ring All-Reduce against its oracle ``dist.all_reduce`` (gloo, spawned CPU processes).

Each world size is one spawn of N processes; every rank runs all cases and asserts itself, so a
failure arrives here as the child's traceback. Joins have a deadline: a hang fails the test.
"""
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reference_impl.distributed.allreduce import (
    ALL_GATHER,
    REDUCE_SCATTER,
    chunk_sizes,
    format_schedule,
    ring_all_reduce,
    ring_bytes_formula,
    ring_bytes_sent,
    ring_schedule,
    schedule_matrix,
    simulate_ring_all_reduce,
)

JOIN_TIMEOUT_S = 90
# (shape, dtype): awkward sizes (fewer elements than ranks, primes, ~1M) and dtypes.
CASES = [
    ((1,), torch.float32),
    ((7,), torch.float32),
    ((1_000_003,), torch.float32),
    ((13, 17), torch.float64),
    ((5, 3), torch.bfloat16),
    ((24,), torch.float32),  # divisible by 2, 3 and 4: the 2(N-1)/N S formula holds exactly
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # the OS picks a port that is free right now
        return s.getsockname()[1]


def _input(rank: int, shape, dtype, integer: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)
    if integer:  # small integers: every summation order gives the exact same float
        return torch.randint(-8, 9, shape, generator=g).to(dtype)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# Rings of 2, 3 and 4 ranks inside ONE spawn of 4 processes (starting a process that imports
# torch costs seconds on 2 cores). The sub-groups make group rank != global rank, which
# exercises the neighbour translation in ring_all_reduce.
WORLD = 4
RINGS = {2: [0, 2], 3: [1, 2, 3], 4: [0, 1, 2, 3]}


def _check_ring(rank: int, n: int, group) -> None:
    for shape, dtype in CASES:
        for integer in (True, False):
            mine = _input(rank, shape, dtype, integer)
            oracle = mine.clone()
            dist.all_reduce(oracle, group=group)
            sent = ring_all_reduce(mine, group=group)
            if integer:
                assert torch.equal(mine, oracle), f"N={n} {shape} {dtype}: ring != all_reduce"
            else:  # summation order differs from gloo's: allow float rounding
                tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
                torch.testing.assert_close(mine, oracle, rtol=tol, atol=tol)
            # every replica must end bit-identical, or the models would drift apart
            gathered = [torch.empty_like(mine) for _ in range(n)]
            dist.all_gather(gathered, mine, group=group)
            assert all(torch.equal(g, gathered[0]) for g in gathered), f"N={n} {shape}: replicas differ"
            # bytes counted from the real sends equal the exact per-rank count
            numel, esize, group_rank = mine.numel(), mine.element_size(), dist.get_rank(group)
            assert sent == ring_bytes_sent(numel, esize, n, group_rank), (n, shape, sent)
            if numel % n == 0:
                assert sent == ring_bytes_formula(numel * esize, n), (n, shape, sent)
    # a non-contiguous input is reduced in place like dist.all_reduce
    base = _input(rank, (6, 5), torch.float32, integer=True)
    mine, oracle = base.t(), base.t().contiguous()
    dist.all_reduce(oracle, group=group)
    ring_all_reduce(mine, group=group)
    assert torch.equal(mine, oracle), f"N={n}: non-contiguous input"


def _worker(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        for n, members in RINGS.items():
            group = None if n == world_size else dist.new_group(members)  # all ranks must call
            if rank in members:
                _check_ring(rank, n, group)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(world_size: int) -> None:
    ctx = mp.spawn(_worker, args=(world_size, _free_port()), nprocs=world_size, join=False)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not ctx.join(timeout=1):  # raises ProcessRaisedException if a rank failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ring all-reduce with {world_size} ranks hung for {JOIN_TIMEOUT_S} s")


@pytest.mark.distributed
def test_ring_all_reduce_matches_dist_all_reduce_for_2_3_and_4_ranks():
    _spawn(WORLD)


def test_world_size_one_is_a_no_op():
    assert not dist.is_initialized(), "another test left a process group behind"
    t = torch.arange(5.0)
    assert ring_all_reduce(t) == 0
    assert torch.equal(t, torch.arange(5.0))
    # also with a real one-process group
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        assert ring_all_reduce(t) == 0
        assert torch.equal(t, torch.arange(5.0))
    finally:
        dist.destroy_process_group()


def test_bad_input_is_rejected():
    with pytest.raises(TypeError, match="floating"):
        ring_all_reduce(torch.arange(4))
    with pytest.raises(ValueError, match="world_size"):
        chunk_sizes(10, 0)
    with pytest.raises(ValueError, match="rank 1"):
        simulate_ring_all_reduce([torch.zeros(3), torch.zeros(4)])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("numel", [0, 1, 3, 10, 101])
def test_simulation_equals_the_sum(n, numel):
    inputs = [_input(r, (numel,), torch.float64, integer=False) for r in range(n)]
    originals = [t.clone() for t in inputs]
    results, messages, sent = simulate_ring_all_reduce(inputs)
    expected = torch.stack(inputs).sum(0)
    for r in range(n):
        torch.testing.assert_close(results[r], expected, rtol=1e-12, atol=1e-12)
        assert torch.equal(results[r], results[0]), "replicas must agree bit for bit"
        assert torch.equal(inputs[r], originals[r]), "inputs must not change"
        assert sent[r] == ring_bytes_sent(numel, 8, n, r)
    # 2(N-1) steps, every rank sends exactly one chunk to its right neighbour per step
    assert len(messages) == 2 * (n - 1) * n
    assert all(m.dst == (m.src + 1) % n for m in messages)
    for phase in (REDUCE_SCATTER, ALL_GATHER):
        for step in range(n - 1):
            srcs = sorted(m.src for m in messages if m.phase == phase and m.step == step)
            assert srcs == list(range(n))


def test_simulation_keeps_2d_shape_and_formula():
    n = 4
    inputs = [torch.full((3, 8), float(r + 1)) for r in range(n)]
    results, messages, sent = simulate_ring_all_reduce(inputs)
    assert results[2].shape == (3, 8) and torch.all(results[2] == 10.0)
    assert sent == [ring_bytes_formula(3 * 8 * 4, n)] * n  # 24 elements split evenly
    text = format_schedule(messages)
    assert text.count("step") == 2 * (n - 1) and "r3->r0: c3" in text
    grid = schedule_matrix(messages, n)
    assert grid.shape == (2 * (n - 1), n)
    # every step, the N links carry N different chunks: no link idles
    assert all(sorted(row.tolist()) == list(range(n)) for row in grid)
    assert grid[0].tolist() == [0, 1, 2, 3] and grid[n - 1].tolist() == [1, 2, 3, 0]


def test_after_reduce_scatter_rank_r_owns_chunk_r_plus_1():
    n = 3
    schedule = ring_schedule(n)
    # the chunk a rank sends first in all-gather is the one it completed in reduce-scatter
    firsts = {r: c for phase, step, r, c in schedule if phase == ALL_GATHER and step == 0}
    assert firsts == {r: (r + 1) % n for r in range(n)}
    assert chunk_sizes(10, 4) == [3, 3, 2, 2]
    assert [len(c) for c in torch.tensor_split(torch.arange(10), 4)] == chunk_sizes(10, 4)
    assert chunk_sizes(2, 4) == [1, 1, 0, 0]
