"""Per-layer alpha and scale: ΔW = scale · B·A.

kohya / LyCORIS: ``scale = alpha / dim`` with the ``.alpha`` tensor, and a missing alpha means
alpha = dim. PEFT (``adapter_config.json``, or the ``lora_adapter_metadata`` diffusers writes):
``lora_alpha / r``, per-module overrides in ``alpha_pattern``, ``lora_alpha / √r`` with
``use_rslora``. Plain diffusers files carry no alpha: scale 1 unless network alphas say otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lora_wise.errors import InvalidLoraFile

#: Families whose convention is "missing alpha means alpha = dim".
KOHYA_FAMILIES = {"kohya", "mangled"}


@dataclass
class AlphaConfig:
    """The alpha-related fields of a PEFT ``LoraConfig`` (what the scale depends on)."""

    r: int | None = None
    lora_alpha: float | None = None
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    rank_pattern: dict[str, int] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> AlphaConfig:
        """Build from a PEFT config dict; wrong types are a malformed input, not a crash."""
        try:
            r = data.get("r")
            alpha = data.get("lora_alpha")
            return cls(
                r=int(r) if r is not None else None,
                lora_alpha=float(alpha) if alpha is not None else None,
                alpha_pattern={str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
                rank_pattern={str(k): int(v) for k, v in (data.get("rank_pattern") or {}).items()},
                use_rslora=bool(data.get("use_rslora", False)),
                use_dora=bool(data.get("use_dora", False)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidLoraFile(f"{source}: malformed LoRA config ({exc})") from None

    def alpha_for(self, path: str) -> float | None:
        """``alpha_pattern`` entry matching ``path`` the way PEFT matches it, else ``lora_alpha``."""
        for pattern, alpha in self.alpha_pattern.items():
            if len(pattern) > 256:  # PEFT keys are module names; a long regex is a hostile config
                raise InvalidLoraFile(f"alpha_pattern key of {len(pattern)} characters in the LoRA config")
            try:
                if re.match(rf"(.*\.)?({pattern})$", path):
                    return alpha
            except re.error:
                raise InvalidLoraFile(f"invalid alpha_pattern key {pattern[:40]!r} in the LoRA config") from None
        return self.lora_alpha


@dataclass
class ScalePolicy:
    """Resolves (alpha, scale) for a layer from its alpha tensor, configs and file family.

    ``configs`` maps a component (``unet``, ``text_encoder``...) or ``*`` (all) to its config.
    """

    configs: dict[str, AlphaConfig] = field(default_factory=dict)

    def config_for(self, name: str) -> AlphaConfig | None:
        return self.configs.get(name.split(".", 1)[0]) or self.configs.get("*")

    def resolve(self, name: str, rank: int, alpha_value: float | None, family: str) -> tuple[float | None, float]:
        if rank <= 0:
            return alpha_value, 1.0
        if alpha_value is not None:
            return alpha_value, alpha_value / rank
        config = self.config_for(name)
        if config is not None and family not in KOHYA_FAMILIES:
            alpha = config.alpha_for(name.split(".", 1)[1] if "." in name else name)
            if alpha is None:
                return None, 1.0
            return alpha, alpha / (math.sqrt(rank) if config.use_rslora else rank)
        if family in KOHYA_FAMILIES:
            return float(rank), 1.0
        return None, 1.0
