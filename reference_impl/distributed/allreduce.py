"""Ring All-Reduce: how N data-parallel workers agree on one summed gradient.

After the backward pass every worker holds its own gradient ``g_r``; before the optimizer step
all of them need ``sum_r g_r``. Sending everything to one "parameter server" makes that server's
link the bottleneck (it receives ``(N-1) S`` bytes). The ring algorithm instead splits the
tensor into ``N`` chunks and passes chunks around a ring ``r -> r+1 (mod N)`` in two phases:

1. **reduce-scatter** (``N-1`` steps): each step, every rank sends one chunk to its right
   neighbour and adds the chunk it receives from its left neighbour into its own copy. After
   ``N-1`` steps rank ``r`` holds the *complete sum* of chunk ``(r+1) mod N``.
2. **all-gather** (``N-1`` steps): the finished chunks travel once more around the ring,
   overwriting instead of adding, until every rank holds every summed chunk.

Each rank sends ``2(N-1)`` chunks of ``S/N`` bytes, i.e. ``2(N-1)/N * S`` bytes: almost ``2S``
*independent of N*, which is the lower bound for all-reduce (Patarasuk & Yuan 2009, Thm. 1).
That is why 1,000 GPUs can sync a gradient in about the time 2 can - bandwidth-wise; the
``2(N-1)`` latency terms are what tree variants in NCCL attack.

References: P. Patarasuk and X. Yuan, "Bandwidth optimal all-reduce algorithms for clusters
of workstations", J. Parallel Distrib. Comput. 69(2), 2009; A. Gibiansky, "Bringing HPC
techniques to deep learning" (Baidu Research blog and ``baidu-allreduce``, 2017); NCCL's
``ring`` algorithm. PyTorch DDP calls NCCL/gloo ``all_reduce`` on gradient buckets and then
divides by ``N`` (an average); here we implement the SUM that ``dist.all_reduce`` computes.

Two implementations share one schedule (:func:`ring_schedule`):
``ring_all_reduce`` runs it over ``torch.distributed`` point-to-point messages (gloo or NCCL),
``simulate_ring_all_reduce`` runs it on a Python list of tensors and records every message, so
a lecture can print or plot who sends which chunk to whom.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

REDUCE_SCATTER = "reduce-scatter"
ALL_GATHER = "all-gather"


@dataclass(frozen=True)
class RingMessage:
    """One chunk travelling one hop of the ring in one step."""

    phase: str  # REDUCE_SCATTER (receiver adds) or ALL_GATHER (receiver overwrites)
    step: int  # 0 .. N-2 within its phase
    src: int
    dst: int  # always (src + 1) % N
    chunk: int
    nbytes: int


def ring_schedule(world_size: int) -> list[tuple[str, int, int, int]]:
    """Who sends which chunk at each step: a list of ``(phase, step, rank, chunk)``.

    Rank ``r`` sends to ``(r+1) % N`` and receives from ``(r-1) % N``.
    reduce-scatter step ``s``: rank ``r`` sends chunk ``(r - s) % N`` (its partial sum grows by
    one contribution per hop); all-gather step ``s``: rank ``r`` sends chunk ``(r + 1 - s) % N``
    (at ``s = 0`` that is the chunk it finished in reduce-scatter).
    """
    _check_world_size(world_size)
    n = world_size
    schedule = []
    for phase, offset in ((REDUCE_SCATTER, 0), (ALL_GATHER, 1)):
        for step in range(n - 1):
            for rank in range(n):
                schedule.append((phase, step, rank, (rank + offset - step) % n))
    return schedule


def chunk_sizes(numel: int, world_size: int) -> list[int]:
    """Element counts of the ``N`` chunks, exactly as ``torch.tensor_split`` makes them.

    The first ``numel % N`` chunks get one extra element; with ``numel < N`` some are empty.
    """
    _check_world_size(world_size)
    base, extra = divmod(numel, world_size)
    return [base + (1 if i < extra else 0) for i in range(world_size)]


def ring_bytes_sent(numel: int, element_size: int, world_size: int, rank: int) -> int:
    """Exact bytes rank ``rank`` sends in one ring all-reduce.

    In reduce-scatter a rank sends every chunk except ``(r+1) % N`` (the one it finishes); in
    all-gather every chunk except ``(r+2) % N`` (the one it receives last). So
    ``bytes = 2 S - |c_(r+1)| - |c_(r+2)|``; with equal chunks ``|c| = S/N`` this is
    :func:`ring_bytes_formula`. With ``N = 1`` nothing is sent.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size == 1:
        return 0
    sizes = chunk_sizes(numel, world_size)
    kept = sizes[(rank + 1) % world_size] + sizes[(rank + 2) % world_size]
    return (2 * numel - kept) * element_size


def ring_bytes_formula(nbytes: float, world_size: int) -> float:
    """Patarasuk & Yuan's per-rank traffic ``2 (N-1) / N * S`` for a tensor of ``S`` bytes."""
    _check_world_size(world_size)
    return 2 * (world_size - 1) / world_size * nbytes


def ring_all_reduce(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> int:
    """Sum ``tensor`` over all ranks in place (like ``dist.all_reduce``) with the ring algorithm.

    Args:
        tensor: any shape and floating dtype, same shape/dtype on every rank; any size (it is
            flattened and cut into ``N`` nearly equal chunks with ``torch.tensor_split``).
        group: process group (default: the world). Without an initialised process group the
            world size is 1 and this is a no-op.
    Returns:
        the number of bytes this rank sent (see :func:`ring_bytes_sent`).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"ring_all_reduce needs a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"ring_all_reduce sums floating tensors, got dtype {tensor.dtype}")
    if not dist.is_initialized():
        return 0
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the group it was asked to reduce over")
    if n == 1:
        return 0
    # send/recv address global ranks; translate our neighbours' group ranks.
    right = _global_rank(group, (rank + 1) % n)
    left = _global_rank(group, (rank - 1) % n)

    copy_back = not tensor.is_contiguous()
    flat = tensor.reshape(-1)  # a view when contiguous; otherwise a copy, written back below
    chunks = torch.tensor_split(flat, n)  # contiguous 1-D views of `flat`
    sent = 0
    for phase, step, r, send_idx in ring_schedule(n):
        if r != rank:
            continue
        recv_idx = (send_idx - 1) % n  # what the left neighbour sends at this step
        outgoing, target = chunks[send_idx], chunks[recv_idx]
        incoming = torch.empty_like(target) if phase == REDUCE_SCATTER else target
        requests = []
        # Post both halves before waiting: a blocking send on every rank at once would wait
        # for a receiver that is itself stuck in send (deadlock with gloo).
        if outgoing.numel() > 0:
            requests.append(dist.isend(outgoing, dst=right, group=group))
            sent += outgoing.numel() * outgoing.element_size()
        if incoming.numel() > 0:
            requests.append(dist.irecv(incoming, src=left, group=group))
        for request in requests:
            request.wait()
        if phase == REDUCE_SCATTER and incoming.numel() > 0:
            target.add_(incoming)
    if copy_back:
        tensor.copy_(flat.view(tensor.shape))
    return sent


def simulate_ring_all_reduce(
    tensors: list[torch.Tensor],
) -> tuple[list[torch.Tensor], list[RingMessage], list[int]]:
    """Run the ring schedule on ``N`` tensors in one process, recording every message.

    Args:
        tensors: ``N`` tensors of one shape and dtype, tensor ``r`` being rank ``r``'s input.
    Returns:
        ``(results, messages, bytes_sent)``: ``results[r]`` is rank ``r``'s final tensor (all
        equal the sum), ``messages`` lists each :class:`RingMessage` in order, and
        ``bytes_sent[r]`` what rank ``r`` sent. The inputs are not modified.
    """
    if len(tensors) == 0:
        raise ValueError("simulate_ring_all_reduce needs at least one tensor (one per rank)")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    for r, t in enumerate(tensors):
        if t.shape != shape or t.dtype != dtype:
            raise ValueError(f"rank {r} has {tuple(t.shape)} {t.dtype}, rank 0 {tuple(shape)} {dtype}")
    n = len(tensors)
    flats = [t.detach().reshape(-1).clone() for t in tensors]
    chunks = [torch.tensor_split(f, n) for f in flats]
    messages: list[RingMessage] = []
    bytes_sent = [0] * n
    schedule = ring_schedule(n)
    for start in range(0, len(schedule), n):  # one step = one message from every rank at once
        step_messages = schedule[start : start + n]
        # Snapshot payloads first: in a real ring every send of a step leaves simultaneously.
        payloads = [chunks[r][c].clone() for _, _, r, c in step_messages]
        for (phase, step, src, c), payload in zip(step_messages, payloads):
            dst = (src + 1) % n
            if phase == REDUCE_SCATTER:
                chunks[dst][c].add_(payload)
            else:
                chunks[dst][c].copy_(payload)
            nbytes = payload.numel() * payload.element_size()
            bytes_sent[src] += nbytes
            messages.append(RingMessage(phase, step, src, dst, c, nbytes))
    results = [f.view(shape) for f in flats]
    return results, messages, bytes_sent


def format_schedule(messages: list[RingMessage]) -> str:
    """A printable table, one line per step: ``r0->r1: c0`` for every message of that step."""
    lines, key = [], None
    for m in messages:
        if (m.phase, m.step) != key:
            key = (m.phase, m.step)
            lines.append(f"{m.phase:>14} step {m.step}:")
        lines[-1] += f"  r{m.src}->r{m.dst}: c{m.chunk}"
    return "\n".join(lines)


def schedule_matrix(messages: list[RingMessage], world_size: int) -> torch.Tensor:
    """``(2(N-1), N)`` integer tensor: entry ``[t, r]`` is the chunk rank ``r`` sends at step ``t``.

    Ready for ``plt.imshow``. Each row is a permutation of ``0..N-1``: at every step all ``N``
    links carry a different chunk, which is why no link idles and none is a bottleneck.
    """
    steps = max(2 * (world_size - 1), 0)
    grid = torch.full((steps, world_size), -1, dtype=torch.long)
    offset = {REDUCE_SCATTER: 0, ALL_GATHER: world_size - 1}
    for m in messages:
        grid[offset[m.phase] + m.step, m.src] = m.chunk
    return grid


def _global_rank(group: dist.ProcessGroup | None, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def _check_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
