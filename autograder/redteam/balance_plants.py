"""Planted submissions for assignment 2 (solutions/balance): plausible wrong answers.

Each plant is the reference solution with one mistake a student could well make, and its
expected autograded score is the solution's minus exactly the points of the test that mistake
should fail (the hidden checks are built so that no other test notices it):

  unnormalised_effective  Cui et al.'s class weight (1 - beta) / (1 - beta^n) handed to each
                          sample as is (a sampler does not care, the weights' sum does)
  overlapping_shards      no padding; the last rank's block is shifted back inside the draw,
                          so it overlaps its neighbour's whenever W does not divide the draw
  same_seed_every_epoch   set_epoch does nothing: every epoch repeats epoch 0's draw
  temperature_not_inverse Part C balances with temperature weights (T = 2, 25% rare) instead
                          of inverse frequency (50%)
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from .. import notebook as nbu
from . import reference_plants
from .plants import Plant, replace, solved_from

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / "balance" / "balance.ipynb"
RELEASE = REPO / "assignments" / "balance" / "balance.ipynb"
WEIGHTS = ("test_inverse_weights", "test_effective_weights", "test_temperature_weights")
SAMPLER = ("test_sampler_even", "test_sampler_uneven", "test_sampler_epochs")
PART_C = ("test_rare_share_unbalanced", "test_rare_share_balanced")
POINTS = 2.0  # every autograded test of this assignment
AUTO_MAX = POINTS * len(WEIGHTS + SAMPLER + PART_C)


def solved():
    return solved_from(SOURCE, RELEASE)


def _plant(make, failed=()) -> Plant:
    def build(folder: Path):
        (folder / "balance").mkdir(parents=True, exist_ok=True)
        nbformat.write(make(), str(folder / "balance" / "balance.ipynb"))
    failed = set(failed)
    return Plant(build, AUTO_MAX - POINTS * len(failed), failed)


PLANTS = {
    "solution": _plant(solved),
    "blank": Plant(_plant(lambda: nbu.read(RELEASE)).build, 0.0, set(WEIGHTS + SAMPLER + PART_C)),
    "unnormalised_effective": _plant(lambda: replace(
        solved(), "weights_impl",
        "        p = n * (1 - beta) / -torch.expm1(n * math.log(beta))",
        "        # Cui et al.'s class weight, one per sample\n"
        "        return ((1 - beta) / -torch.expm1(counts.clamp(min=1) * math.log(beta)))[labels]"),
        {"test_effective_weights"}),
    "overlapping_shards": _plant(lambda: replace(
        solved(), "sampler_impl",
        "        padded = seq.repeat(math.ceil(total / len(seq)))[:total]  # cyclic: seq, seq[:pad]\n"
        "        start = self.rank * self.per_rank\n",
        "        padded = seq\n"
        "        # keep the last rank's block inside the draw\n"
        "        start = min(self.rank * self.per_rank, max(len(seq) - self.per_rank, 0))\n"),
        {"test_sampler_uneven"}),
    "same_seed_every_epoch": _plant(lambda: replace(
        solved(), "sampler_impl", "        self.epoch = epoch\n",
        "        pass  # the seed already makes every draw reproducible\n"),
        {"test_sampler_epochs"}),
    "temperature_not_inverse": _plant(lambda: replace(
        solved(), "toy_impl", 'sample_weights(labels, "inverse")',
        'sample_weights(labels, "temperature")'), {"test_rare_share_balanced"}),
}

PLANTS.update(reference_plants.balance())  # borrowed code, a rule, a measurement (issue 25)


def write(dest: Path) -> None:
    """dest/<student>/balance/balance.ipynb for every plant."""
    for student, plant in PLANTS.items():
        plant.build(dest / student)
