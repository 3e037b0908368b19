"""Per-layer singular-value spectra of a LoRA: the only input the estimators see.

For a low-rank layer with B (d×r) and A (r×k), σ(scale·B·A) is computed without forming
the d×k product: QR-factor B = Q_B R_B and Aᵀ = Q_A R_A, then σ(B·A) = σ(R_B R_Aᵀ), an r×r
SVD (cost O((d+k) r²), exact, deterministic). The same triangular factors give σ(B) = σ(R_B)
and σ(A) = σ(R_A). Layers with equal shapes are stacked and factored in one batched LAPACK
call, so the cost is a handful of calls rather than one per layer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .weights import LoraLayer, LoraWeights


def natural_key(name: str) -> list:
    """Sort key that orders ``down_blocks.10`` after ``down_blocks.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class Spectra:
    """Spectra of every layer in a fixed order (natural sort of canonical names).

    Arrays have one row per layer and ``width`` columns, singular values descending,
    zero-padded past a layer's own rank (exact: those singular values are zero).
    ``a`` and ``b`` are zero for dense layers (LoHa, LoKr), whose ``low_rank`` flag is False;
    their ``ba`` row holds the top ``width`` singular values of the dense ΔW.
    """

    layers: list[str]
    a: np.ndarray  # (L, width) σ(A)
    b: np.ndarray  # (L, width) σ(B)
    ba: np.ndarray  # (L, width) σ(scale·B·A)
    fro: np.ndarray  # (L,) ‖scale·B·A‖_F
    low_rank: np.ndarray  # (L,) bool

    @property
    def width(self) -> int:
        return int(self.ba.shape[1])

    def matrix(self, kind: str) -> np.ndarray:
        """``kind`` in {"a", "b", "ba", "fro"}; ``fro`` comes back as an (L, 1) column."""
        if kind == "fro":
            return self.fro[:, None]
        return {"a": self.a, "b": self.b, "ba": self.ba}[kind]

    def align(self, layers: Sequence[str], width: int | None = None) -> Spectra:
        """The same spectra re-ordered to ``layers`` and cut or zero-padded to ``width``.

        Layers this LoRA lacks come back as NaN rows so that callers can see (and count)
        what is missing instead of silently comparing zeros.
        """
        width = self.width if width is None else width
        index = {name: i for i, name in enumerate(self.layers)}
        out = {k: np.full((len(layers), width), np.nan) for k in ("a", "b", "ba")}
        fro = np.full(len(layers), np.nan)
        low = np.zeros(len(layers), dtype=bool)
        w = min(width, self.width)
        for row, name in enumerate(layers):
            i = index.get(name)
            if i is None:
                continue
            for k in out:
                out[k][row] = 0.0
                out[k][row, :w] = getattr(self, k)[i, :w]
            fro[row] = self.fro[i]
            low[row] = self.low_rank[i]
        return Spectra(list(layers), out["a"], out["b"], out["ba"], fro, low)


def _low_rank_group(ups: np.ndarray, downs: np.ndarray, scales: np.ndarray):
    """σ(B), σ(A), σ(scale·B·A) for a stack of same-shaped layers (n, d, r) and (n, r, k)."""
    r_b = np.linalg.qr(ups, mode="r")  # (n, min(d,r), r)
    r_a = np.linalg.qr(np.swapaxes(downs, 1, 2), mode="r")  # (n, min(k,r), r)
    sv_b = np.linalg.svd(r_b, compute_uv=False)
    sv_a = np.linalg.svd(r_a, compute_uv=False)
    sv_ba = np.linalg.svd(r_b @ np.swapaxes(r_a, 1, 2), compute_uv=False)
    return sv_a, sv_b, sv_ba * np.abs(scales)[:, None]


def _dense_singular_values(layer: LoraLayer) -> np.ndarray:
    delta = np.asarray(layer.delta, dtype=np.float64).reshape(layer.delta.shape[0], -1)
    return np.linalg.svd(delta * layer.scale, compute_uv=False)


def _fill(row: np.ndarray, values: np.ndarray) -> None:
    n = min(row.shape[0], values.shape[0])
    row[:n] = values[:n]


def compute_spectra(weights: LoraWeights, width: int | None = None) -> Spectra:
    """Spectra of every layer of ``weights``.

    ``width`` defaults to the largest rank among low-rank layers (or 64 if the LoRA is
    all dense); dense layers keep their top ``width`` singular values.
    """
    layers = sorted(weights.layers.values(), key=lambda layer: natural_key(layer.name))
    ranks = [layer.rank for layer in layers if layer.low_rank]
    width = width or (max(ranks) if ranks else 64)
    n = len(layers)
    a, b, ba = (np.zeros((n, width)) for _ in range(3))
    low = np.array([layer.low_rank for layer in layers], dtype=bool)

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, layer in enumerate(layers):
        if layer.low_rank:
            groups[(layer.up.shape, layer.down.shape)].append(i)
        else:
            _fill(ba[i], _dense_singular_values(layer))
    for members in groups.values():
        ups = np.stack([layers[i].up for i in members]).astype(np.float64)
        downs = np.stack([layers[i].down for i in members]).astype(np.float64)
        scales = np.array([layers[i].scale for i in members], dtype=np.float64)
        for j, (sa, sb, sba) in enumerate(zip(*_low_rank_group(ups, downs, scales), strict=True)):
            i = members[j]
            _fill(a[i], sa)
            _fill(b[i], sb)
            _fill(ba[i], sba)
    fro = np.sqrt(np.sum(ba**2, axis=1))
    # Dense layers may have more than ``width`` singular values: their norm needs all of them.
    for i, layer in enumerate(layers):
        if not layer.low_rank:
            fro[i] = float(np.linalg.norm(np.asarray(layer.delta, dtype=np.float64) * layer.scale))
    return Spectra([layer.name for layer in layers], a, b, ba, fro, low)
