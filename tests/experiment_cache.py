"""A private experiment cache for one test module, shared by the fast-scale experiment tests.

Each experiment test runs its experiment in a cache of its own, so that under pytest-xdist no
other module sees (or races on) its units and results. ``share`` links in folders of the
session cache that are expensive to build and read-only afterwards (the curation models, the
probe); ``patch`` sets module attributes for the block (the session's probe, already loaded).
"""
import os
from contextlib import contextmanager

import pytest

ALIGNMENT_MODELS = ("captioner", "aesthetic", "safety", "probe")  # what the Act III bases read


@contextmanager
def private_cache(tmp_path_factory, share=(), patch=()):
    """REFERENCE_IMPL_CACHE -> a fresh folder for the block; yields the folder.

    share: names of session-cache folders to link in; patch: (object, name, value) triples."""
    from reference_impl.paths import cache_dir

    shared, root = cache_dir(), tmp_path_factory.mktemp("cache")
    for name in share:
        os.symlink(shared / name, root / name)
    mp = pytest.MonkeyPatch()
    mp.setenv("REFERENCE_IMPL_CACHE", str(root))
    for obj, name, value in patch:
        mp.setattr(obj, name, value)
    try:
        yield root
    finally:
        mp.undo()


@contextmanager
def alignment_cache(tmp_path_factory):
    """``private_cache`` for the Act III experiments: the curation models and the probe are
    built (or loaded) in the session cache first, then linked in."""
    from reference_impl.experiments.alignment_base import curation_models

    curation_models()
    with private_cache(tmp_path_factory, share=ALIGNMENT_MODELS) as root:
        yield root
