"""The torch-free kohya key port gives diffusers' own converters' answer on real kohya names."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from diffusers.loaders.lora_conversion_utils import (
    _convert_text_encoder_lora_key,
    _convert_unet_lora_key,
    _maybe_map_sgm_blocks_to_diffusers,
)
from reader_helpers import kohya_state

from lora_wise.lora.formats.kohya_keys import convert_text_encoder_key, convert_unet_key, map_sgm_blocks

ATTN = [
    f"transformer_blocks_{t}_{a}_{p}"
    for t in (0, 1)
    for a in ("attn1", "attn2")
    for p in ("to_q", "to_k", "to_v", "to_out_0")
] + ["proj_in", "proj_out", "transformer_blocks_0_ff_net_0_proj", "transformer_blocks_0_ff_net_2"]
RESNET = ["in_layers_2", "emb_layers_1", "out_layers_3", "skip_connection"]


def _sdxl_sgm_modules() -> list[str]:
    """Every module name kohya's sgm UNet (SDXL) gives LoRA/LoCon layers, and the odd ones out."""
    names = ["input_blocks_0_0", "out_2", "time_embed_0", "time_embed_2", "label_emb_0_0", "label_emb_0_2"]
    for i in range(1, 9):
        names += [f"input_blocks_{i}_0_{r}" for r in RESNET]
        if i in (3, 6):
            names.append(f"input_blocks_{i}_0_op")
        else:
            names += [f"input_blocks_{i}_1_{a}" for a in ATTN]
    names += [f"middle_block_{m}_{r}" for m in (0, 2) for r in RESNET] + [f"middle_block_1_{a}" for a in ATTN]
    for i in range(9):
        names += [f"output_blocks_{i}_0_{r}" for r in RESNET] + [f"output_blocks_{i}_1_{a}" for a in ATTN]
        if i in (2, 5):
            names.append(f"output_blocks_{i}_2_conv")
    return [f"lora_unet_{n}.lora_down.weight" for n in names]


def _sd15_modules() -> list[str]:
    return sorted(
        k for k in kohya_state(rank=2, text=True) if k.startswith("lora_unet_") and "lora_down" in k
    )


@pytest.mark.parametrize("keys", [_sdxl_sgm_modules(), _sd15_modules()], ids=["sdxl-sgm", "sd15"])
def test_unet_names_match_diffusers(keys):
    theirs = _maybe_map_sgm_blocks_to_diffusers({k: k for k in keys}, SimpleNamespace(layers_per_block=2))
    ours = map_sgm_blocks(keys)
    assert ours == theirs  # {new key: old key}, both ways
    for key in ours:
        assert convert_unet_key(key) == _convert_unet_lora_key(key), key


def test_mixed_sgm_and_diffusers_names_drop_the_sgm_ones_as_diffusers_does():
    keys = _sdxl_sgm_modules()[:20] + _sd15_modules()[:20]
    theirs = _maybe_map_sgm_blocks_to_diffusers({k: k for k in keys}, SimpleNamespace(layers_per_block=2))
    assert map_sgm_blocks(keys) == theirs


@pytest.mark.parametrize("prefix", ["lora_te_", "lora_te1_", "lora_te2_"])
def test_text_encoder_names_match_diffusers(prefix):
    modules = [
        f"text_model_encoder_layers_{i}_{p}"
        for i in (0, 11, 31)
        for p in (
            "self_attn_q_proj",
            "self_attn_k_proj",
            "self_attn_v_proj",
            "self_attn_out_proj",
            "mlp_fc1",
            "mlp_fc2",
        )
    ] + ["text_projection"]
    for module in modules:
        for role in ("lora_down.weight", "lora_up.weight", "lora.down.weight", "alpha"):
            key = f"{prefix}{module}.{role}"
            lora_name = f"{prefix}{module}"
            assert convert_text_encoder_key(key, lora_name) == _convert_text_encoder_lora_key(
                key, lora_name
            ), key
