"""A stack of many models' spectra with their labels: what estimators fit and evaluate on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lora_wise.spectra.compute import Spectra

MATRIX_KINDS = ("a", "b", "ba")


@dataclass
class SpectraTable:
    """N model snapshots × L layers (in the order of ``layers``) × ``width`` singular values."""

    layers: list[str]
    a: np.ndarray  # (N, L, W)
    b: np.ndarray  # (N, L, W)
    ba: np.ndarray  # (N, L, W)
    fro: np.ndarray  # (N, L)
    size: np.ndarray  # (N,) int: the true fine-tuning dataset size
    micro_dataset: np.ndarray  # (N,) str: the concept, the unit of train/test splits
    step: np.ndarray  # (N,) int: training step of the snapshot
    rank: np.ndarray  # (N,) int
    backbone: np.ndarray  # (N,) str
    model_id: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return int(self.size.shape[0])

    def matrix(self, kind: str) -> np.ndarray:
        """(N, L, W) for a/b/ba, (N, L, 1) for fro."""
        if kind == "fro":
            return self.fro[:, :, None]
        return getattr(self, kind)

    def subset(self, mask: np.ndarray) -> SpectraTable:
        mask = np.asarray(mask)
        return SpectraTable(
            self.layers,
            **{
                k: getattr(self, k)[mask]
                for k in ("a", "b", "ba", "fro", "size", "micro_dataset", "step", "rank", "backbone", "model_id")
            },
        )

    @classmethod
    def from_spectra(cls, items: list[tuple[Spectra, dict]], layers: list[str] | None = None) -> SpectraTable:
        """Stack spectra; each dict holds size, micro_dataset, step, rank, backbone, model_id."""
        layers = layers or items[0][0].layers
        width = max(s.width for s, _ in items)
        aligned = [s.align(layers, width) for s, _ in items]
        meta = [m for _, m in items]
        return cls(
            layers=list(layers),
            a=np.stack([s.a for s in aligned]),
            b=np.stack([s.b for s in aligned]),
            ba=np.stack([s.ba for s in aligned]),
            fro=np.stack([s.fro for s in aligned]),
            size=np.array([m["size"] for m in meta], dtype=np.int64),
            micro_dataset=np.array([m["micro_dataset"] for m in meta]),
            step=np.array([m.get("step", 0) for m in meta], dtype=np.int64),
            rank=np.array([m.get("rank", width) for m in meta], dtype=np.int64),
            backbone=np.array([m.get("backbone", "unknown") for m in meta]),
            model_id=np.array([m.get("model_id", "") for m in meta]),
        )
