"""LyCORIS LoHa and LoKr: the update is not a product of two thin matrices, so ΔW is built dense.

LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b); LoKr: ΔW = w1 ⊗ w2 (each factor full or itself a·b);
with Tucker cores (``hada_t1/t2``, ``lokr_t2``) a factor is rebuilt as A1111's
``make_weight_cp`` does. Conv factors are flattened to (out, in·kh·kw), which is exactly the
flattening of the 4-D ΔW. ``delta`` is unscaled; the scale is alpha / dim.
"""

from __future__ import annotations

import numpy as np

from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.weights import LoraLayer

#: Largest dense ΔW we build (elements): a hostile file must not make us allocate terabytes.
MAX_DENSE = 1 << 26


def _cp(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Tucker rebuild: (dim, dim, kh, kw) core with (dim, out) and (dim, in) factors -> (out, in, kh, kw)."""
    return np.einsum("ijkl,jr,ip->prkl", t, wb, wa, optimize=True)


def _check_size(n: int) -> None:
    if n > MAX_DENSE:
        raise ValueError(f"dense update of {n} elements exceeds the {MAX_DENSE} cap")


def _product(a: np.ndarray, b: np.ndarray, t: np.ndarray | None) -> np.ndarray:
    _check_size(a.shape[0] * b.size // max(b.shape[0], 1) if t is None else a.shape[1] * b.shape[1] * t[0, 0].size)
    if t is not None:
        return _cp(t, a, b).reshape(a.shape[1], -1)
    return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)


def _fail(source: str, name: str, exc: Exception) -> InvalidLoraFile:
    return InvalidLoraFile(f"{source}: layer {name}: inconsistent LyCORIS factor shapes ({exc})")


def loha_layer(name: str, parts: dict[str, np.ndarray], source: str) -> tuple[LoraLayer, int]:
    """(layer, dim) for a LoHa module."""
    needed = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    missing = [k for k in needed if k not in parts]
    if missing:
        raise InvalidLoraFile(f"{source}: layer {name}: LoHa tensors missing: {', '.join(missing)}")
    try:
        w1 = _product(parts["hada_w1_a"], parts["hada_w1_b"], parts.get("hada_t1"))
        w2 = _product(parts["hada_w2_a"], parts["hada_w2_b"], parts.get("hada_t2"))
        delta = w1 * w2
    except (ValueError, IndexError) as exc:
        raise _fail(source, name, exc) from None
    dim = int(parts["hada_w1_b"].shape[0])
    return LoraLayer(name=name, kind="loha", delta=delta.astype(np.float32)), dim


def lokr_layer(name: str, parts: dict[str, np.ndarray], source: str) -> tuple[LoraLayer, int | None]:
    """(layer, dim) for a LoKr module; dim is None when both factors are full (scale 1)."""
    try:
        if "lokr_w1" in parts:
            w1 = parts["lokr_w1"].reshape(parts["lokr_w1"].shape[0], -1)
        else:
            w1 = _product(parts["lokr_w1_a"], parts["lokr_w1_b"], None)
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"].reshape(parts["lokr_w2"].shape[0], -1)
        else:
            w2 = _product(parts["lokr_w2_a"], parts["lokr_w2_b"], parts.get("lokr_t2"))
        _check_size(w1.size * w2.size)
        delta = np.kron(w1, w2)
    except KeyError as exc:
        raise InvalidLoraFile(f"{source}: layer {name}: LoKr tensor missing: {exc.args[0]}") from None
    except (ValueError, IndexError) as exc:
        raise _fail(source, name, exc) from None
    dim_source = parts.get("lokr_w1_b", parts.get("lokr_w2_b"))
    dim = int(dim_source.shape[0]) if dim_source is not None else None
    return LoraLayer(name=name, kind="lokr", delta=delta.astype(np.float32)), dim
