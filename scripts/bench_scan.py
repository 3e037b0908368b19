"""Benchmark: what a scan costs against what reading the file costs.

Writes, in a temporary folder, a ~3 MB SD1.5-shaped LoRA (the 128 UNet attention projections,
rank 8, float16) and a ~190 MB SDXL LoRA (its 1120 attention projections with SDXL's real
widths, 640/1280 and 2048-wide cross-attention, rank 32, float32), both with diffusers/PEFT keys,
and times as fresh processes (wall clock, best of ``--repeats``):

- the baseline: a process that only imports numpy and reads the file with ``safetensors.numpy``;
- ``lora-scan inspect FILE`` (target ≤ 3× the baseline);
- ``lora-scan FILE``, the scan with an estimate from the packaged banks (target ≤ 5×).

Only the packaged banks are searched (``$LORA_WISE_BANKS`` points to an empty folder). Their
one bank is tiny-sd rank 8, so for the SD1.5 and SDXL files the scan finds no bank for the
backbone and gives no number: it measures reading, spectra, the bank listing and the advice.
The bundled example (a tiny-sd rank-8 LoRA, ``scanner/data/example.safetensors``) is timed too:
there the scan loads the bank, restores its fitted state and estimates.

Run: ``.venv/bin/python scripts/bench_scan.py`` (prints the ratios; ``--repeats 5`` for steadier ones).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from unet_shapes import sd15_attention_shapes, sdxl_attention_shapes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "scanner" / "data" / "example.safetensors"
BASELINE = "import sys, numpy; from safetensors.numpy import load_file; load_file(sys.argv[1])"


def write_lora(path: Path, shapes: dict[str, tuple[int, int]], rank: int, dtype: type) -> Path:
    """Random A and B for every attention projection, keys ``unet.<module>.lora_A/B.weight``."""
    rng = np.random.default_rng(0)
    tensors = {}
    for name, (out, k) in shapes.items():
        tensors[f"{name}.lora_A.weight"] = (rng.standard_normal((rank, k)) * 0.01).astype(dtype)
        tensors[f"{name}.lora_B.weight"] = (rng.standard_normal((out, rank)) * 0.001).astype(dtype)
    save_file(tensors, str(path))
    return path


def lora_scan() -> list[str]:
    script = Path(sys.executable).with_name("lora-scan")
    return (
        [str(script)] if script.is_file() else [sys.executable, "-c", "from scanner.cli import main; main()"]
    )


def timed(cmd: list[str], env: dict[str, str], repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time (user + system) of ``repeats`` fresh processes. CPU time
    is what the work costs on a busy machine; a failing command is an error, not a time."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall, best_cpu = min(best_wall, elapsed), min(best_cpu, cpu)
    return best_wall, best_cpu


HEAVY = """
import json, sys
from scanner.scan import scan
scan(sys.argv[1])
print(json.dumps(sorted(m for m in ("torch", "sklearn", "scipy", "pandas", "datasets") if m in sys.modules)))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "banks").mkdir()
        env = {**os.environ, "LORA_WISE_BANKS": str(tmp_path / "banks"), "PYTHONPATH": str(ROOT)}
        files = {
            "SD1.5 r8 fp16": write_lora(
                tmp_path / "sd15.safetensors", sd15_attention_shapes(), 8, np.float16
            ),
            "SDXL r32 fp32": write_lora(
                tmp_path / "sdxl.safetensors", sdxl_attention_shapes(), 32, np.float32
            ),
            "tiny-sd example": EXAMPLE,
        }
        scan = lora_scan()
        print(f"{'':17} {'':>6} {'read (s)':>11}  {'inspect: s, x read':>22}  {'scan: s, x read':>22}")
        print(
            f"{'file':17} {'MB':>6} {'wall':>5} {'cpu':>5}  "
            f"{'wall':>10} {'cpu':>11}  {'wall':>10} {'cpu':>11}  scan is"
        )
        for label, path in files.items():
            base = timed([sys.executable, "-c", BASELINE, str(path)], env, args.repeats)
            inspect = timed([*scan, "inspect", str(path)], env, args.repeats)
            scanned = timed([*scan, str(path)], env, args.repeats)
            what = "bank + estimate" if path == EXAMPLE else "no bank for the backbone: no estimate"
            cells = " ".join(
                f"{t[i]:5.2f} {t[i] / base[i]:4.1f}x" for t in (inspect, scanned) for i in (0, 1)
            )
            print(
                f"{label:17} {path.stat().st_size / 1e6:6.1f} {base[0]:5.2f} {base[1]:5.2f}  {cells}  {what}"
            )
        print("targets: inspect <= 3x, scan <= 5x the read")
        probe = [sys.executable, "-c", HEAVY, str(EXAMPLE)]
        heavy = subprocess.run(probe, env=env, cwd=ROOT, capture_output=True, text=True).stdout.strip()
        print(f"heavy modules a scan of the example imports: {heavy or '(the probe failed)'}")
        torch_wall, torch_cpu = timed([sys.executable, "-c", "import numpy, torch"], env, args.repeats)
        print(f"for scale, importing numpy and torch: {torch_wall:.2f} s wall, {torch_cpu:.2f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
