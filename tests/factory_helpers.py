"""A small real stand-in for ``lora_wise.factory.train.train_group``: it writes the factory's on-disk format.

Per job and snapshot step: ``step-SSSSS.safetensors`` (diffusers-format LoRA keys, float32, header
metadata ``lora_wise`` = the sidecar JSON) and ``step-SSSSS.json``; ``done.json`` last; every file
goes to a temp name first and is renamed. The tensors are seeded by (job, step), so a retrained job
rewrites the same bytes, as the real trainer does. ``FAKE_TRAIN_SLEEP`` (seconds per snapshot) slows
it down so a test can kill a run midway; ``FAKE_TRAIN_CALLS`` names a file that logs every group.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_wise.factory.jobs import TrainJob

LAYERS = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0",
]


def fake_train_group(jobs: list[TrainJob], out_dir: Path, progress=None) -> list[Path]:
    if os.environ.get("FAKE_TRAIN_CALLS"):
        with open(os.environ["FAKE_TRAIN_CALLS"], "a") as log:
            log.write(json.dumps([job.job_id for job in jobs]) + "\n")
    if any(job.micro_dataset == "pool:broken" for job in jobs):
        raise RuntimeError("cannot open micro-dataset pool:broken")
    sleep = float(os.environ.get("FAKE_TRAIN_SLEEP", "0"))
    folders = []
    for job in jobs:
        folder = Path(out_dir) / job.job_id
        folder.mkdir(parents=True, exist_ok=True)
        for step in range(job.snapshot_every, job.steps + 1, job.snapshot_every):
            time.sleep(sleep)
            write_snapshot(folder, job, step)
        _write_atomic(folder / "done.json", json.dumps({"model_id": job.job_id, "steps": job.steps}).encode())
        folders.append(folder)
    return folders


def write_snapshot(folder: Path, job: TrainJob, step: int) -> None:
    sidecar = {
        "model_id": job.job_id, "job": job.to_dict(), "step": step, "dataset_size": job.dataset_size,
        "micro_dataset": job.micro_dataset, "image_ids": [f"x/{i:04d}" for i in range(job.dataset_size)],
        "backbone": job.backbone, "rank": job.rank, "alpha": job.alpha, "recipe": {"lr": job.learning_rate},
    }  # fmt: skip
    gen = torch.Generator().manual_seed(zlib.crc32(f"{job.job_id}@{step}".encode()))
    tensors = {}
    for layer in LAYERS:
        tensors[f"{layer}.lora_A.weight"] = torch.randn(job.rank, 32, generator=gen)
        tensors[f"{layer}.lora_B.weight"] = torch.randn(32, job.rank, generator=gen) / job.dataset_size
    name = f"step-{step:05d}"
    tmp = folder / f"{name}.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"lora_wise": json.dumps(sidecar)})
    os.replace(tmp, folder / f"{name}.safetensors")
    _write_atomic(folder / f"{name}.json", json.dumps(sidecar).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
