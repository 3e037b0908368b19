"""The benchmark factory's runner: plan the jobs of a grid, train the unfinished ones, resume after a kill.

A job is finished when ``<out>/<job_id>/done.json`` exists (the trainer writes it last, and every
file it writes goes to a temp name first and is renamed). So the plan after a kill is simply the jobs
without ``done.json``; their folders may hold complete snapshots of the killed run (retraining rewrites
them under the same names: seed 0, the same images, so the same bytes) and temp files, which are removed.

Unfinished jobs are grouped for the trainer, which trains a group in one batched pass: a group shares
everything that shapes the batched computation (backbone, rank, steps, batch, learning rate, ...).
Groups run through :func:`lora_wise.executors.run_tasks` (in-process, process pool, shard or Ray).
"""

from __future__ import annotations

import importlib
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lora_wise._files import exclusive_lock
from lora_wise.errors import FactoryError
from lora_wise.executors import TaskResult, run_tasks, select_shard
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.snapshots import is_done, job_folder, remove_temp_files, snapshot_steps

#: Jobs per trained group: the trainer batches a group into one forward pass (docs/factory.md has the rates).
DEFAULT_GROUP_SIZE = 32
DEFAULT_TRAINER = "lora_wise.factory.train:train_group"


def group_key(job: TrainJob) -> tuple:
    """What the jobs of one trained group share: also their defences (the trainer could mix them,
    but then one group would span several configs and Opacus' absence would fail plain jobs). Not
    their seed: each job draws from its own generators, so a leak run's victims, each with its own
    seed, still train 25 to a pass and not one by one."""
    return (job.backbone, job.rank, job.steps, job.snapshot_every, job.batch_size, job.learning_rate,
            job.resolution, job.target_modules, job.augment, job.dp_epsilon, job.dp_delta,
            job.dp_clip)  # fmt: skip


def group_jobs(
    jobs: list[TrainJob], group_size: int = DEFAULT_GROUP_SIZE, multiple_of: int = 1
) -> list[list[TrainJob]]:
    """Consecutive chunks of at most ``group_size`` jobs sharing a ``group_key``, in plan order; each
    key's chunks as even as their count allows, which is rounded up to a multiple of ``multiple_of``
    (the workers: 32 + 32 + 32 + 32 + 22 on 2 workers leave one training alone in the last round,
    6 x 25 keep both busy to the end)."""
    if group_size < 1:
        raise FactoryError(f"group size must be >= 1, got {group_size}")
    by_key: dict[tuple, list[TrainJob]] = {}
    for job in jobs:
        by_key.setdefault(group_key(job), []).append(job)
    out = []
    for same in by_key.values():
        rounds = math.ceil(math.ceil(len(same) / group_size) / multiple_of)
        count = min(len(same), rounds * multiple_of)
        small, extra = divmod(len(same), count)  # the first ``extra`` chunks take one job more
        bounds = [i * small + min(i, extra) for i in range(count + 1)]
        out += [same[a:b] for a, b in itertools.pairwise(bounds)]
    return out


@dataclass
class Plan:
    """What a run will do: the jobs of this shard, those already done, and the groups to train."""

    out_dir: Path
    jobs: list[TrainJob]
    done: list[TrainJob]
    groups: list[list[TrainJob]]
    shard: tuple[int, int] | None = None

    @property
    def todo(self) -> list[TrainJob]:
        return [job for group in self.groups for job in group]

    @property
    def model_steps(self) -> int:
        return sum(job.steps for job in self.todo)

    def as_dict(self) -> dict[str, Any]:
        """The plan for machines (``--dry-run --json``)."""
        configs = Counter(job.config_name for job in self.jobs)
        done = Counter(job.config_name for job in self.done)
        todo = Counter(job.config_name for job in self.todo)
        return {
            "out": str(self.out_dir),
            "shard": list(self.shard) if self.shard else None,
            "jobs": len(self.jobs),
            "done": len(self.done),
            "to_run": len(self.todo),
            "model_steps": self.model_steps,
            "configs": {c: {"jobs": n, "done": done[c], "to_run": todo[c]} for c, n in configs.items()},
            "groups": [[job.job_id for job in group] for group in self.groups],
        }


def make_plan(
    jobs: list[TrainJob],
    out_dir: Path,
    group_size: int = DEFAULT_GROUP_SIZE,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    workers: int = 1,
    skip: Collection[str] = frozenset(),
) -> Plan:
    """Shard the grid's jobs (by job id, so a shard's jobs never change), skip finished ones, group the rest.

    ``limit`` caps the number of jobs to run now (the first unfinished ones, in grid order).
    With several ``workers``, groups shrink so that every worker gets one and the last round is full.
    ``skip``: job ids finished elsewhere (already built into a dataset), counted as done.
    """
    out_dir = Path(out_dir)
    mine = select_shard(jobs, shard, key=lambda job: job.job_id) if shard else list(jobs)
    finished = {job.job_id for job in mine if job.job_id in skip or is_done(out_dir, job)}
    done = [job for job in mine if job.job_id in finished]
    todo = [job for job in mine if job.job_id not in finished]
    if limit is not None:
        todo = todo[: max(limit, 0)]
    from lora_wise.factory.defences import check_jobs  # imports torch, which planning otherwise does not

    check_jobs(todo)  # DP with batches > 1, or without Opacus: refused before anything starts
    return Plan(out_dir, mine, done, group_jobs(todo, group_size, multiple_of=workers), shard)


def remove_partial_files(out_dir: Path, jobs: list[TrainJob]) -> int:
    """Delete temp files a killed trainer left in unfinished job folders; return how many."""
    return sum(remove_temp_files(job_folder(out_dir, job)) for job in jobs)


def train_task(task: dict[str, Any]) -> list[str]:
    """Train one group (runs in a worker): ``{"trainer": "mod:fn", "out_dir": str, "jobs": [job dicts]}``."""
    trainer = load_trainer(task["trainer"])
    jobs = [TrainJob.from_dict(d) for d in task["jobs"]]
    return [str(p) for p in trainer(jobs, Path(task["out_dir"]))]


def load_trainer(spec: str) -> Callable[..., list]:
    """``"package.module:function"`` -> the function."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr or "train_group")
    except (ImportError, AttributeError) as exc:
        raise FactoryError(f"cannot load the trainer {spec!r}: {exc}") from None


@dataclass
class RunSummary:
    """The outcome of a run: every job of the plan is either completed or failed (with the reason)."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job id -> error
    seconds: float = 0.0
    model_steps: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        rate = self.model_steps / self.seconds if self.seconds else 0.0
        return {"completed": len(self.completed), "failed": self.failed, "seconds": round(self.seconds, 2),
                "model_steps": self.model_steps, "model_steps_per_s": round(rate, 3)}  # fmt: skip


def run_plan(
    plan: Plan,
    executor: str = "inprocess",
    workers: int = 1,
    ray_address: str | None = None,
    trainer: str = DEFAULT_TRAINER,
    console: Console | None = None,
) -> RunSummary:
    """Train every group of the plan, showing progress; a failed group is reported, the others go on."""
    load_trainer(trainer)  # fail now, with one line, rather than once per group in the workers
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(plan.out_dir, plan.shard):
        return _run_locked(plan, executor, workers, ray_address, trainer, console)


@contextmanager
def run_lock(out_dir: Path, shard: tuple[int, int] | None) -> Iterator[None]:
    """Refuse a second runner of the same plan on the same folder while the first is alive.

    An OS lock (flock): the kernel drops it when its process dies, so a killed run never blocks
    its rerun. Shards take separate locks so that an array of shards can share one folder.
    """
    name = f".generate-shard-{shard[0]}-of-{shard[1]}.lock" if shard else ".generate.lock"
    with exclusive_lock(
        Path(out_dir) / name,
        lambda: FactoryError(f"another generate is already running on {out_dir} ({name})"),
    ):
        yield


def _run_locked(plan: Plan, executor: str, workers: int, ray_address: str | None, trainer: str,
                console: Console | None) -> RunSummary:  # fmt: skip
    remove_partial_files(plan.out_dir, plan.todo)
    tasks = [
        {"trainer": trainer, "out_dir": str(plan.out_dir), "jobs": [j.to_dict() for j in g]}
        for g in plan.groups
    ]
    summary = RunSummary()
    console = console or Console(stderr=True, log_path=False)
    display = _Display(plan, console)
    start = time.monotonic()

    def on_result(result: TaskResult) -> None:
        group = plan.groups[result.index]
        for job in group:
            if result.ok and is_done(plan.out_dir, job):
                summary.completed.append(job.job_id)
            else:
                summary.failed[job.job_id] = result.error or "the trainer returned without writing done.json"
        display.group_finished(group, result)

    with display, _one_torch_thread(executor != "ray" and not ray_address):
        run_tasks(
            train_task, tasks, executor=executor, workers=workers, ray_address=ray_address, progress=on_result
        )
    summary.seconds = time.monotonic() - start
    summary.model_steps = display.model_steps_done() - display.baseline
    return summary


@contextmanager
def _one_torch_thread(active: bool) -> Iterator[None]:
    """Train in this process with one torch thread, as the pool's workers do.

    Measured on 2 cores (tiny-sd, 16 jobs): torch's default 2 intra-op threads gave 1.2
    model-steps/s, one thread 37: the many tiny ops of a small UNet drown in thread syncs.
    """
    import torch

    before = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Display:
    """A rich progress bar over model-steps, read from the snapshots on disk so it works for every
    executor."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan, self.console = plan, console
        self.jobs_done = 0
        self.total_jobs = len(plan.todo)
        self.start = time.monotonic()
        self.baseline = self.model_steps_done()  # snapshots left by a killed run
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("jobs {task.fields[jobs]}"),
            TextColumn("{task.fields[rate]} model-steps/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
        )
        self.task = self.progress.add_task(
            "training", total=max(plan.model_steps, 1), jobs="", rate="-", eta="-"
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True)

    def __enter__(self) -> _Display:
        self.progress.start()
        self._refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.progress.stop()

    def model_steps_done(self) -> int:
        """Σ over the plan's jobs of the last snapshot step on disk (``steps`` once done)."""
        total = 0
        for job in self.plan.todo:
            if is_done(self.plan.out_dir, job):
                total += job.steps
            else:
                total += min(max(snapshot_steps(job_folder(self.plan.out_dir, job)), default=0), job.steps)
        return total

    def group_finished(self, group: list[TrainJob], result: TaskResult) -> None:
        finished = sum(is_done(self.plan.out_dir, job) for job in group)
        self.jobs_done += finished
        if result.ok:
            self.console.log(f"group of {len(group)} done ({group[0].config_name}, {finished} complete)")
        else:
            self.console.log(
                f"[red]group of {len(group)} failed[/]: {result.error} (first job {group[0].job_id})"
            )
        self._refresh()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(2.0):
            self._refresh()

    def _refresh(self) -> None:
        done = self.model_steps_done()
        elapsed = time.monotonic() - self.start
        rate = (done - self.baseline) / elapsed if elapsed > 0 else 0.0
        remaining = self.plan.model_steps - done
        eta = _hms(remaining / rate) if rate > 0 else "-"
        self.progress.update(self.task, completed=done, jobs=f"{self.jobs_done}/{self.total_jobs}",
                             rate=f"{rate:.1f}", eta=eta)  # fmt: skip


def _hms(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
