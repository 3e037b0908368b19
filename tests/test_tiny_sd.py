"""tiny-sd: SD1.5's LoRA layout, the real CLIP tokenizer, shipped weights, and folder loading."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny

from lora_wise.errors import BackboneError
from lora_wise.factory.backbones import load_backbone, tiny_sd
from lora_wise.factory.train import target_module_names

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def test_lora_layers_are_exactly_sd15s():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    sd15 = dict(tiny_sd.UNET_CONFIG, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                attention_head_dim=8, sample_size=64)  # fmt: skip
    with init_empty_weights():  # SD1.5's real UNet shape, without allocating its 860M weights
        big = UNet2DConditionModel(**sd15)
    names = target_module_names(tiny().unet, TARGETS)
    assert len(names) == 128
    assert names == target_module_names(big, TARGETS)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names
    assert (
        tiny().unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k").in_features == 32
    )


def test_tokenizer_is_clips_bpe():
    tok = tiny_sd.build_tokenizer()
    assert len(tok) == 49408
    # ids of the public CLIP ViT-L/14 tokenizer for this prompt ("sks" is 48136, DreamBooth's rare token)
    assert tok("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    ids = tok("A  Photo of  sks DOG!", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[:8] == [49406, 320, 1125, 539, 48136, 1929, 256, 49407]
    assert tok.decode(tok("grey brick wall").input_ids, skip_special_tokens=True) == "grey brick wall"


def test_shipped_weights_are_small_fp16_and_load_strictly():
    from safetensors import safe_open

    files = sorted(tiny_sd.data_dir().glob("*.safetensors"))
    assert [f.name for f in files] == ["text_encoder.safetensors", "unet.safetensors", "vae.safetensors"]
    assert sum(f.stat().st_size for f in tiny_sd.data_dir().iterdir()) <= 10 * 2**20
    with safe_open(files[1], "pt") as f:
        assert f.get_tensor(f.keys()[0]).dtype == torch.float16
        assert "pretrain_tiny_sd.py" in f.metadata()["provenance"]
    bb = tiny()
    assert sum(p.numel() for p in bb.unet.parameters()) == 2_446_788
    assert bb.resolution == 64 and 0.1 < bb.scaling_factor < 10
    assert not any(p.requires_grad for p in bb.unet.parameters())
    mean, std = bb.encode_images(torch.zeros(1, 3, 64, 64))
    assert mean.shape == std.shape == (1, 4, 16, 16)


def test_pretrained_unet_denoises_better_than_random_init():
    # the shipped UNet learnt something: lower epsilon-MSE on pool latents than a fresh init
    from lora_wise.factory.micro_datasets import open_micro_dataset

    bb = tiny()
    md = open_micro_dataset("pool:digit-2-ink")
    mean, _ = bb.encode_images(torch.from_numpy(md.load(md.choose(8), 64)))
    emb, _ = bb.encode_prompt("a photo of digit")
    gen = torch.Generator().manual_seed(1)
    z0 = mean * bb.scaling_factor
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.full((8,), 300)
    noisy = bb.scheduler.add_noise(z0, noise, t)
    fresh, _, _ = tiny_sd.build_models(seed=123)
    with torch.no_grad():
        trained = (bb.unet(noisy, t, emb.expand(8, -1, -1)).sample - noise).pow(2).mean()
        random = (fresh(noisy, t, emb.expand(8, -1, -1)).sample - noise).pow(2).mean()
    assert trained < 0.7 * random


def test_local_pipeline_folder_loads_like_the_hub_path(tmp_path):
    bb = tiny()
    bb.pipeline().save_pretrained(tmp_path / "pipe")
    load_backbone.cache_clear()
    other = load_backbone(str(tmp_path / "pipe"))
    assert not other.is_sdxl and other.resolution == 64
    assert other.scaling_factor == pytest.approx(bb.scaling_factor)
    for key, value in bb.unet.state_dict().items():
        assert torch.equal(other.unet.state_dict()[key], value), key
    a, _ = bb.encode_prompt("a photo of sks cat")
    b, _ = other.encode_prompt("a photo of sks cat")
    assert torch.allclose(a, b)
    assert other.scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize("name", ["not-a-backbone", "/no/such/folder/anywhere"])
def test_unknown_backbone_is_a_one_line_error(name):
    with pytest.raises(BackboneError) as e:
        load_backbone(name)
    assert "\n" not in str(e.value)
