"""Shared test set-up: offline, deterministic, small.

The cache (probe weights, caption embeddings) is shared by the whole session in
``.cache/test`` inside the repo so slow artefacts are built once per test run.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One torch thread per process (subprocesses inherit the variables): the suite starts several
# processes at once (DDP ranks, autograder kernels) and OpenMP threads that outnumber the cores
# spin and slow everything down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("REFERENCE_IMPL_CACHE", str(REPO / ".cache" / "test"))


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def probe():
    """The evaluation probe: trained once (or loaded from the test cache) for the session."""
    from reference_impl.evaluation.probe import get_probe

    return get_probe(progress=False)
