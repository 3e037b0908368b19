"""The factory's on-disk format, with one owner: every reader and writer of a factory folder goes here.

    <out>/<job_id>/step-SSSSS.safetensors   diffusers LoRA keys; header key ``lora_wise`` = the sidecar
    <out>/<job_id>/step-SSSSS.json          the same sidecar, readable without opening the LoRA
    <out>/<job_id>/done.json                written last: the job is finished

``job_id`` is ``<config>/<micro-dataset>/nNNNN`` (``TrainJob.job_id``), so a job's config is the
first part of its id. Every file is written to a hidden temp name and renamed, so a snapshot is
complete exactly when both its LoRA and its sidecar exist, and a job exactly when ``done.json`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_wise._files import atomic_write_text, is_temp
from lora_wise.errors import InvalidLoraFile
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.micro_datasets import matches

DONE = "done.json"
#: The safetensors header key that holds the sidecar (read back by ``lora_wise.lora.metadata``).
HEADER_KEY = "lora_wise"
_SIDECAR_NAME = re.compile(r"^step-(\d+)\.json$")


def stem(step: int) -> str:
    return f"step-{step:05d}"


def lora_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"{stem(step)}.safetensors"


def sidecar_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"{stem(step)}.json"


def job_folder(out_dir: Path, job: TrainJob) -> Path:
    return Path(out_dir) / job.job_id


def folder_done(folder: Path) -> bool:
    return (Path(folder) / DONE).is_file()


def is_done(out_dir: Path, job: TrainJob) -> bool:
    return folder_done(job_folder(out_dir, job))


def snapshot_steps(folder: Path) -> list[int]:
    """Steps of the sidecars in one job folder (complete or not), ascending."""
    if not Path(folder).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(folder).iterdir() if (m := _SIDECAR_NAME.match(p.name)))


@dataclass(frozen=True)
class Sidecar:
    """What the trainer records next to every snapshot (and inside its header)."""

    model_id: str
    job: TrainJob
    step: int
    dataset_size: int
    micro_dataset: str
    backbone: str
    rank: int
    alpha: float
    image_ids: list = field(default_factory=list)
    recipe: dict = field(default_factory=dict)

    @property
    def config(self) -> str:
        return self.job.config_name

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "job": self.job.to_dict(), "step": self.step,
                "dataset_size": self.dataset_size, "micro_dataset": self.micro_dataset,
                "image_ids": self.image_ids, "backbone": self.backbone, "rank": self.rank,
                "alpha": self.alpha, "recipe": self.recipe}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        """Older sidecars may lack the copies of the job's fields: the job fills them in."""
        job = TrainJob.from_dict(data["job"])
        return cls(model_id=str(data.get("model_id", job.job_id)), job=job, step=int(data["step"]),
                   dataset_size=int(data.get("dataset_size", job.dataset_size)),
                   micro_dataset=str(data.get("micro_dataset", job.micro_dataset)),
                   backbone=str(data.get("backbone", job.backbone)), rank=int(data.get("rank", job.rank)),
                   alpha=float(data.get("alpha", job.alpha)), image_ids=list(data.get("image_ids", [])),
                   recipe=dict(data.get("recipe", {})))  # fmt: skip

    @classmethod
    def read(cls, path: Path) -> Sidecar:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidLoraFile(f"{path}: not a factory sidecar ({exc})") from None


@dataclass(frozen=True)
class Snapshot:
    lora: Path
    sidecar: Sidecar

    @property
    def folder(self) -> Path:
        return self.lora.parent


def write_snapshot(folder: Path, sidecar: Sidecar, write_lora) -> None:
    """``write_lora(path, header_metadata)`` writes the LoRA; the sidecar JSON follows it, so a
    sidecar on disk always means its LoRA is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = sidecar.to_dict()
    write_lora(
        lora_path(folder, sidecar.step), {HEADER_KEY: json.dumps(meta, default=_json_default), "format": "pt"}
    )
    atomic_write_text(sidecar_path(folder, sidecar.step), json.dumps(meta, indent=1, default=_json_default))


def mark_done(folder: Path, info: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / DONE, json.dumps(info, indent=1, default=_json_default))


def iter_snapshots(root: Path, step: int | None = None, config: str | None = None,
                   finished_jobs: bool = False) -> Iterator[Snapshot]:  # fmt: skip
    """Every complete snapshot under ``root`` (LoRA and sidecar both there), in path order; of one
    step and config when given; only of finished jobs (``done.json``) when ``finished_jobs``."""
    pattern = f"{stem(step)}.json" if step is not None else "step-*.json"
    for path in sorted(Path(root).rglob(pattern)):
        lora = path.with_suffix(".safetensors")
        if not lora.is_file() or (finished_jobs and not folder_done(path.parent)):
            continue
        sidecar = Sidecar.read(path)
        if config is None or sidecar.config == config:
            yield Snapshot(lora, sidecar)


def finished_snapshots(out_dir: Path, step: int, config: str | None = None,
                       micro_datasets: Collection[str] = ()) -> dict[tuple[str, int], Path]:  # fmt: skip
    """(micro-dataset, size) -> the LoRA file of every complete snapshot at ``step``, of one config
    and of the micro-datasets matching any glob when given (for the diagnostics scripts)."""
    return {(s.sidecar.micro_dataset, s.sidecar.dataset_size): s.lora
            for s in iter_snapshots(out_dir, step, config)
            if not micro_datasets or matches(s.sidecar.micro_dataset, micro_datasets)}  # fmt: skip


def remove_temp_files(folder: Path) -> int:
    """Delete the temp files a killed trainer left in a job folder; return how many."""
    removed = 0
    for path in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if path.is_file() and (is_temp(path) or ".tmp" in path.name):  # ".tmp" also catches older names
            path.unlink()
            removed += 1
    return removed


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
