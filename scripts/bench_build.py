"""Peak memory of ``lora-wise build --weights`` vs building the same dataset in one in-memory table.

Writes (once) a factory folder of SD1.5-shaped LoRA snapshots (128 layers, rank 32, float32,
about 25 MB each; random factors, real safetensors files and sidecars in the factory format),
then runs in fresh subprocesses: ``build_dataset(..., weights=True)`` (streaming: one snapshot at
a time) and the obvious alternative (read every snapshot, ``Dataset.from_dict`` of all rows,
``to_parquet``). Prints both peaks (VmHWM) and times.

    .venv/bin/python scripts/bench_build.py [--work /tmp/lora-wise-bench-build] [--micro 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from unet_shapes import sd15_attention_shapes  # noqa: E402

from lora_wise.factory.jobs import TrainJob  # noqa: E402
from lora_wise.factory.snapshots import Sidecar, job_folder, mark_done, write_snapshot  # noqa: E402

RANK = 32
SIZES, STEPS = (1, 10, 20), (1200, 1400)

PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD_STREAM = (
    PEAK
    + """
import json, sys, time
from lora_wise.dataset.build import build_dataset
t = time.perf_counter()
s = build_dataset(sys.argv[1], sys.argv[2], weights=True)
rows = sum(v["rows"] for e in s.configs.values() if e["kind"] == "spectra" for v in e["splits"].values())
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}))
"""
)

CHILD_NAIVE = (
    PEAK
    + """
import json, sys, time
from pathlib import Path
import datasets
from lora_wise import compute_spectra, read_lora
from lora_wise.dataset.build import spectra_features, spectra_row, weights_features
t = time.perf_counter()
rows, blobs = [], []
paths = sorted(Path(sys.argv[1]).rglob("step-*.safetensors"))
for path in paths:
    side = json.loads(path.with_suffix(".json").read_text())
    spectra = compute_spectra(read_lora(path), width=32)
    rows.append(spectra_row(spectra, spectra.layers, 32, side, "float32"))
    blobs.append({"model_id": side["model_id"], "micro_dataset": side["micro_dataset"],
                  "dataset_size": side["dataset_size"], "step": side["step"],
                  "safetensors": path.read_bytes()})
layers = len(rows[0]["fro"])
cols = {k: [r[k] for r in rows] for k in rows[0]}
datasets.Dataset.from_dict(cols, features=spectra_features(layers, 32)).to_parquet(
    sys.argv[2] + "-spectra.parquet")
wcols = {k: [r[k] for r in blobs] for k in blobs[0]}
datasets.Dataset.from_dict(wcols, features=weights_features()).to_parquet(sys.argv[2] + "-weights.parquet")
print(json.dumps({"rows": len(rows), "seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}))
"""
)


def write_factory(out: Path, n_micro: int) -> int:
    layers, count = sd15_attention_shapes(), 0
    rng = np.random.default_rng(0)
    for m in range(n_micro):
        for size in SIZES:
            job = TrainJob("sd15", "medium", size, f"imagenet:n{m:08d}", rank=RANK)
            folder = job_folder(out, job)
            for step in STEPS:
                side = Sidecar(job.job_id, job, step, size, job.micro_dataset, "sd15", RANK, float(RANK))
                tensors = {}
                for name, (d, k) in layers.items():
                    tensors[f"{name}.lora_A.weight"] = (rng.standard_normal((RANK, k)) / np.sqrt(k)).astype(
                        np.float32
                    )
                    tensors[f"{name}.lora_B.weight"] = (rng.standard_normal((d, RANK)) * 1e-3).astype(
                        np.float32
                    )
                write_snapshot(
                    folder, side, lambda path, meta, t=tensors: save_file(t, str(path), metadata=meta)
                )
                count += 1
            mark_done(folder, {})
    return count


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lora-wise-bench-build"))
    parser.add_argument("--micro", type=int, default=4, help="micro-datasets (× 3 sizes × 2 steps snapshots)")
    args = parser.parse_args()
    factory = args.work / "factory"
    if not factory.exists():
        t = time.perf_counter()
        n = write_factory(factory, args.micro)
        print(f"wrote {n} snapshots in {time.perf_counter() - t:.0f} s")
    n = len(list(factory.rglob("step-*.safetensors")))
    size_mb = sum(p.stat().st_size for p in factory.rglob("step-*.safetensors")) / 1e6
    print(f"factory: {n} snapshots, {size_mb:.0f} MB of safetensors (SD1.5 shapes, rank {RANK})")
    ours = child(CHILD_STREAM, str(factory), str(args.work / "dataset"))
    naive = child(CHILD_NAIVE, str(factory), str(args.work / "naive"))
    print(
        f"build_dataset --weights (stream): peak RSS {ours['peak_rss_mb']:6.0f} MB  "
        f"{ours['seconds']:6.1f} s  {ours['rows']} rows"
    )
    print(
        f"one in-memory table (naive):      peak RSS {naive['peak_rss_mb']:6.0f} MB  "
        f"{naive['seconds']:6.1f} s  {naive['rows']} rows"
    )
    print(f"naive / streaming peak RSS: {naive['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x "
          "(the streaming peak stays flat as snapshots are added; "
          "the naive one grows with them)")  # fmt: skip


if __name__ == "__main__":
    main()
