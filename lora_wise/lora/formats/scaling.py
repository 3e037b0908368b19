"""Per-layer alpha and scale: ΔW = scale · B·A.

kohya / LyCORIS: ``scale = alpha / dim`` with the ``.alpha`` tensor, and a missing alpha means
alpha = dim. PEFT (``adapter_config.json``, or the ``lora_adapter_metadata`` diffusers writes):
``lora_alpha / r``, per-module overrides in ``alpha_pattern``, ``lora_alpha / √r`` with
``use_rslora``. Plain diffusers files carry no alpha: scale 1 unless network alphas say otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.formats.patterns import PatternMatcher

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

    def __post_init__(self) -> None:
        self._matcher = PatternMatcher(list(self.alpha_pattern))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> AlphaConfig:
        """Build from a PEFT config dict; wrong types or impossible numbers are a malformed input."""
        try:
            return cls(
                r=_number(data.get("r"), "r", integer=True),
                lora_alpha=_number(data.get("lora_alpha"), "lora_alpha"),
                alpha_pattern={
                    str(k): _number(v, f"alpha_pattern[{str(k)[:40]!r}]")
                    for k, v in _mapping(data, "alpha_pattern")
                },
                rank_pattern={
                    str(k): _number(v, f"rank_pattern[{str(k)[:40]!r}]", integer=True)
                    for k, v in _mapping(data, "rank_pattern")
                },
                use_rslora=bool(data.get("use_rslora", False)),
                use_dora=bool(data.get("use_dora", False)),
            )
        except InvalidLoraFile as exc:
            raise InvalidLoraFile(f"{source}: {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidLoraFile(f"{source}: malformed LoRA config ({exc})") from None

    def alpha_for(self, path: str) -> float | None:
        """``alpha_pattern`` entry matching ``path`` the way PEFT matches it, else ``lora_alpha``."""
        key = self._matcher.first_match(path)
        return self.alpha_pattern[key] if key is not None else self.lora_alpha


def _mapping(data: dict[str, Any], name: str) -> list[tuple[Any, Any]]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise InvalidLoraFile(f"malformed LoRA config ({name} is a {type(value).__name__}, not an object)")
    return list(value.items())


def _number(value: Any, name: str, integer: bool = False) -> Any:
    """A positive finite number (an int where PEFT wants one), None when absent; else a config error.

    ``1e400`` parses as infinity, ``NaN`` is valid JSON to Python: both would flow into every
    scale and from there into NaN or infinite spectra, so they stop here.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidLoraFile(f"malformed LoRA config ({name} = {str(value)[:20]!r} is not a number)")
    if not math.isfinite(value) or value <= 0 or (integer and value != int(value)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise InvalidLoraFile(f"malformed LoRA config ({name} = {value!r} is not {kind})")
    return int(value) if integer else float(value)


@dataclass
class ScalePolicy:
    """Resolves (alpha, scale) for a layer from its alpha tensor, configs and file family.

    ``configs`` maps a component (``unet``, ``text_encoder``...) or ``*`` (all) to its config.
    """

    configs: dict[str, AlphaConfig] = field(default_factory=dict)

    def config_for(self, name: str) -> AlphaConfig | None:
        return self.configs.get(name.split(".", 1)[0]) or self.configs.get("*")

    def resolve(
        self, name: str, rank: int, alpha_value: float | None, family: str
    ) -> tuple[float | None, float]:
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
