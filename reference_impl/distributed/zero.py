"""ZeRO memory model: bytes of model state per GPU for ZeRO stages 0-3.

Rajbhandari, Rasley, Ruwase, He, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC 2020, arXiv:1910.02054 (section 3.1, section 5, Figure 1, Table 1).

Mixed-precision Adam keeps, per parameter (section 3.1): a 16-bit parameter (2 bytes), a 16-bit
gradient (2 bytes) and ``K = 12`` bytes of optimizer state (fp32 master copy, momentum and
variance, 4 bytes each). Plain data parallelism (stage 0) replicates all ``(2 + 2 + K) Psi``
bytes on every GPU. ZeRO partitions them over the ``N`` data-parallel GPUs, one more kind per
stage (section 5):

| stage | name (paper) | FSDP / DeepSpeed        | bytes per GPU                  |
| ----- | ------------ | ----------------------- | ------------------------------ |
| 0     | baseline DP  | DDP, ``NO_SHARD``       | ``(2 + 2 + K) Psi``            |
| 1     | P_os         | ZeRO-1                  | ``2 Psi + 2 Psi + K Psi / N``  |
| 2     | P_os+g       | ``SHARD_GRAD_OP``       | ``2 Psi + (2 + K) Psi / N``    |
| 3     | P_os+g+p     | ``FULL_SHARD``          | ``(2 + 2 + K) Psi / N``        |

Only *model states* are counted: activations, temporary buffers and fragmentation come on top
(the paper's "residual states", section 3.2) - pass them as ``reserved_bytes``.
Communication per step (section 7): stages 0-2 move ``2 Psi`` elements per GPU (one
all-reduce = reduce-scatter + all-gather, see ``allreduce.py``); stage 3 moves ``3 Psi``
because parameters are all-gathered again in the backward pass.
GB here are 10^9 bytes, as in the paper (``16 * 7.5e9 = 120 GB``).
"""
from __future__ import annotations

STAGES = (0, 1, 2, 3)
ADAM_K = 12  # fp32 params + momentum + variance: 4 + 4 + 4 bytes per parameter
GB = 1e9


def bytes_per_parameter(stage: int, n_gpus: int, k: float = ADAM_K) -> float:
    """Model-state bytes per GPU per parameter of the model (section 5, Figure 1).

    Multiply by ``Psi`` (the parameter count) to get bytes per GPU.
    """
    _check(stage, n_gpus, k)
    params, grads, optim = 2.0, 2.0, float(k)
    if stage >= 1:
        optim /= n_gpus  # P_os: each GPU keeps and updates 1/N of the optimizer state
    if stage >= 2:
        grads /= n_gpus  # P_g: gradients are reduce-scattered, each GPU keeps its 1/N
    if stage >= 3:
        params /= n_gpus  # P_p: parameters are all-gathered layer by layer when needed
    return params + grads + optim


def model_state_bytes(n_params: float, stage: int, n_gpus: int, k: float = ADAM_K) -> float:
    """Bytes of parameters + gradients + optimizer state on each GPU.

    Example (Figure 1): ``model_state_bytes(7.5e9, 1, 64) / 1e9 == 31.40625`` (paper: 31.4 GB).
    """
    if n_params < 0:
        raise ValueError(f"n_params must be >= 0, got {n_params}")
    return n_params * bytes_per_parameter(stage, n_gpus, k)


def max_parameters(
    gpu_bytes: float, stage: int, n_gpus: int, k: float = ADAM_K, reserved_bytes: float = 0.0
) -> int:
    """The largest parameter count whose model states fit in one GPU's memory.

    Args:
        gpu_bytes: memory of one GPU, e.g. ``80e9`` for an 80 GB H100.
        reserved_bytes: kept free for activations, buffers and the CUDA context.
    Returns:
        ``floor((gpu_bytes - reserved_bytes) / bytes_per_parameter)``.
    """
    if gpu_bytes <= 0:
        raise ValueError(f"gpu_bytes must be > 0, got {gpu_bytes}")
    if not 0 <= reserved_bytes < gpu_bytes:
        raise ValueError(f"reserved_bytes must be in [0, gpu_bytes={gpu_bytes}), got {reserved_bytes}")
    return int((gpu_bytes - reserved_bytes) // bytes_per_parameter(stage, n_gpus, k))


def communication_elements(n_params: float, stage: int) -> float:
    """Elements each GPU sends per training step (section 7.2): ``2 Psi``, or ``3 Psi`` at stage 3.

    Counts a ring all-reduce as ``2 Psi`` (the ``2(N-1)/N`` factor rounded to 2, as the paper does).
    """
    _check(stage, 1, ADAM_K)
    return (3.0 if stage == 3 else 2.0) * n_params


def memory_table(n_params: float, gpu_counts: list[int], k: float = ADAM_K) -> list[dict]:
    """Rows ``{"gpus": N, "stage0": GB, ..., "stage3": GB}`` (the paper's Table 1 layout)."""
    return [
        {"gpus": n, **{f"stage{s}": model_state_bytes(n_params, s, n, k) / GB for s in STAGES}}
        for n in gpu_counts
    ]


def max_model_table(
    gpu_bytes: float, gpu_counts: list[int], k: float = ADAM_K, reserved_bytes: float = 0.0
) -> list[dict]:
    """Rows ``{"gpus": N, "stage0": params, ..., "stage3": params}``: the largest model per stage."""
    return [
        {"gpus": n, **{f"stage{s}": max_parameters(gpu_bytes, s, n, k, reserved_bytes) for s in STAGES}}
        for n in gpu_counts
    ]


def format_table(rows: list[dict], unit: str = "GB", scale: float = 1.0) -> str:
    """Plain-text table of rows from :func:`memory_table` or :func:`max_model_table`.

    ``scale`` divides every value, e.g. ``format_table(max_model_table(...), "B params", 1e9)``.
    """
    head = f"{'GPUs':>6} | " + " | ".join(f"{'stage ' + str(s):>12}" for s in STAGES) + f"   ({unit})"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = " | ".join(f"{row[f'stage{s}'] / scale:>12,.2f}" for s in STAGES)
        lines.append(f"{row['gpus']:>6} | {cells}")
    return "\n".join(lines)


def _check(stage: int, n_gpus: int, k: float) -> None:
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage must be one of {STAGES}, got {stage!r}")
    if not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus must be a positive int, got {n_gpus!r}")
    if k < 0:
        raise ValueError(f"K (optimizer bytes per parameter) must be >= 0, got {k}")
