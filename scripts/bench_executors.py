"""How should the factory run on a small CPU machine? Measures model-steps/s of real tiny-sd training.

Compares training in this process (one torch thread: ``run_plan`` sets it, because torch's default
threads made it 30x slower on 2 cores) with a process pool of single-threaded workers, at a few
group sizes (jobs trained together in one batched pass).

    .venv/bin/python scripts/bench_executors.py --jobs 8 --steps 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from lora_wise.factory.grid import expand_grid
from lora_wise.factory.runner import make_plan, pool, run_plan


def measure(jobs, executor: str, workers: int, group_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        plan = make_plan(jobs, Path(out), group_size=group_size)
        start = time.monotonic()
        summary = run_plan(plan, executor=executor, workers=workers, console=Console(quiet=True))
        seconds = time.monotonic() - start
    if not summary.ok:
        raise SystemExit(f"training failed: {summary.failed}")
    return sum(j.steps for j in jobs) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--group-sizes", default="1,4,8")
    args = parser.parse_args()
    concepts = list(pool.concepts())[: args.jobs]
    spec = {"backbones": ["tiny-sd"], "ranks": [8], "ranges": ["low"], "sizes": [3],
            "micro_datasets": [f"pool:{c}" for c in concepts], "steps": args.steps,
            "snapshot_every": args.steps}  # fmt: skip
    jobs = expand_grid(spec)
    print(f"{len(jobs)} jobs x {args.steps} steps, tiny-sd rank 8, {os.cpu_count()} cores")
    base = None
    for group in (int(g) for g in args.group_sizes.split(",")):
        per_worker = max(1, min(group, len(jobs) // args.workers))
        for executor, workers, gsize in (("inprocess", 1, group), ("pool", args.workers, per_worker)):
            rate = measure(jobs, executor, workers, gsize)
            base = base or rate
            print(f"{executor:9s} workers={workers} group={gsize:3d}: {rate:7.1f} model-steps/s"
                  f"  ({rate / base:.2f}x the first line)")  # fmt: skip


if __name__ == "__main__":
    main()
