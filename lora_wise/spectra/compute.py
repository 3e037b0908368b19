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

from lora_wise.lora.formats.lycoris import loha_uses_factors
from lora_wise.lora.weights import Factor, LoraLayer, LoraWeights


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


def _grams(ups: list[np.ndarray], downs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """BᵀB and A·Aᵀ in float64 for same-shaped factors.

    One layer at a time: its float64 copy is freed (and its memory reused) before the next, so
    the conversion stays in cache and never faults in fresh pages; stacking the factors first
    measured twice as slow on an SDXL file (scripts/bench_spectra.py --model sdxl).
    """
    r = ups[0].shape[1]
    gram_b, gram_a = np.empty((len(ups), r, r)), np.empty((len(ups), r, r))
    for i, (up, down) in enumerate(zip(ups, downs, strict=True)):
        up64, down64 = up.astype(np.float64), down.astype(np.float64)
        np.matmul(up64.T, up64, out=gram_b[i])
        np.matmul(down64, down64.T, out=gram_a[i])
    return gram_b, gram_a


def _pair_spectra(ups: list[np.ndarray], downs: list[np.ndarray]):
    """σ(A), σ(B), σ(B·A) for same-shaped pairs B (d×r), A (r×k), unscaled."""
    gram_b, gram_a = _grams(ups, downs)
    sv_b, sv_a = _gram_singular_values(gram_b), _gram_singular_values(gram_a)
    sv_ba = np.linalg.svd(_gram_root(gram_b) @ np.swapaxes(_gram_root(gram_a), 1, 2), compute_uv=False)
    # Past min(d, r) (resp. min(k, r)) singular values are zero by construction; the Gram route
    # would leave round-off there (about √ε·σ₁), so write the exact zeros.
    (d, r), k = ups[0].shape, downs[0].shape[1]
    sv_b[:, min(d, r) :] = 0.0
    sv_a[:, min(k, r) :] = 0.0
    sv_ba[:, min(d, k, r) :] = 0.0
    return sv_a, sv_b, sv_ba


def _low_rank_group(layers: list[LoraLayer]):
    """σ(A), σ(B), σ(scale·B·A) for same-shaped layers."""
    sv_a, sv_b, sv_ba = _pair_spectra([layer.up for layer in layers], [layer.down for layer in layers])
    scales = np.array([layer.scale for layer in layers], dtype=np.float64)
    return sv_a, sv_b, sv_ba * np.abs(scales)[:, None]


def _product_singular_values(up: np.ndarray, down: np.ndarray | None) -> np.ndarray:
    """Every singular value of ``up @ down`` (of ``up`` when ``down`` is None), descending."""
    if down is None:
        return np.linalg.svd(up.astype(np.float64), compute_uv=False)
    d, r, k = up.shape[0], up.shape[1], down.shape[1]
    if r >= min(d, k):  # the Gram route only pays below full rank
        return np.linalg.svd(up.astype(np.float64) @ down.astype(np.float64), compute_uv=False)
    return _pair_spectra([up], [down])[2][0, : min(d, k, r)]


def _loha_singular_values(f1: Factor, f2: Factor) -> np.ndarray:
    """(U1V1) ⊙ (U2V2) = (U1 • U2)(V1ᵀ • V2ᵀ)ᵀ, • the face-splitting (row-wise Kronecker) product."""
    (d, k), inner = f1.shape, f1.inner * f2.inner
    if not loha_uses_factors(d, k, inner):
        return np.linalg.svd(f1.dense() * f2.dense(), compute_uv=False)
    up = (f1.up[:, :, None] * f2.up[:, None, :]).reshape(d, inner)
    down = (f1.down[:, None, :] * f2.down[None, :, :]).reshape(inner, k)
    return _product_singular_values(up, down)


def structured_singular_values(layer: LoraLayer) -> np.ndarray:
    """Every singular value of an unscaled LyCORIS (or hand-built dense) ΔW, descending, exactly.

    LoKr: σ(kron(W1, W2)) = {σᵢ(W1)·σⱼ(W2)}; LoHa: the face-splitting factorisation above;
    Tucker LoCon: one factor pair. Only the small factors are ever multiplied out.
    """
    if layer.delta is not None:
        return np.linalg.svd(layer.dense(), compute_uv=False)
    if layer.kind == "lokr":
        s1, s2 = (_product_singular_values(f.up, f.down) for f in layer.factors)
        return np.sort(np.outer(s1, s2).ravel())[::-1]
    if layer.kind == "loha":
        return _loha_singular_values(*layer.factors)
    (factor,) = layer.factors
    return _product_singular_values(factor.up, factor.down)


def _fill(row: np.ndarray, values: np.ndarray) -> None:
    n = min(row.shape[0], values.shape[0])
    row[:n] = values[:n]


def compute_spectra(weights: LoraWeights, width: int | None = None) -> Spectra:
    """Spectra of every layer of ``weights``.

    ``width`` defaults to the largest rank (LyCORIS: declared dim) among the layers (or 64 if
    no layer declares one); LyCORIS layers keep their top ``width`` singular values.
    """
    layers = sorted(weights.layers.values(), key=lambda layer: natural_key(layer.name))
    ranks = [layer.rank for layer in layers if layer.rank > 0]
    width = width or (max(ranks) if ranks else 64)
    n = len(layers)
    a, b, ba = (np.zeros((n, width)) for _ in range(3))
    low = np.array([layer.low_rank for layer in layers], dtype=bool)
    fro = np.zeros(n)

    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, layer in enumerate(layers):
        if layer.low_rank:
            groups[(layer.up.shape, layer.down.shape)].append(i)
        else:
            values = structured_singular_values(layer) * abs(layer.scale)
            _fill(ba[i], values)
            fro[i] = float(np.sqrt(np.sum(values**2)))  # from every σ, not only the top ``width``
    for members in groups.values():
        for j, (sa, sb, sba) in enumerate(zip(*_low_rank_group([layers[i] for i in members]), strict=True)):
            i = members[j]
            _fill(a[i], sa)
            _fill(b[i], sb)
            _fill(ba[i], sba)
    fro[low] = np.sqrt(np.sum(ba[low] ** 2, axis=1))
    return Spectra([layer.name for layer in layers], a, b, ba, fro, low)
