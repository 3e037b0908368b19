"""Exact LyCORIS spectra from the factors equal a float64 SVD of the explicitly formed ΔW."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_wise import compute_spectra, read_lora
from scanner.inspect import describe

rng = np.random.default_rng(7)
LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"


def _f(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _f64(x):
    return x.astype(np.float64)


def _cp(t, wa, wb):
    """LyCORIS make_weight_cp: (dim, dim, kh, kw) core, wa (dim, out), wb (dim, in) -> (out, in, kh, kw)."""
    return np.einsum("ijkl,jr,ip->prkl", _f64(t), _f64(wb), _f64(wa))


def _check(path, name, delta, width=None):
    """The layer's spectrum and norm against numpy's SVD of ΔW flattened to (out, rest)."""
    weights = read_lora(path)
    spectra = compute_spectra(weights, width=width)
    row = spectra.layers.index(name)
    flat = delta.reshape(delta.shape[0], -1)
    full = np.linalg.svd(flat, compute_uv=False)
    n = min(spectra.width, full.size)
    np.testing.assert_allclose(spectra.ba[row, :n], full[:n], rtol=1e-6, atol=1e-9 * full[0])
    assert np.all(spectra.ba[row, n:] == 0)
    np.testing.assert_allclose(spectra.fro[row], np.linalg.norm(flat), rtol=1e-6)
    return weights, spectra


def _save(tmp_path, tensors):
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    return path


# (out1, in1), (out2, in2, kh, kw): w1 2-D, w2 2-D (linear) or 4-D (conv)
LOKR_SIDES = {
    "w1": ["full", "factored"],
    "w2": ["full", "factored", "tucker"],
    "layer": ["linear", "conv"],
}


# LyCORIS uses a Tucker core only for conv kernels
LOKR_CASES = [c for c in itertools.product(*LOKR_SIDES.values()) if c[1:] != ("tucker", "linear")]


@pytest.mark.parametrize("w1_kind, w2_kind, layer", LOKR_CASES)
def test_lokr_spectrum_is_every_product_of_factor_singular_values(tmp_path, w1_kind, w2_kind, layer):
    dim, alpha = 3, 2.0
    (o1, i1), (o2, i2) = (4, 5), (12, 10)
    ks = 3 if layer == "conv" else 1
    base = CONV if layer == "conv" else LINEAR
    tensors = {f"{base}.alpha": np.array(alpha, np.float32)}
    if w1_kind == "full":
        w1 = _f64(tensors.setdefault(f"{base}.lokr_w1", _f(o1, i1)))
    else:
        a, b = (
            tensors.setdefault(f"{base}.lokr_w1_a", _f(o1, dim)),
            tensors.setdefault(f"{base}.lokr_w1_b", _f(dim, i1)),
        )
        w1 = _f64(a) @ _f64(b)
    if w2_kind == "full":
        w2 = _f64(
            tensors.setdefault(f"{base}.lokr_w2", _f(o2, i2, ks, ks) if layer == "conv" else _f(o2, i2))
        )
    elif w2_kind == "factored":
        a, b = tensors.setdefault(f"{base}.lokr_w2_a", _f(o2, dim)), _f(dim, i2 * ks * ks)
        tensors[f"{base}.lokr_w2_b"] = b
        w2 = (_f64(a) @ _f64(b)).reshape(o2, i2, ks, ks) if layer == "conv" else _f64(a) @ _f64(b)
    else:
        t, a, b = _f(dim, dim, ks, ks), _f(dim, o2), _f(dim, i2)
        tensors |= {f"{base}.lokr_t2": t, f"{base}.lokr_w2_a": a, f"{base}.lokr_w2_b": b}
        w2 = _cp(t, a, b)
    both_full = w1_kind == "full" and w2_kind == "full"
    scale = 1.0 if both_full else alpha / dim
    # LyCORIS make_kron: a 4-D w2 takes w1 as (o1, i1, 1, 1); np.kron then builds the 4-D ΔW
    delta = np.kron(w1[:, :, None, None] if w2.ndim == 4 else w1, w2) * scale
    name = (
        "unet.down_blocks.0.resnets.0.conv1"
        if layer == "conv"
        else "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    weights, _ = _check(_save(tmp_path, tensors), name, delta, width=64)
    assert weights.layers[name].rank == (0 if both_full else dim)


@pytest.mark.parametrize("tucker", [False, True])
@pytest.mark.parametrize("dims, shape", [((2, 3), (40, 30)), ((5, 6), (12, 20)), ((3, 3), (6, 9))])
def test_loha_spectrum_through_face_splitting_factors(tmp_path, tucker, dims, shape):
    """Small inner rank goes through (U1•U2)(V1•V2)ᵀ, large through the dense ΔW: both exact."""
    (r1, r2), (out, inp) = dims, shape
    ks = 3 if tucker else 1
    base = CONV if tucker else LINEAR
    tensors = {f"{base}.alpha": np.array(1.5, np.float32)}
    sides = []
    for side, r in (("w1", r1), ("w2", r2)):
        if tucker:
            t, a, b = _f(r, r, ks, ks), _f(r, out), _f(r, inp)
            tensors |= {f"{base}.hada_t{side[-1]}": t, f"{base}.hada_{side}_a": a, f"{base}.hada_{side}_b": b}
            sides.append(_cp(t, a, b).reshape(out, -1))
        else:
            a, b = _f(out, r), _f(r, inp)
            tensors |= {f"{base}.hada_{side}_a": a, f"{base}.hada_{side}_b": b}
            sides.append(_f64(a) @ _f64(b))
    delta = sides[0] * sides[1] * (1.5 / r1)
    name = (
        "unet.down_blocks.0.resnets.0.conv1"
        if tucker
        else "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    weights, _ = _check(_save(tmp_path, tensors), name, delta, width=64)
    assert weights.layers[name].rank == r1 and weights.rank == r1


@pytest.mark.parametrize("mid", [False, True])
def test_conv_locon_spectrum(tmp_path, mid):
    """LoCon conv [r, in, k, k] (and with a Tucker lora_mid) flattened to (out, in·k·k)."""
    r, out, inp = 4, 16, 8
    if mid:
        up, core, down = _f(out, r, 1, 1), _f(r, r, 3, 3), _f(r, inp, 1, 1)
        tensors = {
            f"{CONV}.lora_up.weight": up,
            f"{CONV}.lora_mid.weight": core,
            f"{CONV}.lora_down.weight": down,
        }
        delta = np.einsum("nmkl,in,mj->ijkl", _f64(core), _f64(up[:, :, 0, 0]), _f64(down[:, :, 0, 0]))
    else:
        up, down = _f(out, r, 1, 1), _f(r, inp, 3, 3)
        tensors = {f"{CONV}.lora_up.weight": up, f"{CONV}.lora_down.weight": down}
        delta = (_f64(up.reshape(out, r)) @ _f64(down.reshape(r, -1))).reshape(out, inp, 3, 3)
    tensors[f"{CONV}.alpha"] = np.array(2.0, np.float32)
    weights, _ = _check(_save(tmp_path, tensors), "unet.down_blocks.0.resnets.0.conv1", delta * 2.0 / r)
    assert weights.rank == r


def test_kohya_lokr_file_with_text_encoder_reports_rank_and_layers(tmp_path):
    """The shape of real LoKr training outputs: kohya names, both sides factored, UNet + text encoder."""
    dim, tensors = 8, {}
    unet = [
        f"lora_unet_down_blocks_{b}_attentions_{a}_transformer_blocks_0_{p}"
        for b in range(3)
        for a in range(2)
        for p in ("attn1_to_q", "attn1_to_k", "attn2_to_q", "ff_net_2")
    ]
    text = [
        f"lora_te_text_model_encoder_layers_{i}_self_attn_{p}"
        for i in range(4)
        for p in ("q_proj", "out_proj")
    ]
    for base in unet + text:
        tensors |= {
            f"{base}.lokr_w1_a": _f(4, dim),
            f"{base}.lokr_w1_b": _f(dim, 4),
            f"{base}.lokr_w2_a": _f(80, dim),
            f"{base}.lokr_w2_b": _f(dim, 80),
            f"{base}.alpha": np.array(4.0, np.float32),
        }
    weights = read_lora(_save(tmp_path, tensors))
    summary = describe(weights)
    assert summary["format"] == "lokr" and summary["rank"] == dim
    assert summary["layers"] == len(unet) + len(text) == summary["all_layers"]
    assert weights.components == {"text_encoder": len(text), "unet": len(unet)}
    spectra = compute_spectra(weights)
    assert spectra.width == dim and (spectra.ba[:, 0] > 0).all()
