"""LoRA (adapters/lora.py): the hand-written layer against peft, and the peft/diffusers plumbing."""
import pytest
import torch
from torch import nn

from reference_impl.adapters.lora import (
    LoRALinear,
    adapter_size_mb,
    add_lora,
    load_lora,
    lora_parameter_count,
    merge_lora,
    save_lora,
    unmerge_lora,
)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, cross_attention_dim=384, attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 5, 384, generator=g))


def run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


def randomise_lora(unet, seed=2):
    """Give B non-zero values, as training would, so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            p.data.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("init", [True, "gaussian"])
def test_adapter_starts_as_identity_and_counts_match(inputs, init):
    unet = tiny_unet()
    base = run(unet, inputs)
    expected = lora_parameter_count(unet, rank=4)
    stats = add_lora(unet, rank=4, alpha=8, init_lora_weights=init)
    assert torch.equal(run(unet, inputs), base)  # B = 0: exactly the base model at step 0
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # the base is frozen
    assert stats["trainable"] == expected == lora_parameter_count(unet, rank=4)
    # peft's own count of the injected A and B matrices.
    peft_count = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    assert stats["trainable"] == peft_count
    # By hand: a transformer block of width d has self-attention q, k, v, out (d -> d) and
    # cross-attention q, out (d -> d), k, v (384 -> d): r (14 d + 2 * 384) LoRA parameters.
    # Blocks: down (d=32), mid (d=64), and two in the last up block (d=32).
    assert expected == 4 * sum(14 * d + 768 for d in (32, 64, 32, 32)) == 21248
    assert stats["trainable_mb"] == pytest.approx(peft_count * 4 / 2**20)


def test_merge_equals_unmerged_and_unmerge_restores(inputs):
    unet = tiny_unet()
    base = run(unet, inputs)
    add_lora(unet, rank=4, alpha=4)
    randomise_lora(unet)
    adapted = run(unet, inputs)
    assert (adapted - base).abs().max() > 1e-3  # the adapter does something
    merge_lora(unet)
    torch.testing.assert_close(run(unet, inputs), adapted, atol=1e-5, rtol=0)
    unmerge_lora(unet)
    torch.testing.assert_close(run(unet, inputs), adapted, atol=1e-5, rtol=0)


def test_save_load_round_trip(inputs, tmp_path):
    unet = tiny_unet()
    add_lora(unet, rank=4, alpha=16)  # alpha != rank: the scaling must survive the round trip
    randomise_lora(unet)
    adapted = run(unet, inputs)
    path = save_lora(unet, tmp_path)
    assert path.name == "pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file
    keys = list(load_file(path))
    assert keys and all(k.startswith("unet.") for k in keys)  # the diffusers layout
    assert 0 < adapter_size_mb(tmp_path) < 1
    fresh = tiny_unet()
    load_lora(fresh, tmp_path)
    assert torch.equal(run(fresh, inputs), adapted)


def test_hand_written_layer_equals_peft():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    x = torch.randn(5, 12)
    model = nn.Sequential(nn.Linear(12, 7))
    ours = LoRALinear(nn.Linear(12, 7), rank=3, alpha=6)
    ours.base.load_state_dict(model[0].state_dict())
    assert torch.equal(ours(x), model(x))  # B = 0 at start
    torch.nn.init.normal_(ours.B)
    peft_model = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6, target_modules=["0"]),
                                         model)
    layer = peft_model[0]
    layer.lora_A["default"].weight.data.copy_(ours.A)
    layer.lora_B["default"].weight.data.copy_(ours.B)
    torch.testing.assert_close(ours(x), layer(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x @ ours.merged_weight().T + ours.base.bias, ours(x),
                               atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == 3 * (12 + 7)


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(FileNotFoundError):
        load_lora(tiny_unet(), "/nonexistent/lora")
