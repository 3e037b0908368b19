"""One way to run many independent tasks: in-process, a local process pool, a shard, or Ray.

The benchmark factory calls ``run_tasks`` to train groups of LoRAs; a task that raises is reported
in its ``TaskResult`` and never stops the others. The crawl keeps its own loop (it must claim targets
from its state as slots free up) but shares this module's Ray setup (``import_ray``, ``init_worker``).

- ``inprocess``: one after another in this process (debugging, tests, a single job).
- ``pool``: a local process pool (spawn context, so no inherited torch/OpenMP state) with one torch
  thread per worker: on a CPU machine, N single-threaded processes beat one N-threaded process for
  small models, and they never oversubscribe the cores.
- ``shard=(i, n)``: only the tasks whose key hashes to shard i of n, for batch schedulers (a SLURM array
  runs ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``). The assignment depends only on the
  task's key, so it is the same on every machine and run, whatever else is in the list.
- ``ray``: a Ray cluster (``ray_address``: ``auto``, ``ray://host:10001`` or ``local``), one GPU per task
  when the cluster has GPUs, one CPU otherwise. Ray is optional: ``pip install lora-wise[ray]``.

Tasks and ``fn`` travel to worker processes by pickling (multiprocessing, Ray), so ``fn`` must be a
module-level function and tasks plain data; only our own objects cross, never files.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from lora_wise.errors import ExecutorError

EXECUTORS = ("inprocess", "pool", "ray")


@dataclass
class TaskResult:
    """The outcome of one task: ``value`` when ``ok``, else ``error`` (one line) and ``details``."""

    index: int  # position in the task list given to run_tasks
    task: Any
    ok: bool
    value: Any = None
    error: str | None = None
    details: str | None = None  # the traceback, for logs


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    executor: str = "inprocess",
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    ray_address: str | None = None,
    progress: Callable[[TaskResult], None] | None = None,
    key: Callable[[Any], str] = str,
) -> list[TaskResult]:
    """Run ``fn(task)`` for every task (of this shard); results come back in task order.

    ``progress`` is called in this process with each result as soon as it is known.
    ``key`` names a task for sharding; it must be stable across runs (e.g. a job id).
    """
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ExecutorError(f"workers must be >= 1, got {workers}")
    tasks = select_shard(tasks, shard, key) if shard else list(tasks)
    report = progress or (lambda _result: None)
    if executor == "ray" or ray_address:
        results = _run_ray(fn, tasks, ray_address or "local", workers, report)
    elif executor == "pool" and workers > 1 and len(tasks) > 1:
        results = _run_pool(fn, tasks, workers, report)
    else:
        results = []
        for index, task in enumerate(tasks):
            results.append(_call(fn, index, task))
            report(results[-1])
    return sorted(results, key=lambda r: r.index)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8): shard 2 of 8, counted from 0."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ExecutorError(f"--shard wants I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ExecutorError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return index, count


def shard_of(key: str, count: int) -> int:
    """The shard a key belongs to: CRC32 (stable across processes and Python versions, unlike hash())."""
    return zlib.crc32(key.encode("utf-8")) % count


def select_shard(items: Iterable[Any], shard: tuple[int, int], key: Callable[[Any], str] = str) -> list[Any]:
    index, count = shard
    return [item for item in items if shard_of(key(item), count) == index]


def init_pool_worker() -> None:
    """Pool initializer: die with the parent, then go single-threaded."""
    _die_with_parent()
    init_worker()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies.

    Without it, killing the runner leaves workers finishing their task and writing files while
    the rerun trains the same jobs. Elsewhere (macOS, Windows) this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def init_worker() -> None:
    """Make a worker single-threaded before it touches torch (pool initializer, Ray task prologue)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch
    except ImportError:  # the executors also serve torch-free tasks
        return
    torch.set_num_threads(1)


def _call(fn: Callable[[Any], Any], index: int, task: Any) -> TaskResult:
    try:
        return TaskResult(index, task, True, value=fn(task))
    except Exception as exc:  # one failing task must not stop the others: report it instead
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        return TaskResult(index, task, False, error=message, details=traceback.format_exc())


def _run_pool(fn: Callable, tasks: list, workers: int, report: Callable) -> list[TaskResult]:
    """A process pool that survives a worker's death (OOM, segfault).

    At most ``workers`` tasks are in flight, so when a worker dies the suspects are known: they are
    run again one at a time in a fresh process; the one that kills its process again is failed,
    the others complete. The remaining tasks go on in a fresh pool.
    """
    queue = deque(enumerate(tasks))
    results: list[TaskResult] = []
    while queue:
        suspects = _run_window(fn, queue, workers, results, report)
        for index, task in suspects:
            if _run_window(fn, deque([(index, task)]), 1, results, report):
                results.append(
                    TaskResult(index, task, False, error="the worker process died (killed or crashed)")
                )
                report(results[-1])
    return results


def _run_window(fn: Callable, queue: deque, width: int, results: list, report: Callable) -> list:
    """Run tasks from ``queue`` with ``width`` in flight; on a dead worker, return the in-flight ones."""
    ctx = get_context("spawn")
    with ProcessPoolExecutor(width, mp_context=ctx, initializer=init_pool_worker) as pool:
        in_flight: dict[Future, tuple[int, Any]] = {}
        while queue or in_flight:
            while queue and len(in_flight) < width:
                index, task = queue.popleft()
                in_flight[pool.submit(_call, fn, index, task)] = (index, task)
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                if not isinstance(future.exception(), BrokenProcessPool):
                    in_flight.pop(future)
                    results.append(future.result())
                    report(results[-1])
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                return list(in_flight.values())
    return []


def _run_ray(fn: Callable, tasks: list, address: str, workers: int, report: Callable) -> list[TaskResult]:
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if address == "local":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as exc:
            raise ExecutorError(f"cannot connect to Ray at {address!r}: {exc}".splitlines()[0]) from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus > 0 else {"num_cpus": 1}
        remote = ray.remote(_ray_call).options(**resources)
        refs = {remote.remote(fn, i, t): i for i, t in enumerate(tasks)}
        results = []
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            index = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # the task's worker died, or Ray lost it
                result = TaskResult(
                    index, tasks[index], False, error=f"Ray: {type(exc).__name__}: {exc}"[:300]
                )
            results.append(result)
            report(result)
        return results
    finally:
        if started_here:
            ray.shutdown()


def _ray_call(fn: Callable, index: int, task: Any) -> TaskResult:
    init_worker()
    return _call(fn, index, task)


def import_ray():
    """The ``ray`` module, or an ExecutorError saying how to install it (shared with the crawl)."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("the Ray executor needs Ray: pip install 'lora-wise[ray]'") from None
    return ray
