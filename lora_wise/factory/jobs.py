"""What one benchmark model is: a training job of the LoRA-WiSE recipe at a known dataset size.

The recipe is the paper's (DSiRe, Tables 10-11): DreamBooth-LoRA on the UNet attention
projections, lora_alpha = rank, lr 1e-4 constant, batch 1 (8 for the high range), seed 0 for
every model so that only the images differ, snapshots every 100 steps.

Two optional defences (``lora_wise.factory.defences``): ``augment="flip"`` and DP-SGD
(``dp_epsilon``, ``dp_delta``, ``dp_clip``). A job with neither is exactly today's job: the same
name, id and sidecar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lora_wise.paper import TARGET_MODULES

AUGMENTS = ("flip",)
DEFAULT_DP_DELTA = 1e-5
DEFAULT_DP_CLIP = 1.0
DP_KEYS = ("dp_epsilon", "dp_delta", "dp_clip")


@dataclass(frozen=True)
class TrainJob:
    """One LoRA fine-tune. ``job_id`` names its output folder and is stable across runs."""

    backbone: str  # a preset (tiny-sd, sd15, sd2, sdxl), a Hub id or a local folder
    range_name: str  # low / medium / high
    dataset_size: int
    micro_dataset: str  # e.g. "pool:digit-3", "folder:/data/cat", "imagenet:n01440764"
    rank: int = 8
    steps: int = 1400
    snapshot_every: int = 100
    batch_size: int = 1
    learning_rate: float = 1e-4
    seed: int = 0
    target_modules: tuple[str, ...] = TARGET_MODULES
    resolution: int | None = None  # None: the backbone's default
    augment: str | None = None  # "flip": each drawn image mirrored with probability 0.5
    dp_epsilon: float | None = None  # DP-SGD's target epsilon; None: no DP; inf: clipping, no noise
    dp_delta: float = DEFAULT_DP_DELTA
    dp_clip: float = DEFAULT_DP_CLIP  # the per-sample clipping norm C
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {self.augment!r}: expected one of {AUGMENTS} or None")
        if self.dp_epsilon is None:
            if (self.dp_delta, self.dp_clip) != (DEFAULT_DP_DELTA, DEFAULT_DP_CLIP):
                raise ValueError("dp_delta and dp_clip need dp_epsilon (DP-SGD is off without it)")
            return
        # floats from YAML ints and from the "inf" strings of to_dict: one value, one name
        for key in DP_KEYS:
            object.__setattr__(self, key, float(getattr(self, key)))
        if not (self.dp_epsilon > 0 and 0 < self.dp_delta < 1 and 0 < self.dp_clip < math.inf):
            raise ValueError("DP-SGD needs dp_epsilon > 0 (inf: no noise), 0 < dp_delta < 1, 0 < dp_clip")

    @property
    def is_dp(self) -> bool:
        return self.dp_epsilon is not None

    @property
    def defence_suffix(self) -> str:
        """``-flip``, ``-dp10``, ``-flip-dp1``, ``-dp1c0.5d1e-06`` (C, delta not default); empty without."""
        parts = [self.augment] if self.augment else []
        if self.is_dp:
            dp = f"dp{self.dp_epsilon:g}"
            dp += f"c{self.dp_clip:g}" if self.dp_clip != DEFAULT_DP_CLIP else ""
            dp += f"d{self.dp_delta:g}" if self.dp_delta != DEFAULT_DP_DELTA else ""
            parts.append(dp)
        return "".join(f"-{p}" for p in parts)

    @property
    def alpha(self) -> float:
        return float(self.rank)

    @property
    def config_name(self) -> str:
        """The dataset config this job belongs to, e.g. ``medium-tiny_sd-r8``, ``medium-tiny_sd-r8-flip``."""
        return f"{self.range_name}-{backbone_slug(self.backbone)}-r{self.rank}{self.defence_suffix}"

    @property
    def job_id(self) -> str:
        micro = self.micro_dataset.replace(":", "-").replace("/", "_")
        return f"{self.config_name}/{micro}/n{self.dataset_size:04d}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        out["alpha"] = self.alpha
        # undefended jobs keep today's sidecars byte for byte: their defence keys are left out
        if self.augment is None:
            del out["augment"]
        if not self.is_dp:
            for key in DP_KEYS:
                del out[key]
        elif math.isinf(self.dp_epsilon):
            out["dp_epsilon"] = "inf"  # JSON has no infinity; __post_init__ reads it back
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainJob:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["target_modules"] = tuple(fields.get("target_modules", TARGET_MODULES))
        return cls(**fields)


def backbone_slug(backbone: str) -> str:
    """``tiny-sd`` -> ``tiny_sd``; ``runwayml/stable-diffusion-v1-5`` -> ``stable_diffusion_v1_5``."""
    tail = backbone.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() else "_" for c in tail).strip("_").lower()
