"""Peak memory of ``import_upstream`` on a ≥ 2 GB upstream-format file vs a naive ``pd.read_parquet``.

Writes (once) a synthetic LoRA-WiSE release file in the upstream layout: SD1.5's 128 UNet
attention LoRA layers at rank 32 as FLAT float64 list columns (about 51 MB per row), enough rows
for ≥ 2 GB, in row groups of 10 rows (what ``datasets``' 500 MB shards hold). Then runs, each in a
fresh subprocess so peak RSS is its own: the streaming import (target < 1.5 GB) and the naive
whole-file load. Prints both peaks and the ratio.

    .venv/bin/python scripts/bench_import_upstream.py [--work /tmp/lora-wise-bench] [--rows 42]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from unet_shapes import sd15_attention_shapes

RANK = 32


def write_synthetic(path: Path, rows: int, group: int = 10) -> None:
    layers = sd15_attention_shapes()
    fields = [("label", pa.int64()), ("name", pa.string())]
    for name in layers:
        fields += [
            (f"{name}.lora.down.weight", pa.list_(pa.float64())),
            (f"{name}.lora.up.weight", pa.list_(pa.float64())),
        ]
    schema = pa.schema(fields)
    rng = np.random.default_rng(0)
    sizes = (1, 10, 20, 30, 40, 50)
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, group):
            batch = {f.name: [] for f in schema}
            for i in range(start, min(rows, start + group)):
                batch["label"].append(sizes[i % len(sizes)])
                batch["name"].append(f"n{1440764 + i // len(sizes):08d}")
                for name, (d, k) in layers.items():
                    batch[f"{name}.lora.down.weight"].append(rng.standard_normal(RANK * k) / np.sqrt(k))
                    batch[f"{name}.lora.up.weight"].append(rng.standard_normal(d * RANK) * 1e-3)
            writer.write_table(pa.table(batch, schema=schema))
            del batch
    tmp.rename(path)


# VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child would
# report the parent's peak (the file writer's) instead of its own.
PEAK = """
def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD_IMPORT = """
import json, sys, time
PEAK
from lora_wise.dataset.upstream import import_upstream
t = time.perf_counter()
entry = import_upstream(sys.argv[1], "medium_32", sys.argv[2], batch_size=2)
rows = sum(s["rows"] for s in entry["splits"].values())
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mb()}))
"""

CHILD_NAIVE = """
import json, sys, time
PEAK
import pandas as pd
t = time.perf_counter()
frame = pd.read_parquet(sys.argv[1])
print(json.dumps({"rows": len(frame), "seconds": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mb()}))
"""

CHILD_BASELINE = """
import json
PEAK
import lora_wise.dataset.upstream, datasets, pandas  # noqa: F401  the imports alone
print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
"""


def child(code: str, *args: str) -> dict:
    code = code.replace("PEAK", PEAK)
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lora-wise-bench"))
    parser.add_argument("--rows", type=int, default=42)
    args = parser.parse_args()
    release = args.work / "release" / "medium_32"
    release.mkdir(parents=True, exist_ok=True)
    path = release / "train-00000-of-00001.parquet"
    if not path.exists():
        t = time.perf_counter()
        write_synthetic(path, args.rows)
        print(f"wrote {path} in {time.perf_counter() - t:.0f} s")
    size_gb = path.stat().st_size / 1e9
    meta = pq.ParquetFile(path).metadata
    print(f"upstream file: {size_gb:.2f} GB, {meta.num_rows} rows, {meta.num_row_groups} row groups, "
          f"{len(sd15_attention_shapes())} layers, rank {RANK}")  # fmt: skip
    base = child(CHILD_BASELINE)
    ours = child(CHILD_IMPORT, str(args.work / "release"), str(args.work / "dataset"))
    naive = child(CHILD_NAIVE, str(path))
    print(f"imports alone:              peak RSS {base['peak_rss_mb']:7.0f} MB")
    print(
        f"import_upstream (stream):   peak RSS {ours['peak_rss_mb']:7.0f} MB  "
        f"{ours['seconds']:6.1f} s  {ours['rows']} rows"
    )
    print(
        f"pd.read_parquet (naive):    peak RSS {naive['peak_rss_mb']:7.0f} MB  "
        f"{naive['seconds']:6.1f} s  (load only)"
    )
    print(
        f"naive / streaming peak RSS: {naive['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x; "
        f"target < 1536 MB: {'met' if ours['peak_rss_mb'] < 1536 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
