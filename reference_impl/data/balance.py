"""Class-balanced sampling: the 90% cats / 10% dogs problem, and a sampler that survives DDP.

A generator trained on 90% cats and 10% dogs sees a dog one step in ten and becomes a cat
generator. Instead of changing the loss, we change how often each image is *drawn*: every
sample gets a weight, and a weighted sampler draws with replacement in proportion to it.

Three ways to choose the class sampling probabilities p_c from the class counts n_c:

  inverse      p_c uniform over classes: sample weight 1 / n_c ("every class equally often").
  effective    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
               CVPR 2019, arXiv:1901.05555, Eq. 3-4: E_n = (1 - beta^n) / (1 - beta) is the
               effective number of samples of a class (near-duplicates add less and less);
               class weight proportional to 1 / E_n. beta = 0 gives no rebalancing, beta -> 1
               gives inverse frequency; in between it rebalances without trusting the count of
               a huge class literally.
  temperature  p_c proportional to n_c^(1/T): T = 1 keeps the natural frequencies, T -> inf
               tends to uniform (the multilingual-data recipe of Arivazhagan et al. 2019,
               arXiv:1907.05019, and XLM, arXiv:1901.07291, with alpha = 1/T).

``balanced_weights`` returns both the class probabilities (what you reason about) and the
per-sample weights (what a sampler consumes): sample i of class c gets p_c / n_c, so the
weights of a class sum to p_c and all weights sum to 1.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

METHODS = ("none", "inverse", "effective", "temperature")


def class_counts(labels, num_classes: int | None = None) -> torch.Tensor:
    """Counts n_c of each class: labels (N,) ints in [0, C) -> (C,) float64."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got {tuple(labels.shape)}")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), "
                         f"got [{labels.min()}, {labels.max()}]")
    return torch.bincount(labels, minlength=num_classes or 0).double()


def effective_number(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019, Eq. 3): (C,) -> (C,).

    beta = 0 gives E_n = 1 for every non-empty class. The paper writes beta = (N - 1) / N
    with N the number of "prototypes" of a class, so E_n <= N = 1 / (1 - beta).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    counts = counts.double()
    # -expm1(n log beta) = 1 - beta^n without cancellation when beta is close to 1
    one_minus_pow = -torch.expm1(counts * math.log(beta)) if beta > 0 else (counts > 0).double()
    return one_minus_pow / (1.0 - beta)


def class_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al.'s class-balanced weights (1 - beta) / (1 - beta^n_c), normalised to sum to C.

    (C,) -> (C,); an empty class gets weight 0 and C counts only the non-empty classes,
    which is the normalisation of the paper (Sec. 3.2: "sum_i alpha_i = C").
    """
    present = counts > 0
    w = torch.zeros_like(counts, dtype=torch.float64)
    w[present] = 1.0 / effective_number(counts[present], beta)
    return w * present.sum() / w.sum()


def class_probabilities(counts: torch.Tensor, method: str = "inverse", beta: float = 0.999,
                        temperature: float = 2.0) -> torch.Tensor:
    """How often a balanced sampler draws each class: counts (C,) -> probabilities (C,), sum 1.

    A sampler whose per-sample weight is w_c draws class c with probability ∝ n_c * w_c.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"counts must be a 1-D tensor of non-negative counts, got {counts}")
    present = (counts > 0).double()
    if method == "none":
        p = counts
    elif method == "inverse":
        p = present  # n_c * (1 / n_c) = 1 for every class that has samples
    elif method == "effective":
        p = counts * class_weights(counts, beta)
    elif method == "temperature":
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        p = counts ** (1.0 / temperature)  # an empty class stays at 0 ** (1/T) = 0
    else:
        raise ValueError(f"unknown balance method {method!r}; choose one of {METHODS}")
    return p / p.sum()


def balanced_weights(labels, method: str = "inverse", beta: float = 0.999,
                     temperature: float = 2.0,
                     num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (C,) and per-sample weights (N,) for a weighted sampler.

    Sample i of class c gets weight p_c / n_c: a class's weights sum to p_c, all sum to 1.
    Feed the weights to ``torch.utils.data.WeightedRandomSampler`` or
    ``DistributedWeightedSampler``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = class_counts(labels, num_classes)
    probs = class_probabilities(counts, method, beta, temperature)
    per_class = torch.where(counts > 0, probs / counts.clamp(min=1), torch.zeros_like(probs))
    return probs, per_class[labels]


def loss_weights(labels, method: str = "inverse", beta: float = 0.999, temperature: float = 2.0,
                 num_classes: int | None = None) -> torch.Tensor:
    """Per-sample LOSS multipliers that do in the loss what the weighted sampler does in the draw.

    A sampler draws sample i with probability q_i (``balanced_weights``); a uniform shuffle
    draws it with 1/N. Multiplying sample i's loss by N q_i = p_c / pi_c (pi_c = n_c / N, the
    class's natural share) gives the same expected gradient (importance weighting), so both
    fit the same rebalanced distribution. The multipliers average 1 over the data, so the
    learning rate means the same thing as without them. (N,) labels -> (N,) float64 weights.
    What differs is the variance: a batch with no rare sample gets no rare gradient, and one
    with a single rare sample multiplies its loss by 1 / (C pi_rare) - 5x for 10% of 2 classes.
    """
    _, q = balanced_weights(labels, method, beta, temperature, num_classes)
    return q * len(q)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed hashed from (seed, epoch): (0, 1) and (1, 0) differ; seed + epoch would not."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint64)[0] >> 1)


class DistributedWeightedSampler(Sampler[int]):
    """A weighted sampler that is correct under data parallelism.

    Every rank draws the SAME global sequence of ``num_samples`` indices with
    ``torch.multinomial`` from a generator seeded by (seed, epoch), then keeps the interleaved
    shard ``sequence[rank::world_size]``. The shards are disjoint and their union is exactly the
    single-process draw, so W GPUs together see the same sample as one GPU would.

    Why not let each rank draw on its own? With the same seed every rank draws the same
    indices, so each sample is seen W times per step and the effective batch is 1/W of its size.
    With a different seed per rank the union is still right in distribution, but it is not a
    partition of one draw: results depend on W and cannot be compared to a 1-GPU run.

    The sequence is padded (wrapping round to its start, as ``DistributedSampler`` does) or,
    with ``drop_last``, truncated so every rank yields the same count - a rank with one batch
    fewer would hang the others in the gradient all-reduce. Call ``set_epoch`` each epoch.
    """

    def __init__(self, weights, num_samples: int, rank: int | None = None,
                 world_size: int | None = None, seed: int = 0, replacement: bool = True,
                 drop_last: bool = False):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        if self.weights.ndim != 1 or (self.weights < 0).any() or not self.weights.sum() > 0:
            raise ValueError("weights must be a 1-D tensor of non-negative numbers, not all zero")
        if not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not replacement and num_samples > int((self.weights > 0).sum()):
            raise ValueError(f"cannot draw {num_samples} samples without replacement from "
                             f"{int((self.weights > 0).sum())} samples with non-zero weight")
        running = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if running else 1
        if rank is None:
            rank = dist.get_rank() if running else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if drop_last and num_samples < world_size:
            raise ValueError(f"drop_last: {num_samples} samples leave none for {world_size} ranks")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.replacement, self.drop_last, self.epoch = seed, replacement, drop_last, 0
        # samples per rank: the same on every rank
        self.per_rank = (num_samples // world_size if drop_last
                         else math.ceil(num_samples / world_size))

    def set_epoch(self, epoch: int) -> None:
        """A new epoch, a new draw (same on every rank)."""
        self.epoch = epoch

    def global_sequence(self) -> torch.Tensor:
        """The draw all ranks share this epoch: (num_samples,) long indices."""
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g)

    def __iter__(self) -> Iterator[int]:
        seq = self.global_sequence()
        total = self.per_rank * self.world_size
        if total > len(seq):  # pad by wrapping round: a few samples seen twice this epoch
            seq = torch.cat([seq, seq.repeat(math.ceil(total / len(seq)))[: total - len(seq)]])
        shard = seq[:total][self.rank::self.world_size]
        assert len(shard) == self.per_rank, "every rank must yield the same number of samples"
        return iter(shard.tolist())

    def __len__(self) -> int:
        return self.per_rank
