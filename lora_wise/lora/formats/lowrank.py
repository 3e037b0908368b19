"""Low-rank layers (LoRA, LoCon conv, DoRA): pair A and B, flatten convs, check ranks."""

from __future__ import annotations

import numpy as np

from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.weights import MAX_DENSE_ELEMENTS, Factor, LoraLayer


def as_matrix(array: np.ndarray, what: str, source: str, name: str) -> np.ndarray:
    """2-D view of a linear (r, k) or conv (r, in, kh, kw) weight: conv kernels are flattened."""
    if array.ndim not in (2, 3, 4) or array.size == 0:
        raise InvalidLoraFile(
            f"{source}: layer {name}: {what} has shape {list(array.shape)}, not a LoRA matrix"
        )
    return array.reshape(array.shape[0], -1)


def low_rank_layer(name: str, parts: dict[str, np.ndarray], source: str) -> LoraLayer:
    """A LoraLayer from ``down``/``up`` (+ ``dora_scale``); alpha and scale are set by the caller."""
    for role in ("down", "up"):
        if role not in parts:
            other = "up (B)" if role == "down" else "down (A)"
            raise InvalidLoraFile(
                f"{source}: layer {name}: {other} has no matching {role} ({'A' if role == 'down' else 'B'})"
            )
    down = as_matrix(parts["down"], "down (A)", source, name)
    up_raw = parts["up"]
    if up_raw.ndim == 4 and up_raw.shape[2:] != (1, 1):
        raise InvalidLoraFile(f"{source}: layer {name}: up (B) has a {up_raw.shape[2:]} kernel, expected 1x1")
    up = as_matrix(up_raw, "up (B)", source, name)
    if up.shape[1] != down.shape[0]:
        raise InvalidLoraFile(
            f"{source}: layer {name}: rank mismatch, "
            f"down (A) has rank {down.shape[0]} but up (B) has {up.shape[1]}"
        )
    kind = "conv" if parts["down"].ndim == 4 else "lora"
    dora = parts.get("dora_scale")
    if dora is not None:
        kind = "dora"
    return LoraLayer(name=name, kind=kind, down=down, up=up, dora_scale=dora)


def tucker_layer(name: str, parts: dict[str, np.ndarray], source: str) -> LoraLayer:
    """LoCon with a CP/Tucker middle (``lora_mid``): ΔW = up · (mid ×₂ down), kept as that factor pair.

    ``up`` (out, n), ``mid`` (n, m, kh, kw), ``down`` (m, in): ΔW[i, (j, k, l)] =
    Σₙ up[i, n] · Σₘ mid[n, m, k, l] down[m, j], the same update A1111 rebuilds densely.
    """
    down = as_matrix(parts["down"], "down (A)", source, name)
    up = as_matrix(parts["up"], "up (B)", source, name)
    mid = parts["mid"]
    if mid.ndim != 4 or mid.shape[:2] != (up.shape[1], down.shape[0]):
        raise InvalidLoraFile(
            f"{source}: layer {name}: lora_mid shape {list(mid.shape)} does not fit up/down"
        )
    if mid.shape[0] * down.shape[1] * mid.shape[2] * mid.shape[3] > MAX_DENSE_ELEMENTS:
        raise InvalidLoraFile(
            f"{source}: layer {name}: Tucker factor exceeds the {MAX_DENSE_ELEMENTS}-element cap"
        )
    core = np.einsum("nmkl,mj->njkl", mid, down).reshape(mid.shape[0], -1)
    return LoraLayer(
        name=name, kind="full", factors=(Factor(up, core.astype(np.float32)),), dim=int(down.shape[0])
    )
