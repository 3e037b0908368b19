"""LyCORIS LoHa and LoKr: kept as their factors, whose shapes are checked before anything is built.

LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b); LoKr: ΔW = w1 ⊗ w2 (each factor full or itself a·b); with
Tucker cores (``hada_t1/t2``, ``lokr_t2``) a factor is ``waᵀ · (t ×₂ wb)``, the matrix form of
A1111's ``make_weight_cp``. Conv factors are flattened to (out, in·kh·kw), which is exactly the
flattening of the 4-D ΔW (also for ``kron`` with a 4-D w2). No dense ΔW is ever formed here:
``spectra.compute`` gets exact singular values from the factors (REFERENCE §11). Every matrix
that will be built from the factors is checked against
:data:`~lora_wise.lora.weights.MAX_DENSE_ELEMENTS` from shapes alone, and the spectrum's cost
against :data:`~lora_wise.lora.weights.MAX_SVD_WORK`, so a hostile file whose factors would
broadcast or blow up is refused, not allocated. The scale is alpha / dim.
"""

from __future__ import annotations

import numpy as np

from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.weights import MAX_DENSE_ELEMENTS, MAX_SVD_WORK, Factor, LoraLayer


class _Shapes(ValueError):
    """Inconsistent factor shapes (internal; becomes an InvalidLoraFile naming the layer)."""


def _check_size(what: str, *dims: int) -> None:
    n = int(np.prod([int(d) for d in dims], dtype=object))
    if n > MAX_DENSE_ELEMENTS:
        raise _Shapes(f"{what} of {'x'.join(map(str, dims))} exceeds the {MAX_DENSE_ELEMENTS}-element cap")


def _matrix(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim not in (2, 3, 4) or array.size == 0:
        raise _Shapes(f"{what} has shape {list(array.shape)}")
    return array.reshape(array.shape[0], -1)


def _factor(a: np.ndarray, b: np.ndarray, t: np.ndarray | None, what: str) -> Factor:
    """``a·b``, or with a Tucker core t (dim, dim, kh, kw): ``aᵀ · (t ×₂ b)``, a (dim, out), b (dim, in)."""
    if t is None:
        up, down = _matrix(a, f"{what}_a"), _matrix(b, f"{what}_b")
        if up.shape[1] != down.shape[0]:
            raise _Shapes(f"{what}_a {list(a.shape)} and {what}_b {list(b.shape)} do not multiply")
        return Factor(up, down)
    if t.ndim != 4 or a.ndim != 2 or b.ndim != 2 or a.shape[0] != t.shape[0] or b.shape[0] != t.shape[1]:
        raise _Shapes(
            f"Tucker core {list(t.shape)} does not fit {what}_a {list(a.shape)} / {what}_b {list(b.shape)}"
        )
    _check_size(f"{what} Tucker product", t.shape[0], b.shape[1], t.shape[2], t.shape[3])
    core = np.einsum("ijkl,jr->irkl", t, b).reshape(t.shape[0], -1)
    return Factor(np.ascontiguousarray(a.T), core.astype(np.float32))


def _loha_work(d: int, k: int, inner: int) -> tuple[int, int]:
    """Rough flop counts of the two exact routes: Gram of the face-splitting factors, dense SVD."""
    return (d + k) * inner * inner + inner**3, min(d, k) ** 2 * max(d, k)


def loha_uses_factors(d: int, k: int, inner: int) -> bool:
    """Whether a LoHa layer's spectrum goes through its face-splitting factors (rank ≤ inner) or dense ΔW."""
    factored, dense = _loha_work(d, k, inner)
    return inner < min(d, k) and factored <= dense


def _fail(source: str, name: str, exc: Exception) -> InvalidLoraFile:
    return InvalidLoraFile(f"{source}: layer {name}: inconsistent LyCORIS factors ({exc})")


def loha_layer(name: str, parts: dict[str, np.ndarray], source: str) -> tuple[LoraLayer, int]:
    """(layer, dim) for a LoHa module."""
    needed = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    missing = [k for k in needed if k not in parts]
    if missing:
        raise InvalidLoraFile(f"{source}: layer {name}: LoHa tensors missing: {', '.join(missing)}")
    try:
        f1 = _factor(parts["hada_w1_a"], parts["hada_w1_b"], parts.get("hada_t1"), "hada_w1")
        f2 = _factor(parts["hada_w2_a"], parts["hada_w2_b"], parts.get("hada_t2"), "hada_w2")
        if f1.shape != f2.shape:  # LyCORIS multiplies them elementwise: no broadcasting
            raise _Shapes(f"w1 is {f1.shape} but w2 is {f2.shape}")
        (d, k), inner = f1.shape, f1.inner * f2.inner
        if loha_uses_factors(d, k, inner):
            _check_size("LoHa face-splitting factor", max(d, k), inner)
        else:
            _check_size("LoHa dense update", d, k)
        if min(_loha_work(d, k, inner)) > MAX_SVD_WORK:
            raise _Shapes(f"the spectrum of a {d}x{k} update of inner rank {inner} exceeds the work cap")
    except _Shapes as exc:
        raise _fail(source, name, exc) from None
    dim = int(parts["hada_w1_b"].shape[0])
    return LoraLayer(name=name, kind="loha", factors=(f1, f2), dim=dim), dim


def _lokr_side(parts: dict[str, np.ndarray], side: str) -> Factor:
    if f"lokr_{side}" in parts:
        return Factor(_matrix(parts[f"lokr_{side}"], f"lokr_{side}"))
    tucker = parts.get("lokr_t2") if side == "w2" else None
    return _factor(parts[f"lokr_{side}_a"], parts[f"lokr_{side}_b"], tucker, f"lokr_{side}")


def lokr_layer(name: str, parts: dict[str, np.ndarray], source: str) -> tuple[LoraLayer, int | None]:
    """(layer, dim) for a LoKr module; dim is None when both factors are full (scale 1)."""
    try:
        factors = (_lokr_side(parts, "w1"), _lokr_side(parts, "w2"))
    except KeyError as exc:
        raise InvalidLoraFile(f"{source}: layer {name}: LoKr tensor missing: {exc.args[0]}") from None
    except _Shapes as exc:
        raise _fail(source, name, exc) from None
    inner = [f.inner for f in factors if f.inner is not None]
    dim = inner[0] if inner else None
    return LoraLayer(name=name, kind="lokr", factors=factors, dim=dim), dim
