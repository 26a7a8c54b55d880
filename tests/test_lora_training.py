"""LoRA training (adapters/lora.py: train_lora): only the adapter moves, and the
adapter file round-trips, merges and unmerges."""
import torch

from reference_impl.adapters.lora import load_lora, merge_lora, train_lora, unmerge_lora
from reference_impl.config import load_config
from reference_impl.data.shapes import ShapesWorld, WorldConfig
from reference_impl.models.exported import load_unet
from reference_impl.models.unet import build_unet


def _out(unet, x, t, h):
    with torch.no_grad():
        return unet(x, t, h).sample


def test_lora_trains_only_the_adapter_and_round_trips(tmp_path):
    torch.manual_seed(0)
    build_unet("tiny", 16, 384).save_pretrained(tmp_path / "base" / "final" / "unet_ema")
    base_final = tmp_path / "base" / "final"
    cfg = load_config("ci", ["lora.steps=3", "lora.batch_size=4", "lora.num_images=8",
                             "train.curriculum=[{steps: 1, resolution: 16}]"])
    brand = ShapesWorld(WorldConfig(seed=7, brand_fraction=1.0, caption_mix=[0, 0, 1]), 8, 16)
    assert all("in the brand style" in brand[i]["caption"] for i in range(8))
    stats = train_lora(cfg, base_final, brand, tmp_path / "lora", progress=False)
    assert 0 < stats["trainable_fraction"] < 0.1 and stats["adapter_mb"] > 0

    base = load_unet(base_final).eval()
    g = torch.Generator().manual_seed(1)
    x, t, h = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 384, generator=g)
    y_base = _out(base, x, t, h)
    adapted = load_unet(base_final).eval()
    load_lora(adapted, tmp_path / "lora" / "adapter")
    # base weights unchanged by training: every non-LoRA tensor equals the saved base
    base_sd = base.state_dict()
    for name, w in adapted.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(w, base_sd[name.replace(".base_layer", "")]), name
    y_lora = _out(adapted, x, t, h)
    assert (y_lora - y_base).abs().max() > 1e-6  # the adapter learned something
    merge_lora(adapted)
    assert torch.allclose(_out(adapted, x, t, h), y_lora, atol=1e-5)
    unmerge_lora(adapted)
    adapted.disable_adapters()
    assert torch.allclose(_out(adapted, x, t, h), y_base, atol=1e-5)


def test_lora_seed_fixes_the_adapter_initialisation(tmp_path):
    """``train_lora(seed=s)``: the adapters' A matrices are drawn from ``s``, whatever the global
    generator did before, so two runs with one seed train the same adapter."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    build_unet("tiny", 16, 384).save_pretrained(tmp_path / "base" / "final" / "unet_ema")
    cfg = load_config("ci", ["lora.steps=1", "lora.batch_size=4",
                             "train.curriculum=[{steps: 1, resolution: 16}]"])
    brand = ShapesWorld(WorldConfig(seed=7, brand_fraction=1.0, caption_mix=[0, 0, 1]), 4, 16)
    weights = []
    for run, noise in (("a", 1), ("b", 2)):
        torch.manual_seed(noise)  # a different global state before each run
        train_lora(cfg, tmp_path / "base" / "final", brand, tmp_path / run, progress=False, seed=5)
        weights.append(load_file(tmp_path / run / "adapter" / "pytorch_lora_weights.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
