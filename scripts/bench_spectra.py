"""Benchmark: read + spectra of a rank-32 LoRA with the real attention shapes of SD1.5 or SDXL.

SD1.5: 128 layers (12 MB at rank 32, F32); SDXL: 560 layers, cross-attention width 2048 (186 MB).
Prints ratios against the obvious alternatives:
  1. read_lora + compute_spectra   vs  reading the file with safetensors.numpy and touching every
                                       byte (a sum per tensor): "the touch" (target ≤ 3×)
  2. compute_spectra alone         vs  the touch (target ≤ 2×)
  3. compute_spectra (Gram route)  vs  full SVD of every dense ΔW = scale·B·A (target ≥ 50× faster)
  4. peak RSS of read + spectra above the interpreter's baseline, vs the file size (target ≤ 2×)
and the largest error of σ(scale·B·A) against a float64 dense SVD, relative to each layer's σ₁.

Run: .venv/bin/python scripts/bench_spectra.py [--model sd15|sdxl] [--rank 32] [--dtype F32|F16|BF16]
                                               [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from unet_shapes import sd15_attention_shapes, sdxl_attention_shapes

from lora_wise import compute_spectra, read_lora

MODELS = {"sd15": sd15_attention_shapes, "sdxl": sdxl_attention_shapes}


def write_lora(path: Path, rank: int, dtype: torch.dtype, model: str = "sd15") -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (d, k) in MODELS[model]().items():
        tensors[f"{name}.lora_A.weight"] = (torch.randn(rank, k, generator=gen) / k**0.5).to(dtype)
        tensors[f"{name}.lora_B.weight"] = (torch.randn(d, rank, generator=gen) * 0.01).to(dtype)
    save_file(tensors, str(path))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def qr_route_all(weights) -> None:
    """The textbook route of REFERENCE §3, per layer: σ(R_B R_Aᵀ) from Householder QR."""
    for layer in weights.layers.values():
        r_b = np.linalg.qr(layer.up.astype(np.float64), mode="r")
        r_a = np.linalg.qr(layer.down.T.astype(np.float64), mode="r")
        np.linalg.svd(r_b @ r_a.T, compute_uv=False)


def dense_svd_all(weights, limit: int | None = None) -> dict[str, np.ndarray]:
    """σ of every dense float64 ΔW (of the first ``limit`` layers): the slow, obviously right answer."""
    out = {}
    for name, layer in list(sorted(weights.layers.items()))[:limit]:
        delta = layer.scale * layer.up.astype(np.float64) @ layer.down.astype(np.float64)
        out[name] = np.linalg.svd(delta, compute_uv=False)
    return out


def touch(path: Path) -> float:
    """Read every tensor with safetensors.numpy and touch every byte: the floor any reader pays."""
    from safetensors.numpy import load_file as load_numpy

    return float(sum(array.sum() for array in load_numpy(str(path)).values()))


def worst_relative_error(spectra, reference: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, sv in reference.items():
        row = spectra.ba[spectra.layers.index(name)]
        n = min(row.size, sv.size)
        worst = max(worst, float(np.max(np.abs(row[:n] - sv[:n])) / sv[0]))
    return worst


# ru_maxrss would report the import-time peak; a sampler thread reads the live RSS instead.
_MEMORY_CHILD = """
import json, os, sys, threading, time
from lora_wise import compute_spectra, read_lora
import numpy, safetensors, torch
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak, done = [rss()], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
base = rss()
thread = threading.Thread(target=sample)
thread.start()
spectra = compute_spectra(read_lora(sys.argv[1]))
done.set()
thread.join()
peak[0] = max(peak[0], rss())
print(json.dumps({"base_kb": base / 1024, "peak_kb": peak[0] / 1024}))
"""


def peak_memory(path: Path) -> tuple[float, float]:
    """(baseline MB, peak MB) of a fresh interpreter that reads the file and computes spectra."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path)], capture_output=True, text=True, check=True
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["base_kb"] / 1024, data["peak_kb"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="sd15")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[args.dtype]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}_rank.safetensors"
        write_lora(path, args.rank, dtype, args.model)
        size_mb = path.stat().st_size / 2**20
        weights = read_lora(path)
        t_load = best_of(lambda: load_file(str(path)), args.repeats)
        t_touch = best_of(lambda: touch(path), args.repeats)
        t_ours = best_of(lambda: compute_spectra(read_lora(path)), args.repeats)
        t_spectra = best_of(lambda: compute_spectra(weights), args.repeats)
        t_qr = best_of(lambda: qr_route_all(weights), args.repeats if args.model == "sd15" else 1)
        limit = None if args.model == "sd15" else 40  # SDXL: dense SVDs of 40 layers already take seconds
        start = time.perf_counter()
        reference = dense_svd_all(weights, limit)
        t_dense = (time.perf_counter() - start) * len(weights.layers) / len(reference)
        error = worst_relative_error(compute_spectra(weights), reference)
        base_mb, peak_mb = peak_memory(path)

    rows = [
        ("safetensors.torch load_file (mmap)", t_load, ""),
        ("safetensors.numpy read + touch", t_touch, ""),
        ("read_lora + compute_spectra", t_ours, f"ratio {t_ours / t_touch:6.2f}x the touch (target <= 3x)"),
        (
            "compute_spectra (batched Gram)",
            t_spectra,
            f"ratio {t_spectra / t_touch:6.2f}x the touch (target <= 2x)",
        ),
        ("per-layer QR route (REFERENCE §3)", t_qr, f"ours is {t_qr / t_spectra:5.2f}x faster"),
        (
            "full SVD of dense dW, all layers",
            t_dense,
            f"speed-up {t_dense / t_spectra:6.0f}x (target >= 50x)",
        ),
    ]
    shape = f"{len(weights.layers)} layers, rank {args.rank}, {args.dtype}, {size_mb:.0f} MB"
    print(f"{args.model}-shaped LoRA: {shape}")
    for label, seconds, note in rows:
        print(f"{label:<35}{seconds * 1e3:9.1f} ms   {note}")
    print(f"{'max |σ - σ_dense| / σ₁':<35}{error:9.2e}      over {len(reference)} layers, float64 dense SVD")
    extra = peak_mb - base_mb
    print(
        f"{'peak RSS above baseline':<35}{extra:9.1f} MB   = {extra / size_mb:5.2f}x file size (target <= 2x)"
    )


if __name__ == "__main__":
    main()
