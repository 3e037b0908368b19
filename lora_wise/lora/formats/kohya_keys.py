"""kohya key names to diffusers module paths: a torch-free port of diffusers' converters.

``diffusers.loaders.lora_conversion_utils`` (``_maybe_map_sgm_blocks_to_diffusers``,
``_convert_unet_lora_key``, ``_convert_text_encoder_lora_key``, diffusers 0.42) holds the
mapping kohya files need, but importing that module imports torch, two seconds before a scan
has read a byte. Only the string logic is ported here, line for line, over key names instead
of state dicts; ``tests/test_kohya_keys.py`` checks that it gives diffusers' own answer for
every name of real SD1.5, SD2 and SDXL (sgm) files, so a diffusers update that changes the
mapping shows up as a failing test rather than as silent drift.
"""

from __future__ import annotations

import re

_SGM = ("input_blocks", "middle_block", "output_blocks")
_NOT_SGM = ("down_blocks", "mid_block", "up_blocks")
_INNER = ("resnets", "attentions", "upsamplers")


def map_sgm_blocks(
    keys: list[str], layers_per_block: int = 2, sep: str = "_", slice_pos: int = 5
) -> dict[str, str]:
    """``{new key: old key}`` as ``_maybe_map_sgm_blocks_to_diffusers`` renames a state dict's keys."""
    has_sgm = any(any(p in k for p in _SGM) for k in keys)
    has_plain = any(not any(p in k for p in _SGM) and any(p in k for p in _NOT_SGM) for k in keys)
    if has_sgm and has_plain:  # diffusers drops the sgm keys then
        return {k: k for k in keys if not any(p in k for p in _SGM)}
    if not has_sgm:
        return {k: k for k in keys}
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(sep)
        if "text" in key or not any(p in key for p in _SGM) or f"input_blocks{sep}0{sep}0" in key:
            out[key] = key
            continue
        block = int(parts[:slice_pos][-1])
        head, tail = parts[: slice_pos - 1], parts[slice_pos + 1 :]
        if _SGM[0] in key:
            block_id, in_block = (block - 1) // (layers_per_block + 1), (block - 1) % (layers_per_block + 1)
            inner = _INNER[int(parts[slice_pos])] if "op" not in key else "downsamplers"
            new = [str(block_id), inner, str(in_block) if "op" not in key else "0"]
        elif _SGM[1] in key:
            if block not in (0, 1, 2):
                raise ValueError(f"Invalid middle block id {block}.")
            new, tail = [["resnets", "0"], ["attentions", "0"], ["resnets", "1"]][block], parts[slice_pos:]
        else:
            block_id, in_block = block // (layers_per_block + 1), block % (layers_per_block + 1)
            inner_id = int(parts[slice_pos])
            new = [str(block_id), _INNER[inner_id], str(in_block) if inner_id < 2 else "0"]
        out[sep.join(head + new + tail)] = key
    return out


_UNET_REPLACEMENTS = (
    ("input.blocks.0.0", "conv_in"),
    ("out.2", "conv_out"),
    ("input.blocks", "down_blocks"),
    ("down.blocks", "down_blocks"),
    ("middle.block", "mid_block"),
    ("mid.block", "mid_block"),
    ("output.blocks", "up_blocks"),
    ("up.blocks", "up_blocks"),
    ("transformer.blocks", "transformer_blocks"),
    ("to.q.lora", "to_q_lora"),
    ("to.k.lora", "to_k_lora"),
    ("to.v.lora", "to_v_lora"),
    ("to.out.0.lora", "to_out_lora"),
    ("proj.in", "proj_in"),
    ("proj.out", "proj_out"),
    ("emb.layers", "time_emb_proj"),
    ("conv.in", "conv_in"),
    ("conv.out", "conv_out"),
    ("time.embed.0", "time_embedding.linear_1"),
    ("time.embed.2", "time_embedding.linear_2"),
    ("label.emb.0.0", "add_embedding.linear_1"),
    ("label.emb.0.2", "add_embedding.linear_2"),
    ("time.embedding.linear.1", "time_embedding.linear_1"),
    ("time.embedding.linear.2", "time_embedding.linear_2"),
)
_SDXL_INDEX = re.compile(r"\.\d+(?=\D*$)")  # linear in the name: one lookahead over non-digits


def convert_unet_key(key: str) -> str:
    """``_convert_unet_lora_key``: a kohya UNet key to its diffusers spelling."""
    name = key.replace("lora_unet_", "").replace("_", ".")
    for old, new in _UNET_REPLACEMENTS:
        name = name.replace(old, new)
    if "emb" in name and "time.emb.proj" not in name:
        name = _SDXL_INDEX.sub("", name, count=1)
    if ".in." in name:
        name = name.replace("in.layers.2", "conv1")
    if ".out." in name:
        name = name.replace("out.layers.3", "conv2")
    if "downsamplers" in name or "upsamplers" in name:
        name = name.replace("op", "conv")
    if "skip" in name:
        name = name.replace("skip.connection", "conv_shortcut")
    name = name.replace("time.emb.proj", "time_emb_proj").replace("conv.shortcut", "conv_shortcut")
    if "transformer_blocks" in name and ("attn1" in name or "attn2" in name):
        name = name.replace("attn1", "attn1.processor").replace("attn2", "attn2.processor")
    return name


_TEXT_REPLACEMENTS = (
    ("text.model", "text_model"),
    ("self.attn", "self_attn"),
    ("q.proj.lora", "to_q_lora"),
    ("k.proj.lora", "to_k_lora"),
    ("v.proj.lora", "to_v_lora"),
    ("out.proj.lora", "to_out_lora"),
    ("text.projection", "text_projection"),
)


def convert_text_encoder_key(key: str, lora_name: str) -> str:
    """``_convert_text_encoder_lora_key``: a kohya text-encoder key to its diffusers spelling."""
    if lora_name.startswith(("lora_te_", "lora_te1_")):
        prefix = "lora_te_" if lora_name.startswith("lora_te_") else "lora_te1_"
    else:
        prefix = "lora_te2_"
    name = key.replace(prefix, "").replace("_", ".")
    for old, new in _TEXT_REPLACEMENTS:
        name = name.replace(old, new)
    if "self_attn" not in name and "text_projection" not in name and "mlp" in name:
        name = name.replace(".lora.", ".lora_linear_layer.")
    return name
