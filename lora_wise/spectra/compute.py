"""Per-layer singular-value spectra of a LoRA: the only input the estimators see.

For a low-rank layer with B (d×r) and A (r×k), σ(scale·B·A) is computed without forming the
d×k product. Any r×r factor M_B with M_Bᵀ M_B = BᵀB (and M_A with M_Aᵀ M_A = A·Aᵀ) has
σ(B·A) = σ(M_B M_Aᵀ); we take Cholesky's Lᵀ of the r×r Gram matrix, or D^½Vᵀ from its
eigendecomposition when a layer is rank deficient (B is zero at initialisation). The cost is
one BLAS-3 product per matrix, O((d+k) r²), exact and deterministic; Householder QR of the
tall factors gives the same values at about twice the cost (scripts/bench_spectra.py).
Gram matrices square the condition number, so they are formed in float64: the absolute error
of σᵢ is about ε·σ₁²/σᵢ, i.e. 1e-8 relative for a singular value 10⁴ below the largest, far
inside what the estimators can tell apart (tests check 1e-6 against a dense SVD). The Gram
matrices' eigenvalues give σ(B) and σ(A). Layers of equal shape are stacked and handled in batches.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lora_wise.lora.weights import LoraLayer, LoraWeights


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


#: Layers converted to float64 at once: bounds the transient memory to a few layers' worth.
_CHUNK = 8


def _gram_root(gram: np.ndarray) -> np.ndarray:
    """A stack of r×r roots M with MᵀM = gram: Cholesky's Lᵀ when every Gram is positive
    definite (trained layers), else D^½Vᵀ from eigh, which also takes singular ones (B = 0)."""
    try:
        return np.swapaxes(np.linalg.cholesky(gram), 1, 2)
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(gram)
        return np.sqrt(np.clip(eigenvalues, 0.0, None))[:, :, None] * np.swapaxes(vectors, 1, 2)


def _gram_singular_values(gram: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[:, ::-1]


def _grams(layers: list[LoraLayer]) -> tuple[np.ndarray, np.ndarray]:
    """BᵀB and A·Aᵀ in float64 for same-shaped layers, converting a few layers at a time."""
    grams_b, grams_a = [], []
    for start in range(0, len(layers), _CHUNK):
        chunk = layers[start : start + _CHUNK]
        ups = np.stack([layer.up for layer in chunk]).astype(np.float64)
        downs = np.stack([layer.down for layer in chunk]).astype(np.float64)
        grams_b.append(np.swapaxes(ups, 1, 2) @ ups)
        grams_a.append(downs @ np.swapaxes(downs, 1, 2))
    return np.concatenate(grams_b), np.concatenate(grams_a)


def _low_rank_group(layers: list[LoraLayer]):
    """σ(A), σ(B), σ(scale·B·A) for same-shaped layers."""
    gram_b, gram_a = _grams(layers)
    sv_b, sv_a = _gram_singular_values(gram_b), _gram_singular_values(gram_a)
    sv_ba = np.linalg.svd(_gram_root(gram_b) @ np.swapaxes(_gram_root(gram_a), 1, 2), compute_uv=False)
    # Past min(d, r) (resp. min(k, r)) singular values are zero by construction; the Gram route
    # would leave round-off there (about √ε·σ₁), so write the exact zeros.
    (d, r), k = layers[0].up.shape, layers[0].down.shape[1]
    sv_b[:, min(d, r) :] = 0.0
    sv_a[:, min(k, r) :] = 0.0
    sv_ba[:, min(d, k, r) :] = 0.0
    scales = np.array([layer.scale for layer in layers], dtype=np.float64)
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
        for j, (sa, sb, sba) in enumerate(zip(*_low_rank_group([layers[i] for i in members]), strict=True)):
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
