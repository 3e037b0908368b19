"""Benchmark: what the crawl's bounded worker processes (a deadline per target, a memory limit per
worker) cost, against running each target in the crawl's threads (no limit at all).

    python scripts/bench_crawl_workers.py --targets 40 --jobs 2

Writes ``--targets`` small real LoRA files, crawls a list of them twice per mode (the first run of
each mode warms up: the forkserver's imports, the reader's lazy imports), and prints the second
runs' seconds per target and their ratio. The worker processes are fresh for each crawl, so their
first target pays for the bank's fitting once per worker: the ratio falls as ``--targets`` grows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_loras(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        tensors = {}
        for b in range(2):
            key = f"lora_unet_down_blocks_{b}_attentions_0_transformer_blocks_0_attn1_to_q"
            tensors[f"{key}.lora_down.weight"] = rng.normal(size=(4, 320)).astype(np.float32)
            tensors[f"{key}.lora_up.weight"] = rng.normal(size=(320, 4)).astype(np.float32)
            tensors[f"{key}.alpha"] = np.array(4.0, dtype=np.float32)
        paths.append(folder / f"l{i}.safetensors")
        save_file(tensors, str(paths[-1]))
    listed = folder / "targets.txt"
    listed.write_text("".join(f"{p}\n" for p in paths))
    return listed


def timed_crawl(folder: Path, listed: Path, jobs: int, limits, name: str) -> float:
    from scanner.crawl import CrawlOptions, crawl
    from scanner.crawl.listing import TargetsFile

    started = time.perf_counter()
    summary = crawl(
        folder / f"{name}.db", TargetsFile(listed), CrawlOptions(jobs=jobs, progress=False, limits=limits)
    )
    assert set(summary.counts) == {"ok"}, summary.counts
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    from scanner.crawl.dispatch import Limits

    folder = Path(tempfile.mkdtemp(prefix="bench-crawl-workers-"))
    listed = write_loras(folder, args.targets)
    modes = {"thread (no limits)": Limits(seconds=None, memory=None), "bounded workers": Limits()}
    seconds = {}
    for label, limits in modes.items():
        timed_crawl(folder, listed, args.jobs, limits, f"{label[:6]}-warm")
        seconds[label] = timed_crawl(folder, listed, args.jobs, limits, f"{label[:6]}-run")
        print(
            f"{label:>20}: {seconds[label]:.2f} s, {1000 * seconds[label] / args.targets:.0f} ms per target"
        )
    ratio = seconds["bounded workers"] / seconds["thread (no limits)"]
    print(f"bounded workers / thread: {ratio:.1f}x ({args.targets} targets, --jobs {args.jobs})")


if __name__ == "__main__":
    main()
