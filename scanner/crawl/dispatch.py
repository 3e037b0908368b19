"""Who runs the crawl's tasks: local worker threads (default) or a Ray cluster (``--ray ADDRESS``).

Both hand back ``concurrent.futures.Future`` objects, so the crawl loop is the same for both. The
crawl loop keeps at most ``--jobs`` tasks in flight, so a cluster never holds more claimed targets
than that, and the state stays on the machine that runs the loop (workers only return outcome dicts).

Locally each thread hands its tasks to a worker process of its own (forked from a forkserver that
has the scanner imported), under a deadline per target and a memory limit per worker: one
pathological file (a scan that never ends, a file that asks for terabytes) costs one ``error``
row and a fresh worker, and the other workers go on. A thread only waits for its process.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import queue
import signal
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from lora_wise.errors import ExecutorError
from lora_wise.executors import import_ray, init_worker

from ..download import format_size
from .forkserver_init import die_with_parent
from .task import TaskOptions, run_task

# Settings the workers need to reach the same sources; tokens are not sent (set them on the nodes).
FORWARDED_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "CIVITAI_ENDPOINT", "LORA_WISE_BANKS")


@dataclass(frozen=True)
class Limits:
    """What a target may cost: wall-clock seconds per target, and memory per worker (bytes of address
    space beyond what the worker holds when it starts). None for both: tasks run in the threads."""

    seconds: float | None = 900.0
    memory: int | None = 4 * 1024**3

    @property
    def isolated(self) -> bool:
        return self.seconds is not None or self.memory is not None


def limit_outcome(reason: str) -> dict[str, Any]:
    """The outcome of a target stopped by its limits: a final ``error`` (a rerun would stop again)."""
    return {
        "status": "error",
        "error": reason,
        "header": None,
        "result": None,
        "bytes": 0,
        "retry_after": None,
    }


class BoundedWorker:
    """One worker process that runs targets one after another, and is killed (and replaced by a
    fresh one for the next target) when a target runs past ``limits.seconds`` or kills it.

    Long-lived rather than one process per target: the reader's and the banks' caches (a bank is
    fitted once per step) stay warm across targets, so the limits cost no per-target start-up.
    """

    def __init__(self, limits: Limits, running: set) -> None:
        self.limits, self.running = limits, running
        self.process: Any = None
        self.conn: Connection | None = None

    def run(self, target: str, listing: dict[str, Any] | None, options: TaskOptions) -> dict[str, Any]:
        if self.process is None:
            self._start()
        assert self.conn is not None
        timed_out = False
        try:
            self.conn.send((target, listing, options))
            if self.conn.poll(self.limits.seconds):
                return self.conn.recv()
            timed_out = True
        except (EOFError, OSError):  # the worker died: the memory limit, a crash, a kill
            pass
        return limit_outcome(_death_reason(self.stop(), self.limits, timed_out))

    def _start(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self.conn, child = ctx.Pipe()
        # The worker sees the environment we see now (the forkserver's is the one it started with).
        context = {"env": dict(os.environ), "tempdir": tempfile.gettempdir(), "crawl": os.getpid()}
        self.process = ctx.Process(target=_worker, args=(child, self.limits.memory, context), daemon=True)
        self.process.start()
        child.close()
        self.running.add(self.process)

    def stop(self) -> int | None:
        """Kill the worker (if alive); its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join()
        self.running.discard(process)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return process.exitcode


def _death_reason(exitcode: int | None, limits: Limits, timed_out: bool) -> str:
    if timed_out and limits.seconds is not None:
        return (
            f"the scan ran past the {limits.seconds:g} s limit per target and was stopped "
            "(a pathological file or server; --target-timeout sets the limit)"
        )
    memory = f" (over the {format_size(limits.memory)} memory limit?)" if limits.memory else ""
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return f"the worker process died ({how}){memory}; the file was not scanned"


def _worker(conn: Connection, memory: int | None, context: dict[str, Any]) -> None:
    """In the worker process: the parent's environment and the limits, then tasks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us itself
    die_with_parent()  # SIGKILL when the forkserver goes, which goes with the crawl
    threading.Thread(target=_watch, args=(context["crawl"],), daemon=True).start()
    os.environ.clear()
    os.environ.update(context["env"])
    tempfile.tempdir = context["tempdir"]
    _refresh_hub_constants()
    init_worker()
    if memory is not None:
        _limit_memory(memory)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(run_task(*task))


def _limit_memory(extra: int) -> None:
    """RLIMIT_AS at what the process maps now plus ``extra``: the scanner's imports already map a few
    hundred MB (more with torch), so an absolute cap would count them against the file."""
    import resource

    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # not Linux: the deadline still bounds the task
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + extra if hard == resource.RLIM_INFINITY else min(mapped + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _watch(crawl: int) -> None:
    """End this worker within a tenth of a second of the crawl's end, however the crawl ended."""
    while True:
        try:
            os.kill(crawl, 0)
        except ProcessLookupError:
            os._exit(70)
        except PermissionError:  # pid reused by another user's process: the crawl is gone
            os._exit(70)
        time.sleep(0.1)


def _refresh_hub_constants() -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: the forkserver imported it long ago.
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = constants._is_true(os.environ.get("HF_HUB_OFFLINE"))


def _preload() -> list[str]:
    """What the forkserver imports once, so that no task pays for it: the scan, and torch (which the
    reader imports on a first scan: seconds, per task, without this)."""
    torch = ["torch"] if importlib.util.find_spec("torch") else []
    return ["scanner.crawl.forkserver_init", "scanner.crawl.task", *torch]


def _short_socket_folder() -> None:
    """The forkserver listens on an AF_UNIX socket in multiprocessing's temp folder, whose path the
    kernel caps at 107 bytes: under a long TMPDIR every crawl would fail to start. Pick that folder
    (once per process) in the system's /tmp then."""
    from multiprocessing import util

    saved = tempfile.tempdir
    if len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp"):
        tempfile.tempdir = "/tmp"
    try:
        util.get_temp_dir()  # cached for the process from now on
    finally:
        tempfile.tempdir = saved


def _start_forkserver() -> None:
    """Start the forkserver and wait until its imports are done, before any target is claimed: a crawl
    interrupted later never leaves a half-started forkserver importing on behind it."""
    _short_socket_folder()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_preload())
    probe = ctx.Process(target=os.getpid, daemon=True)
    probe.start()
    probe.join()


class ThreadDispatcher:
    """``jobs`` daemon threads taking tasks from a queue; each runs them in its bounded worker process.

    Daemon threads, not a ThreadPoolExecutor: the executor's threads are joined at exit, so Ctrl-C
    would wait for every download in flight. These die with the process (their children are killed
    on close); the loop has handed their targets back to ``pending`` by then, and the worker never
    writes the state.
    """

    def __init__(self, jobs: int, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.running: set = set()
        if self.limits.isolated:
            _start_forkserver()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, name=f"lora-scan-crawl-{i}", daemon=True) for i in range(jobs)
        ]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        worker = BoundedWorker(self.limits, self.running) if self.limits.isolated else None
        try:
            while (item := self.queue.get()) is not None:
                future, args = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(worker.run(*args) if worker is not None else run_task(*args))
                except BaseException as exc:  # run_task catches what targets cause; a bug: report it
                    future.set_exception(exc)
        finally:
            if worker is not None:
                worker.stop()

    def submit(self, target: str, listing: dict[str, Any] | None, options: TaskOptions) -> Future:
        future: Future = Future()
        self.queue.put((future, (target, listing, options)))
        return future

    def close(self, wait: bool = True) -> None:
        for _ in self.threads:
            self.queue.put(None)
        if not wait:
            for process in list(self.running):
                process.kill()
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
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "runtime_env": {"env_vars": env},
            }
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


def dispatcher(
    jobs: int, ray_address: str | None, limits: Limits | None = None
) -> ThreadDispatcher | RayDispatcher:
    return RayDispatcher(ray_address, jobs) if ray_address else ThreadDispatcher(jobs, limits)
