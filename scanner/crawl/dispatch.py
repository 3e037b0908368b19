"""Who runs the crawl's tasks: a local thread pool (default) or a Ray cluster (``--ray ADDRESS``).

Both hand back ``concurrent.futures.Future`` objects, so the crawl loop is the same for both. Threads
suit a scan: it waits on the network most of the time and its numpy work releases the GIL. The crawl
loop keeps at most ``--jobs`` tasks in flight, so a cluster never holds more claimed targets than
that, and the state stays on the machine that runs the loop (workers only return outcome dicts).
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import Any

from lora_wise.errors import ExecutorError
from lora_wise.executors import import_ray, init_worker

from .task import TaskOptions, run_task

# Settings the workers need to reach the same sources; tokens are not sent (set them on the nodes).
FORWARDED_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "CIVITAI_ENDPOINT", "LORA_WISE_BANKS")


class ThreadDispatcher:
    """``jobs`` daemon threads taking tasks from a queue.

    Daemon threads, not a ThreadPoolExecutor: the executor's threads are joined at exit, so Ctrl-C
    would wait for every download in flight. These die with the process; the loop has handed their
    targets back to ``pending`` by then, and the worker never writes the state.
    """

    def __init__(self, jobs: int) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"lora-scan-crawl-{i}", daemon=True)
                        for i in range(jobs)]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            future, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(run_task(*args))
            except BaseException as exc:  # run_task catches what targets cause; this is a bug: report it
                future.set_exception(exc)

    def submit(self, target: str, listing: dict[str, Any] | None, options: TaskOptions) -> Future:
        future: Future = Future()
        self.queue.put((future, (target, listing, options)))
        return future

    def close(self, wait: bool = True) -> None:
        for _ in self.threads:
            self.queue.put(None)
        if wait:
            for thread in self.threads:
                thread.join()


class RayDispatcher:
    """Tasks as Ray remote functions; ``local`` starts a private Ray instance with ``jobs`` CPUs."""

    def __init__(self, address: str, jobs: int) -> None:
        ray = import_ray()
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "runtime_env": {"env_vars": env}}  # fmt: skip
            try:
                if address == "local":
                    ray.init(num_cpus=jobs, **options)
                else:
                    ray.init(address=address, **options)
            except Exception as exc:  # Ray's own errors: unreachable cluster, bad address
                raise ExecutorError(f"cannot connect to Ray at {address!r}: {exc}".splitlines()[0]) from None
        self.remote = ray.remote(ray_task).options(num_cpus=1, max_retries=1)

    def submit(self, target: str, listing: dict[str, Any] | None, options: TaskOptions) -> Future:
        return self.remote.remote(target, listing, options).future()

    def close(self, wait: bool = True) -> None:
        if self.started_here:
            self.ray.shutdown()


def ray_task(target: str, listing: dict[str, Any] | None, options: TaskOptions) -> dict[str, Any]:
    init_worker()  # one BLAS/torch thread per task: the cluster's CPUs are counted per task
    return run_task(target, listing, options)


def dispatcher(jobs: int, ray_address: str | None) -> ThreadDispatcher | RayDispatcher:
    return RayDispatcher(ray_address, jobs) if ray_address else ThreadDispatcher(jobs)
