"""Small module-level task functions for the executor tests (they must pickle by reference)."""

from __future__ import annotations

import os


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed\nsecond line")
    return x


def die_on_two(x: int) -> int:
    """Kills its own worker process for x == 2, the way an OOM kill or a segfault would."""
    if x == 2:
        os._exit(1)
    return x


def worker_facts(_x: int) -> dict:
    import torch

    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
