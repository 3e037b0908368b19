"""The canonical in-memory LoRA: what every reader returns, whatever the file format.

Downstream code (spectra, estimators, the scanner) never looks at raw file keys: it sees
layers under canonical diffusers module paths such as
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Layer kinds. ``lora`` and ``conv`` are low rank (A/B given); the others carry a dense delta.
LOW_RANK_KINDS = ("lora", "conv", "dora")
DENSE_KINDS = ("loha", "lokr", "full")


@dataclass
class LoraLayer:
    """One adapted module.

    ``down`` is A with shape (r, k) and ``up`` is B with shape (d, r); conv kernels are
    flattened to those 2-D shapes (A: (r, in*kh*kw), B: (out, r)). The effective update is
    ``delta_w = scale * up @ down``. Dense kinds (LoHa, LoKr) set ``delta`` instead and leave
    ``down``/``up`` as None. Arrays are float32 (the file's precision is kept in
    ``LoraWeights.dtype``); spectra are computed in float64.
    """

    name: str
    kind: str = "lora"
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    alpha: float | None = None
    scale: float = 1.0
    delta: np.ndarray | None = None
    dora_scale: np.ndarray | None = None

    @property
    def rank(self) -> int:
        if self.down is not None:
            return int(self.down.shape[0])
        return 0

    @property
    def low_rank(self) -> bool:
        return self.kind in LOW_RANK_KINDS and self.down is not None

    @property
    def component(self) -> str:
        """``unet``, ``text_encoder``, ``text_encoder_2``, ``transformer``...: the first path part."""
        return self.name.split(".", 1)[0]


@dataclass
class Backbone:
    """Which base model the LoRA was trained on, and why we think so."""

    name: str = "unknown"  # sd15, sd2, sdxl, flux, sd3, tiny-sd, unknown
    evidence: list[str] = field(default_factory=list)


@dataclass
class DeclaredTraining:
    """Training facts the file itself declares (kohya ``ss_*``, ``modelspec.*``, PEFT config).

    Every field is optional: absent means the file does not say. ``unique_images`` is the
    number of distinct training images (Σ img_count over non-regularisation dataset dirs),
    not ``ss_num_train_images``, which counts repeats.
    """

    source: str = ""  # "kohya", "modelspec", "peft", "lora-wise", or "+"-joined
    unique_images: int | None = None
    num_train_images: int | None = None  # with repeats, as kohya counts them
    num_reg_images: int | None = None
    repeats: dict[str, int] | None = None  # dataset dir -> n_repeats
    steps: int | None = None
    max_train_steps: int | None = None
    epochs: int | None = None
    epoch: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    network_module: str | None = None
    network_dim: int | None = None
    network_alpha: float | None = None
    base_model: str | None = None
    base_model_version: str | None = None
    architecture: str | None = None
    title: str | None = None
    trigger_phrase: str | None = None
    target_modules: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [], "")}


@dataclass
class LoraWeights:
    """A whole LoRA in canonical form."""

    layers: dict[str, LoraLayer]
    format: str  # peft, diffusers, diffusers-old, kohya, locon, loha, lokr, dora, cloneofsimo, mangled, ...
    backbone: Backbone = field(default_factory=Backbone)
    declared: DeclaredTraining | None = None
    dtype: str = "F32"  # the dominant tensor dtype in the file: F32, F16, BF16
    header_metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # declared vs weights: findings (lora-scan exits 1)

    @property
    def rank(self) -> int | None:
        """The most common rank over low-rank layers (None if there is none)."""
        ranks = [layer.rank for layer in self.layers.values() if layer.low_rank]
        if not ranks:
            return None
        values, counts = np.unique(ranks, return_counts=True)
        return int(values[np.argmax(counts)])

    @property
    def components(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers.values():
            out[layer.component] = out.get(layer.component, 0) + 1
        return dict(sorted(out.items()))

    def low_rank_layers(self) -> list[LoraLayer]:
        return [layer for name, layer in sorted(self.layers.items()) if layer.low_rank]
