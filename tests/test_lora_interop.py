"""The adapter file written by ``adapters.lora.save_lora`` loads with the standard tools, not
only with ours: diffusers' pipeline loader, diffusers' UNet loader from a state dict, and peft
alone (``inject_adapter_in_model`` + ``set_peft_model_state_dict``). Each must reproduce the
adapted UNet's output exactly, for attention and conv targets with alpha != rank (so the
scaling must travel in the file's metadata).

The file is what diffusers' own LoRA training scripts write (``convert_state_dict_to_diffusers``
of the peft state, then ``save_lora_weights``): keys prefixed ``unet.``; Linear layers renamed to
``lora.down`` / ``lora.up``, conv layers left as ``lora_A`` / ``lora_B``; the LoraConfig as JSON
metadata. peft alone needs the two renames undone and the prefix dropped, nothing else.
"""
import json

import pytest
import torch
from safetensors import safe_open
from test_lora import inputs, randomise_lora, run, tiny_unet  # noqa: F401 (inputs: a fixture)

from reference_impl.adapters.lora import TARGETS, add_lora, load_lora, save_lora


@pytest.fixture(scope="module")
def saved(inputs, tmp_path_factory):  # noqa: F811
    unet = tiny_unet()
    add_lora(unet, rank=4, alpha=12, target_modules=TARGETS["attention_conv"])
    randomise_lora(unet)
    directory = tmp_path_factory.mktemp("adapter")
    return save_lora(unet, directory), run(unet, inputs)


def test_ours(saved, inputs):  # noqa: F811
    path, adapted = saved
    fresh = tiny_unet()
    load_lora(fresh, path.parent)
    assert torch.equal(run(fresh, inputs), adapted)


def test_diffusers_pipeline_load_lora_weights(saved, inputs):  # noqa: F811
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    path, adapted = saved
    text = CLIPTextModel(CLIPTextConfig(hidden_size=384, intermediate_size=64,
                                        num_attention_heads=2, num_hidden_layers=1))
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=tiny_unet(),
                                   scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    assert torch.equal(run(pipe.unet, inputs), adapted)


def test_diffusers_state_dict_into_unet(saved, inputs):  # noqa: F811
    from diffusers import StableDiffusionPipeline

    path, adapted = saved
    state, alphas, meta = StableDiffusionPipeline.lora_state_dict(
        str(path.parent), weight_name=path.name, return_lora_metadata=True)
    fresh = tiny_unet()
    fresh.load_lora_adapter(state, prefix="unet", network_alphas=alphas, metadata=meta)
    assert torch.equal(run(fresh, inputs), adapted)


def test_peft_alone(saved, inputs):  # noqa: F811
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    path, adapted = saved
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        state = {k.removeprefix("unet.").replace(".lora.down.", ".lora_A.")
                 .replace(".lora.up.", ".lora_B."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    cfg = {k.removeprefix("unet."): v for k, v in meta.items()}
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 12
    fresh = inject_adapter_in_model(LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"],
                                               target_modules=cfg["target_modules"]), tiny_unet())
    result = set_peft_model_state_dict(fresh, state)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    assert torch.equal(run(fresh, inputs), adapted)
