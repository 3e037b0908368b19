"""Split raw tensor keys into (module, role, family) and group them under canonical names.

Each family is recognised by the suffix that carries the role of a tensor:

- PEFT / current diffusers: ``<path>.lora_A.weight`` / ``.lora_B.weight`` (optionally with an
  adapter name), ``.lora_magnitude_vector`` (DoRA), ``.lora.down.weight``,
  ``.lora_linear_layer.down.weight``
- old diffusers attention processors: ``<path>.processor.to_q_lora.down.weight``
- kohya sd-scripts / LyCORIS: ``lora_unet_<path_with_underscores>.lora_down.weight``,
  ``.alpha``, ``.dora_scale``, ``.hada_w1_a``..., ``.lokr_w1``..., ``.lora_mid.weight``
- mangled: any of the above glued with ``_`` instead of ``.`` (``..._to_k_lora_down.weight``)
  or with a doubled prefix (``lora_unet_unet_down_blocks_...``); paired by suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.formats.naming import (
    BIG_MODEL_ROOTS,
    KOHYA_PREFIXES,
    TEXT_COMPONENTS,
    canonical_dotted,
    kohya_text_path,
    kohya_unet_paths,
    normalize_dotted,
)

_LYCORIS_ROLES = (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1_a", "lokr_w1_b", "lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_w2", "lokr_t2",
)  # fmt: skip

# (pattern on the whole key, role or None = taken from group 2, family). First match wins.
_PATTERNS: list[tuple[re.Pattern, str | None, str]] = [
    (re.compile(r"(.+)\.lora_A(?:\.[\w-]+)?\.weight"), "down", "peft"),
    (re.compile(r"(.+)\.lora_B(?:\.[\w-]+)?\.weight"), "up", "peft"),
    (re.compile(r"(.+)\.lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?"), "dora_scale", "peft"),
    (re.compile(r"(.+)\.lora_linear_layer\.(down|up)\.weight"), None, "diffusers"),
    (re.compile(r"(.+_lora)\.(down|up)\.weight"), None, "diffusers-old"),
    (re.compile(r"(.+)\.lora\.(down|up)\.weight"), None, "diffusers"),
    (re.compile(r"(.+)\.lora_(down|up)\.weight"), None, "kohya"),
    (re.compile(r"(.+)\.lora_(mid)\.weight"), None, "kohya"),
    (re.compile(r"(.+)\.(" + "|".join(_LYCORIS_ROLES) + r")"), None, "kohya"),
    (re.compile(r"(.+)\.(alpha|dora_scale)"), None, ""),  # neutral: the weights decide the family
    (re.compile(r"(.+?)[._]lora[._](down|up)(?:[._]weight)?"), None, "mangled"),
    (re.compile(r"(.+?)[._]lora_(A|B)(?:[._]weight)?"), None, "mangled"),
]
_AB = {"A": "down", "B": "up"}
_PREFIXES_LONGEST_FIRST = sorted(KOHYA_PREFIXES, key=len, reverse=True)
_SGM_DOTTED = tuple(
    f"{prefix}{block}." for prefix in ("", "model.diffusion_model.", "diffusion_model.")
    for block in ("input_blocks", "middle_block", "output_blocks")
)  # fmt: skip


@dataclass
class Grouped:
    """Tensors grouped by canonical layer name: ``parts[name][role] = array``."""

    parts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    first_key: dict[str, str] = field(default_factory=dict)  # a raw key per layer, for messages
    families: set[str] = field(default_factory=set)
    family_of: dict[str, str] = field(default_factory=dict)  # per layer: what decides its alpha rule
    ignored: list[str] = field(default_factory=list)


def split_key(key: str) -> tuple[str, str, str] | None:
    """``(module, role, family)`` for a LoRA tensor key, None for anything else."""
    for pattern, role, family in _PATTERNS:
        match = pattern.fullmatch(key)
        if match:
            return match.group(1), role or _AB.get(match.group(2), match.group(2)), family
    return None


def _kohya_parts(module: str) -> tuple[str, str, bool] | None:
    """(component, rest, mangled) for kohya-style modules, None for dotted ones."""
    prefix = next((p for p in _PREFIXES_LONGEST_FIRST if module.startswith(p)), None)
    if prefix is not None:
        component, rest, mangled = KOHYA_PREFIXES[prefix], module[len(prefix) :], False
    elif "." not in module and module.startswith("unet_"):
        component, rest, mangled = "unet", module[len("unet_") :], True
    elif "." not in module and module.startswith("text_encoder_"):
        component, rest, mangled = "text_encoder", module[len("text_encoder_") :], True
    elif module.startswith(_SGM_DOTTED):
        # sgm block names spelled with dots (e.g. ``model.diffusion_model.input_blocks.4.1...``)
        path = module.removeprefix("model.diffusion_model.").removeprefix("diffusion_model.")
        component, rest, mangled = "unet", path.replace(".", "_"), False
    else:
        return None
    for doubled in ("unet_", "text_encoder_", "te_"):
        if rest.startswith(doubled) and not rest.startswith("text_model"):
            rest, mangled = rest[len(doubled) :], True
    if "." in rest:
        rest, mangled = rest.replace(".", "_"), True
    return component, rest, mangled


def canonical_names(modules: list[str]) -> tuple[dict[str, str], bool]:
    """Canonical name per raw module string; the flag says whether any name was mangled."""
    out: dict[str, str] = {}
    unet_rests: dict[str, list[tuple[str, str]]] = {}
    any_mangled = False
    for module in modules:
        parts = _kohya_parts(module)
        if parts is None:
            out[module] = canonical_dotted(module)
            continue
        component, rest, mangled = parts
        any_mangled |= mangled
        if component in TEXT_COMPONENTS:
            out[module] = normalize_dotted(component, kohya_text_path(rest))
        else:
            unet_rests.setdefault(rest, []).append((module, component))
    if unet_rests:
        # One call for all UNet names: the sgm block map needs to see every block at once.
        paths = kohya_unet_paths(list(unet_rests))
        for rest, owners in unet_rests.items():
            for module, component in owners:
                if rest.startswith(BIG_MODEL_ROOTS):
                    component = "transformer"  # Flux / SD3 kohya files still say lora_unet_
                out[module] = normalize_dotted(component, paths[rest])
    return out, any_mangled


def group_tensors(tensors: dict[str, np.ndarray], source: str) -> Grouped:
    """Group LoRA tensors by canonical layer; unknown keys are listed in ``ignored``."""
    grouped = Grouped()
    split: list[tuple[str, str, str, str]] = []
    for key in tensors:
        parsed = split_key(key)
        if parsed is None:
            grouped.ignored.append(key)
        else:
            split.append((key, *parsed))
    names, mangled = canonical_names(sorted({module for _, module, _, _ in split}))
    if mangled:
        grouped.families.add("mangled")
    for key, module, role, family in split:
        name = names[module]
        roles = grouped.parts.setdefault(name, {})
        if role in roles:
            raise InvalidLoraFile(f"{source}: two tensors give {role!r} of layer {name} (e.g. {key!r})")
        roles[role] = tensors[key]
        grouped.first_key.setdefault(name, key)
        if family and name not in grouped.family_of:
            kohya_named = family != "mangled" and _kohya_parts(module) is not None
            grouped.family_of[name] = "kohya" if kohya_named else family
            grouped.families.add(grouped.family_of[name])
    return grouped
