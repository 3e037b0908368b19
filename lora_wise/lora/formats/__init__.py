"""From raw tensors to canonical :class:`~lora_wise.lora.weights.LoraLayer` objects, for every family.

``keys`` splits and names raw keys (PEFT, diffusers, old processors, kohya/LyCORIS, mangled),
``cloneofsimo`` places positional keys, ``lowrank`` pairs A/B (LoRA, LoCon conv, DoRA),
``lycoris`` rebuilds LoHa/LoKr updates, ``scaling`` resolves alpha and scale per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lora_wise.errors import InvalidLoraFile, NoLoraWeightsError
from lora_wise.lora.formats.cloneofsimo import group_positional, is_cloneofsimo
from lora_wise.lora.formats.keys import group_tensors
from lora_wise.lora.formats.lowrank import low_rank_layer, tucker_layer
from lora_wise.lora.formats.lycoris import loha_layer, lokr_layer
from lora_wise.lora.formats.scaling import AlphaConfig, ScalePolicy
from lora_wise.lora.weights import LoraLayer

__all__ = ["AlphaConfig", "ParsedLora", "ScalePolicy", "parse_state_dict"]


@dataclass
class ParsedLora:
    format: str
    layers: dict[str, LoraLayer]
    warnings: list[str] = field(default_factory=list)


def _alpha_value(roles: dict[str, np.ndarray], name: str, source: str) -> float | None:
    alpha = roles.get("alpha")
    if alpha is None:
        return None
    if alpha.size != 1:
        raise InvalidLoraFile(
            f"{source}: layer {name}: alpha must be a scalar, got shape {list(alpha.shape)}"
        )
    return float(alpha.reshape(-1)[0])


def _build(
    name: str, roles: dict[str, np.ndarray], family: str, policy: ScalePolicy, source: str
) -> LoraLayer:
    alpha = _alpha_value(roles, name, source)
    if any(role.startswith("hada_") for role in roles):
        layer, dim = loha_layer(name, roles, source)
    elif any(role.startswith("lokr_") for role in roles):
        layer, dim = lokr_layer(name, roles, source)
    elif "mid" in roles and "down" in roles and "up" in roles:
        layer, dim = tucker_layer(name, roles, source), int(roles["down"].shape[0])
    elif "down" in roles or "up" in roles:
        layer = low_rank_layer(name, roles, source)
        dim = layer.rank
    else:
        raise InvalidLoraFile(
            f"{source}: layer {name}: {'/'.join(sorted(roles))} without any down/up weights"
        )
    if dim is None:  # LoKr with two full factors: LyCORIS applies no alpha scaling
        layer.alpha, layer.scale = alpha, 1.0
    else:
        layer.alpha, layer.scale = policy.resolve(name, dim, alpha, family)
    return layer


def _format_name(layers: dict[str, LoraLayer], families: set[str], peft_prefixed: bool) -> str:
    kinds = {layer.kind for layer in layers.values()}
    for kind in ("loha", "lokr", "dora"):
        if kind in kinds:
            return kind
    if "cloneofsimo" in families:
        return "cloneofsimo"
    if "mangled" in families:
        return "mangled"
    if "kohya" in families:
        return "locon" if kinds & {"conv", "full"} else "kohya"
    if "peft" in families and peft_prefixed:
        return "peft"
    if "diffusers-old" in families:
        return "diffusers-old"
    return "diffusers"


def _warnings(layers: dict[str, LoraLayer], ignored: list[str]) -> list[str]:
    out = []
    dense = sorted({layer.kind for layer in layers.values() if not layer.low_rank})
    if dense:
        n = sum(not layer.low_rank for layer in layers.values())
        out.append(
            f"{n} {'/'.join(dense)} layers are not LoRA products: their exact spectra come from their "
            "LyCORIS factors; σ(A) and σ(B) are zero for them"
        )
    if any(layer.kind == "dora" for layer in layers.values()):
        out.append(
            "DoRA: dora_scale kept, but spectra describe scale·B·A only "
            "(the magnitude step needs the base weight)"
        )
    if ignored:
        out.append(f"ignored {len(ignored)} non-LoRA tensors (e.g. {ignored[0]!r})")
    return out


def parse_state_dict(
    tensors: dict[str, np.ndarray], source: str, policy: ScalePolicy | None = None
) -> ParsedLora:
    """Canonical layers of a raw state dict; ``source`` names the file in error messages."""
    policy = policy or ScalePolicy()
    if is_cloneofsimo(list(tensors)):
        parts, warnings = group_positional(tensors, source)
        families, family_of, ignored, peft_prefixed = {"cloneofsimo"}, {}, [], False
    else:
        grouped = group_tensors(tensors, source)
        parts, warnings, ignored = grouped.parts, [], grouped.ignored
        families, family_of = grouped.families, grouped.family_of
        peft_prefixed = any(key.startswith("base_model.model.") for key in grouped.first_key.values())
    layers = {
        name: _build(name, roles, family_of.get(name, "diffusers"), policy, source)
        for name, roles in parts.items()
    }
    if not layers:
        raise NoLoraWeightsError(f"{source}: no LoRA layers found among {len(tensors)} tensors")
    fmt = _format_name(layers, families, peft_prefixed)
    return ParsedLora(fmt, layers, warnings + _warnings(layers, ignored))
