"""Spectra via the QR route equal the SVD of the dense ΔW, for every shape a LoRA can have."""

import numpy as np
import pytest

from lora_wise import LoraLayer, LoraWeights, compute_spectra
from lora_wise.spectra.compute import natural_key


def _layer(rng, name, d, k, r, scale=1.0, dtype="f4"):
    return LoraLayer(
        name,
        down=rng.normal(size=(r, k)).astype(dtype),
        up=rng.normal(size=(d, r)).astype(dtype),
        alpha=scale * r,
        scale=scale,
    )


def _dense_sv(layer):
    delta = layer.scale * layer.up.astype(np.float64) @ layer.down.astype(np.float64)
    return np.linalg.svd(delta, compute_uv=False), np.linalg.norm(delta)


@pytest.mark.parametrize(
    "shapes",
    [
        [(320, 320, 8), (320, 768, 8), (640, 640, 8)],  # SD-like, rank 8
        [(64, 64, 32), (5, 300, 8), (300, 5, 8)],  # rank above one side of the matrix
        [(96, 40, 4), (96, 40, 4), (96, 40, 16)],  # same shapes batched, mixed ranks
    ],
)
def test_ba_spectrum_equals_dense_svd(shapes):
    rng = np.random.default_rng(0)
    layers = {
        f"unet.l.{i}": _layer(rng, f"unet.l.{i}", d, k, r, scale=0.25 * (i + 1))
        for i, (d, k, r) in enumerate(shapes)
    }
    spectra = compute_spectra(LoraWeights(layers, "test"))
    for row, name in enumerate(spectra.layers):
        expected, norm = _dense_sv(layers[name])
        n = min(len(expected), spectra.width)
        np.testing.assert_allclose(spectra.ba[row, :n], expected[:n], rtol=1e-6, atol=1e-9 * expected[0])
        np.testing.assert_allclose(spectra.fro[row], norm, rtol=1e-9)
        for got, matrix in ((spectra.a[row], layers[name].down), (spectra.b[row], layers[name].up)):
            sv = np.linalg.svd(matrix.astype(float), compute_uv=False)
            np.testing.assert_allclose(got[: len(sv)], sv, rtol=1e-9)
            assert np.all(got[len(sv) :] == 0)


def test_zero_padding_past_rank_and_width():
    rng = np.random.default_rng(1)
    layers = {"unet.a": _layer(rng, "unet.a", 50, 60, 4), "unet.b": _layer(rng, "unet.b", 50, 60, 8)}
    spectra = compute_spectra(LoraWeights(layers, "test"))
    assert spectra.width == 8
    row = spectra.layers.index("unet.a")
    assert np.all(spectra.ba[row, 4:] == 0) and np.all(spectra.ba[row, :4] > 0)


def test_dense_layers_use_full_delta():
    rng = np.random.default_rng(2)
    delta = rng.normal(size=(30, 20))
    layers = {
        "unet.dense": LoraLayer("unet.dense", kind="loha", delta=delta, scale=2.0),
        "unet.low": _layer(rng, "unet.low", 30, 20, 4),
    }
    spectra = compute_spectra(LoraWeights(layers, "test"))
    row = spectra.layers.index("unet.dense")
    assert not spectra.low_rank[row]
    sv = np.linalg.svd(2.0 * delta, compute_uv=False)
    np.testing.assert_allclose(spectra.ba[row], sv[: spectra.width])
    np.testing.assert_allclose(spectra.fro[row], np.linalg.norm(2.0 * delta))
    assert np.all(spectra.a[row] == 0)


def test_deterministic_and_float16_input():
    rng = np.random.default_rng(3)
    layers = {"unet.x": _layer(rng, "unet.x", 64, 64, 8, dtype="f2")}
    one = compute_spectra(LoraWeights(layers, "test"))
    two = compute_spectra(LoraWeights(layers, "test"))
    assert np.array_equal(one.ba, two.ba) and one.ba.dtype == np.float64


def test_layer_order_is_natural_and_align_marks_missing():
    rng = np.random.default_rng(4)
    names = ["unet.down_blocks.10.x", "unet.down_blocks.9.x", "unet.down_blocks.1.x"]
    spectra = compute_spectra(LoraWeights({n: _layer(rng, n, 8, 8, 2) for n in names}, "test"))
    assert spectra.layers == sorted(names, key=natural_key) == names[::-1]
    aligned = spectra.align(["unet.down_blocks.9.x", "unet.absent"], width=4)
    assert aligned.ba.shape == (2, 4) and np.all(np.isnan(aligned.ba[1])) and np.isnan(aligned.fro[1])
    np.testing.assert_array_equal(aligned.ba[0, :2], spectra.ba[1])
