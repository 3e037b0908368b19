"""tiny-sd-v2: selectable beside v1, the same LoRA layers, a base that knows the emoji domain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_wise.factory import emoji_sources as es
from lora_wise.factory.backbones import load_backbone
from lora_wise.factory.backbones.tiny_sd_v2 import CANDIDATES, build_candidate
from lora_wise.factory.train import target_module_names

FIXTURE = Path(__file__).parent / "data" / "emoji" / "emoji-datasource-google-16.0.0-mini.tgz"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def test_v2_is_selectable_and_has_v1s_lora_layers():
    v1, v2 = load_backbone("tiny-sd"), load_backbone("tiny-sd-v2")
    assert v2.name == "tiny-sd-v2" and v2.resolution == v1.resolution == 64
    names = target_module_names(v2.unet, TARGETS)
    assert len(names) == 128 and names == target_module_names(v1.unet, TARGETS)
    assert not torch.equal(v1.unet.conv_in.weight, v2.unet.conv_in.weight)  # a different base
    e1, _ = v1.encode_prompt("a photo of sks animal")
    e2, _ = v2.encode_prompt("a photo of sks animal")
    assert torch.equal(e1, e2)  # v1's text encoder, shared


@torch.no_grad()
def test_v2_vae_reconstructs_emoji_far_better_than_v1s():
    # fixture images are Noto emoji of benchmark subcategories: never in v2's pre-training pool
    images, _ = es.decode_tarball(FIXTURE, es.SOURCES["noto"])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    err = {}
    for name in ("tiny-sd", "tiny-sd-v2"):
        vae = load_backbone(name).vae
        err[name] = float((vae.decode(vae.encode(x).latent_dist.mean).sample - x).pow(2).mean())
    assert err["tiny-sd-v2"] < err["tiny-sd"] / 3, err


@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_candidates_build_with_sd15_layer_names(candidate):
    bb = build_candidate(candidate)
    assert len(target_module_names(bb.unet, TARGETS)) == 128
    latent = bb.unet.config.sample_size
    assert bb.resolution == 4 * latent
    with torch.no_grad():
        z, _ = bb.encode_images(torch.zeros(1, 3, bb.resolution, bb.resolution))
    assert z.shape[-1] == latent


def test_packaged_backbones_record_which_weights_they_loaded():
    """Two pre-trainings of one backbone name must be told apart: the digest covers every file loaded."""
    import hashlib

    from lora_wise._files import sha256_file
    from lora_wise.factory.backbones import tiny_sd, tiny_sd_v2

    files = sorted(
        [*tiny_sd_v2.data_dir().glob("*.safetensors"), tiny_sd.data_dir() / "text_encoder.safetensors"]
    )
    want = hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()
    v2, v1 = load_backbone("tiny-sd-v2"), load_backbone("tiny-sd")
    assert v2.extra["weights_sha256"] == want
    assert v1.extra["weights_sha256"] not in (None, want)
