"""Measure the batched trainer: group steps/s and model-steps/s per process for several K.

    python scripts/bench_train.py --ks 1 4 8 16 32 --steps 30 [--procs 2] [--candidate v2-wide]

One torch thread per process. With --procs P, P processes run the same measurement side by side
(as the factory's process pool would) and each prints its own line. The ratio against K = 1 is
the speed-up of training K LoRAs in one batched pass over training them one by one.

Measured 2026-11-22 on the 2-core dev machine (tiny-sd, rank 8, 1 thread per process), two
processes side by side, model-steps/s per process: K=1 16.5, K=4 35, K=8 48, K=16 54,
K=32 63, K=48 63 (x3.8 over K=1 at K=32). One process alone: K=1 18.3, K=32 65.8.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def measure(k: int, steps: int, warmup: int, candidate: str | None = None) -> tuple[float, float]:
    import torch

    torch.set_num_threads(1)
    from lora_wise.factory import pool
    from lora_wise.factory.jobs import TrainJob
    from lora_wise.factory.train import train_group

    names = list(pool.concepts())
    jobs = [
        TrainJob(
            "tiny-sd",
            "medium",
            1 + (i % 6),
            f"pool:{names[i % len(names)]}",
            rank=8,
            steps=steps,
            snapshot_every=steps,
        )  # fmt: skip
        for i in range(k)
    ]
    ticks: list[float] = []
    backbone = None
    if candidate:  # a tiny-sd v2 candidate with random weights: the same cost per step as trained ones
        from lora_wise.factory.backbones.tiny_sd_v2 import build_candidate

        backbone = build_candidate(candidate)
    with tempfile.TemporaryDirectory() as out:
        train_group(
            jobs, Path(out), progress=lambda s, n: ticks.append(time.perf_counter()), backbone=backbone
        )
    dt = ticks[-1] - ticks[warmup - 1]
    rate = (steps - warmup) / dt
    return rate, rate * k


def worker(args: argparse.Namespace, rank: int, queue) -> None:
    for k in args.ks:
        rate, model_rate = measure(k, args.steps, args.warmup, args.candidate)
        queue.put((rank, k, rate, model_rate))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument(
        "--candidate", default=None, help="a tiny-sd v2 candidate (lora_wise.factory.backbones.tiny_sd_v2)"
    )
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(args, r, queue)) for r in range(args.procs)]
    for p in procs:
        p.start()
    base: dict[int, float] = {}
    for _ in range(args.procs * len(args.ks)):
        rank, k, rate, model_rate = queue.get()
        base.setdefault(rank, model_rate if k == args.ks[0] else float("nan"))
        print(f"proc {rank} K={k:3d}: {rate:6.2f} group-steps/s  {model_rate:7.1f} model-steps/s  "
              f"x{model_rate / base[rank]:.1f} vs K={args.ks[0]}", flush=True)  # fmt: skip
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
