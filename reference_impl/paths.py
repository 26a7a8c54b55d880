"""Where things are written: the on-disk cache (probe weights, caption embeddings) and runs.

``REFERENCE_IMPL_CACHE`` overrides the cache folder (default: ``.cache`` in the working
directory), so tests can point it at a temporary folder and CI can keep it between steps.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A folder inside the cache, created if missing."""
    root = Path(os.environ.get("REFERENCE_IMPL_CACHE", ".cache"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def content_hash(obj) -> str:
    """12 hex digits naming a cached artefact by what made it (a JSON-able config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


@contextlib.contextmanager
def build_lock(path: Path):
    """Hold an exclusive lock named after ``path`` while it is checked for and built.

    Two processes that need the same cached artefact at once (pytest-xdist workers, an
    experiment's worker processes) would otherwise both train it; with the lock the second
    waits, then finds the file and loads it.
    """
    import fcntl

    lock = Path(path).with_suffix(Path(path).suffix + ".lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
