"""cloneofsimo ``lora_diffusion`` files: positional keys ``unet:N:down`` / ``unet:N:up``.

The file stores no module names, only positions in the order ``lora_diffusion`` walked the
model: every module of a target class (Attention, plus GEGLU by default for the UNet,
CLIPAttention for the text encoder) in ``model.modules()`` order, then its Linear children
in registration order. For SD1.x/SD2.x layouts that order is fixed, so we rebuild it here
from the layout instead of instantiating a model (which would cost seconds per file).
"""

from __future__ import annotations

import re

import numpy as np

from lora_wise.errors import InvalidLoraFile

_KEY = re.compile(r"(unet|text_encoder):(\d+):(up|down)")

# Transformer blocks of the SD1.x/SD2.x UNet in diffusers' module order (up blocks come before
# the mid block because UNet2DConditionModel registers ``up_blocks`` before ``mid_block``).
_SD_ATTENTIONS = (
    [f"down_blocks.{b}.attentions.{i}" for b in range(3) for i in range(2)]
    + [f"up_blocks.{b}.attentions.{i}" for b in range(1, 4) for i in range(3)]
    + ["mid_block.attentions.0"]
)
_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
_CLIP_ATTN = ("k_proj", "v_proj", "q_proj", "out_proj")  # CLIPAttention registration order


def is_cloneofsimo(keys: list[str]) -> bool:
    return any(_KEY.fullmatch(k) for k in keys)


def unet_order(with_geglu: bool) -> list[str]:
    names = []
    for block in _SD_ATTENTIONS:
        base = f"unet.{block}.transformer_blocks.0"
        names += [f"{base}.attn1.{p}" for p in _ATTN] + [f"{base}.attn2.{p}" for p in _ATTN]
        if with_geglu:
            names.append(f"{base}.ff.net.0.proj")
    return names


def text_encoder_order(n_layers: int) -> list[str]:
    return [
        f"text_encoder.text_model.encoder.layers.{i}.self_attn.{p}"
        for i in range(n_layers)
        for p in _CLIP_ATTN
    ]


def _names(component: str, count: int) -> list[str] | None:
    if component == "unet":
        for candidate in (unet_order(True), unet_order(False)):
            if len(candidate) == count:
                return candidate
        return None
    if count % 4 == 0:
        return text_encoder_order(count // 4)
    return None


def group_positional(
    tensors: dict[str, np.ndarray], source: str
) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """(parts by canonical name, warnings). Non-positional tensors (token embeddings) are skipped."""
    by_component: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    skipped = []
    for key, array in tensors.items():
        match = _KEY.fullmatch(key)
        if not match:
            skipped.append(key)
            continue
        component, index, role = match.group(1), int(match.group(2)), match.group(3)
        by_component.setdefault(component, {}).setdefault(index, {})[role] = array
    parts: dict[str, dict[str, np.ndarray]] = {}
    warnings = []
    if skipped:
        warnings.append(
            f"ignored {len(skipped)} non-LoRA tensors (e.g. {skipped[0]!r}, a learned token embedding)"
        )
    for component, positions in by_component.items():
        count = max(positions) + 1
        if len(positions) != count:  # unique non-negative indices: this means 0..count-1 exactly
            raise InvalidLoraFile(f"{source}: positional {component} layers are not numbered 0..{count - 1}")
        names = _names(component, count)
        if names is None:
            warnings.append(
                f"{count} positional {component} layers do not fit the SD1.x/SD2.x layout: named by position"
            )
            names = [f"{component}.position_{i}" for i in range(count)]
        for i, name in enumerate(names):
            parts[name] = positions[i]
    return parts, warnings
