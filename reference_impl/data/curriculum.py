"""Curriculum stages and the resumable stream of batches each stage trains on.

A curriculum (lecture 01) trains in stages: low resolution and high volume first (a 16 px image
costs a quarter of a 32 px one), then the same scenes at a higher resolution; or the large
blurry bulk first and a sharp finishing pass after. Each stage here is a ShapesWorld view of
the *same* scenes (same world seed and indices) at the stage's resolution and quality mix.

``BatchStream`` makes the order of batches a pure function of (seed, epoch, batches consumed),
so a run resumed from a checkpoint sees exactly the batches it would have seen, and under data
parallelism each rank reads its own disjoint shard of every epoch.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .balance import DistributedWeightedSampler, balanced_weights
from .shapes import ShapesWorld, sample_scene


def stage_dataset(data_cfg, stage) -> ShapesWorld:
    """The training set of one curriculum stage (``data_cfg``: config.DataConfig)."""
    if data_cfg.source != "shapes":
        raise NotImplementedError(
            f"data.source={data_cfg.source!r}: the trainer's curriculum runs on ShapesWorld; "
            "digits and image folders are loaded with data/digits.py and data/folder.py")
    world = data_cfg.world
    if stage.hq_fraction is not None:
        world = dataclasses.replace(world, hq_fraction=stage.hq_fraction)
    return ShapesWorld(world, data_cfg.num_train, stage.resolution)


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep strings as lists."""
    out = {}
    for k in items[0]:
        v = [it[k] for it in items]
        out[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else (
            v if isinstance(v[0], str) else torch.tensor(v))
    return out


class BatchStream:
    """An endless, resumable iterator of batches for one rank.

    Epoch e's index order comes from a sampler seeded by (seed, e): a shuffled permutation, or
    a class-balanced weighted draw when ``data_cfg.balance != "none"``. ``start_batch`` skips
    batches already consumed (resume). Remainders that do not fill a batch are dropped.
    """

    def __init__(self, dataset: ShapesWorld, data_cfg, batch_size: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size = dataset, batch_size
        n = len(dataset)
        if data_cfg.balance == "none":
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                              shuffle=True, seed=seed, drop_last=True)
        else:
            kinds = [sample_scene(dataset.world, dataset.start + i)["kind"] for i in range(n)]
            _, weights = balanced_weights(kinds, data_cfg.balance, beta=data_cfg.balance_beta,
                                          temperature=data_cfg.balance_temperature, num_classes=4)
            self.sampler = DistributedWeightedSampler(weights, n, rank=rank, world_size=world_size,
                                                      seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"data.num_train={n} is too small for batch size {batch_size} "
                             f"x {world_size} ranks")
        self.consumed = start_batch
        self.num_workers = data_cfg.num_workers
        self._iter = None

    def _epoch_batches(self, epoch: int, skip: int):
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size]
                   for i in range(skip, self.per_epoch)]
        loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate,
                            num_workers=self.num_workers,
                            persistent_workers=False)
        yield from loader

    def _generate(self):
        epoch, skip = divmod(self.consumed, self.per_epoch)
        while True:
            yield from self._epoch_batches(epoch, skip)
            epoch, skip = epoch + 1, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = self._generate()
        batch = next(self._iter)
        self.consumed += 1
        return batch
