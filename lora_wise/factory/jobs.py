"""What one benchmark model is: a training job of the LoRA-WiSE recipe at a known dataset size.

The recipe is the paper's (DSiRe, Tables 10-11): DreamBooth-LoRA on the UNet attention
projections, lora_alpha = rank, lr 1e-4 constant, batch 1 (8 for the high range), seed 0 for
every model so that only the images differ, snapshots every 100 steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lora_wise.paper import TARGET_MODULES


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
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def alpha(self) -> float:
        return float(self.rank)

    @property
    def config_name(self) -> str:
        """The dataset config this job belongs to, e.g. ``medium-tiny_sd-r8``."""
        return f"{self.range_name}-{backbone_slug(self.backbone)}-r{self.rank}"

    @property
    def job_id(self) -> str:
        micro = self.micro_dataset.replace(":", "-").replace("/", "_")
        return f"{self.config_name}/{micro}/n{self.dataset_size:04d}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        out["alpha"] = self.alpha
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
