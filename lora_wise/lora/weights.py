"""The canonical in-memory LoRA: what every reader returns, whatever the file format.

Downstream code (spectra, estimators, the scanner) never looks at raw file keys: it sees
layers under canonical diffusers module paths such as
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Layer kinds. ``lora``, ``conv`` and ``dora`` are low rank (A/B given). ``loha``, ``lokr`` and
#: ``full`` (LoCon with a Tucker core) keep their LyCORIS factors in ``factors``; a hand-built
#: dense layer may instead set ``delta``.
LOW_RANK_KINDS = ("lora", "conv", "dora")

#: Cap on the elements of any matrix built from a file's factors (a dense ΔW, a LoHa
#: face-splitting factor, a Tucker product): 2**26 float64 values are 512 MiB. Checked from
#: shapes alone, before anything is allocated, so a small hostile file cannot ask for more.
MAX_DENSE_ELEMENTS = 1 << 26

#: Cap on the flops of one layer's exact spectrum where it is not a plain LoRA product (a LoHa
#: layer's Gram or dense SVD): about 3·10¹⁰, some seconds. Real LoHa layers (SDXL, dim 64,
#: 3×3 convs of 1280 channels) need under 2·10¹⁰.
MAX_SVD_WORK = 1 << 35


@dataclass
class Factor:
    """One matrix of a LyCORIS layer, either ``up @ down`` (low rank) or ``up`` itself (``down`` None)."""

    up: np.ndarray
    down: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.up.shape[0]), int(self.up.shape[1] if self.down is None else self.down.shape[1]))

    @property
    def inner(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])

    def dense(self) -> np.ndarray:
        up = self.up.astype(np.float64)
        return up if self.down is None else up @ self.down.astype(np.float64)


@dataclass
class LoraLayer:
    """One adapted module.

    ``down`` is A with shape (r, k) and ``up`` is B with shape (d, r); conv kernels are
    flattened to those 2-D shapes (A: (r, in*kh*kw), B: (out, r)). The effective update is
    ``delta_w = scale * up @ down``. LyCORIS kinds keep their factors, never a dense ΔW:
    ``loha``: ΔW = scale · F1 ⊙ F2; ``lokr``: ΔW = scale · kron(F1, F2); ``full``: ΔW = scale · F1.
    ``dim`` is the declared inner dimension (LyCORIS ``dim``), the layer's rank for reporting.
    Arrays are float32 (the file's precision is kept in ``LoraWeights.dtype``); spectra are
    computed in float64.
    """

    name: str
    kind: str = "lora"
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    alpha: float | None = None
    scale: float = 1.0
    delta: np.ndarray | None = None
    dora_scale: np.ndarray | None = None
    factors: tuple[Factor, ...] = ()
    dim: int | None = None

    @property
    def rank(self) -> int:
        if self.dim is not None:
            return self.dim
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

    @property
    def shape(self) -> tuple[int, int]:
        """(d, k) of the flattened ΔW."""
        if self.down is not None and self.up is not None:
            return int(self.up.shape[0]), int(self.down.shape[1])
        if self.delta is not None:
            return int(self.delta.shape[0]), int(self.delta.size // max(self.delta.shape[0], 1))
        if self.kind == "lokr":
            (d1, k1), (d2, k2) = (f.shape for f in self.factors)
            return d1 * d2, k1 * k2
        return self.factors[0].shape

    def dense(self) -> np.ndarray:
        """The unscaled ΔW in float64, built on demand (tests and small tools; spectra never need it)."""
        if self.low_rank:
            return self.up.astype(np.float64) @ self.down.astype(np.float64)
        if self.delta is not None:
            return np.asarray(self.delta, dtype=np.float64).reshape(self.delta.shape[0], -1)
        d, k = self.shape
        if d * k > MAX_DENSE_ELEMENTS:
            raise ValueError(f"{self.name}: dense ΔW of {d}x{k} exceeds the {MAX_DENSE_ELEMENTS}-element cap")
        if self.kind == "loha":
            return self.factors[0].dense() * self.factors[1].dense()
        if self.kind == "lokr":
            return np.kron(self.factors[0].dense(), self.factors[1].dense())
        return self.factors[0].dense()


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
    task_type: str | None = None  # PEFT task_type: CAUSAL_LM, SEQ_2_SEQ_LM... (language models only)
    optimizer: str | None = None
    lr_scheduler: str | None = None
    output_name: str | None = None
    resolution: str | None = None  # as declared, e.g. "(1024, 1024)"
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    clip_skip: int | None = None
    tag_frequency: dict[str, dict[str, int]] | None = None  # dataset dir -> tag -> count
    top_tags: dict[str, list[str]] | None = None  # dataset dir -> most frequent tags first
    buckets: dict[str, Any] | None = None  # aspect-ratio bucketing settings and bucket_info
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # declared values that were impossible and left out

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, [], "") and k != "warnings"}


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
        """The most common rank (LyCORIS: declared dim) over the layers that have one (None if none)."""
        ranks = [layer.rank for layer in self.layers.values() if layer.rank > 0]
        if not ranks:
            return None
        values, counts = np.unique(ranks, return_counts=True)
        return int(values[np.argmax(counts)])

    @property
    def layer_count(self) -> int:
        """Layers with an exact spectrum: every LoRA, LoCon, DoRA, LoHa and LoKr layer."""
        return len(self.layers)

    @property
    def components(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for layer in self.layers.values():
            out[layer.component] = out.get(layer.component, 0) + 1
        return dict(sorted(out.items()))
