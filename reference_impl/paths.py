"""Where things are written: the on-disk cache (probe weights, caption embeddings) and runs.

``REFERENCE_IMPL_CACHE`` overrides the cache folder (default: ``.cache`` in the working
directory), so tests can point it at a temporary folder and CI can keep it between steps.
"""
from __future__ import annotations

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
