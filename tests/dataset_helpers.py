"""Fixtures of the dataset tests: small factory-format folders and upstream-format parquet files.

The factory folders follow the shared on-disk contract (``<out>/<job_id>/step-SSSSS.safetensors``
with diffusers ``lora_A``/``lora_B`` keys and the sidecar JSON in the header key ``lora_wise``,
``step-SSSSS.json``, ``done.json`` last), written with the real safetensors library. Matrices are
random low-rank factors whose scale depends on the dataset size, so spectra differ per model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from lora_wise import LoraLayer, LoraWeights
from lora_wise.factory.jobs import TrainJob

#: A handful of SD1.5-named layers (module path -> (out d, in k)), deliberately out of natural order.
TINY_LAYERS: dict[str, tuple[int, int]] = {
    "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (32, 16),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": (32, 32),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (32, 16),
    "unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v": (32, 32),
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (64, 64),
    "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q": (64, 64),
}


def random_lora(
    rng: np.random.Generator, rank: int, size: int, layers=None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (A (r, k), B (d, r)), float32, with a norm that falls with the dataset size."""
    out = {}
    for name, (d, k) in (layers or TINY_LAYERS).items():
        a = rng.normal(size=(rank, k)).astype(np.float32) / np.sqrt(k)
        b = (rng.normal(size=(d, rank)) * 0.02 / np.sqrt(size)).astype(np.float32)
        out[name] = (a, b)
    return out


def weights_of(matrices: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> LoraWeights:
    """The in-memory LoRA of ``matrices``: what any reader of the file should return."""
    layers = {}
    for name, (a, b) in matrices.items():
        layers[name] = LoraLayer(name, "lora", a, b, alpha, alpha / a.shape[0])
    return LoraWeights(layers, "diffusers")


def write_job(out: Path, job: TrainJob, steps: list[int], seed: int = 0, done: bool = True) -> dict:
    """One job folder in the factory format; returns {step: matrices} for checking."""
    folder = out / job.job_id
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for step in steps:
        matrices = random_lora(rng, job.rank, job.dataset_size)
        sidecar = {
            "model_id": job.job_id,
            "job": job.to_dict(),
            "step": step,
            "dataset_size": job.dataset_size,
            "micro_dataset": job.micro_dataset,
            "image_ids": [f"{job.micro_dataset}/{i}" for i in range(job.dataset_size)],
            "backbone": job.backbone,
            "rank": job.rank,
            "alpha": job.alpha,
            "recipe": {"learning_rate": job.learning_rate, "steps": job.steps, "batch_size": job.batch_size},
        }
        tensors = {}
        for name, (a, b) in matrices.items():
            tensors[f"{name}.lora_A.weight"] = a
            tensors[f"{name}.lora_B.weight"] = b
        save_file(
            tensors, str(folder / f"step-{step:05d}.safetensors"), metadata={"lora_wise": json.dumps(sidecar)}
        )
        (folder / f"step-{step:05d}.json").write_text(json.dumps(sidecar))
        written[step] = matrices
    if done:
        (folder / "done.json").write_text(json.dumps({"steps": steps}))
    return written


def make_factory(out: Path, n_micro: int = 4, sizes=(1, 10, 20), steps=(100, 200), rank: int = 8,
                 range_name: str = "medium", backbone: str = "tiny-sd") -> dict:  # fmt: skip
    """A factory output folder: n_micro micro-datasets × sizes; returns {(job_id, step): matrices}."""
    truth = {}
    seed = 0
    for m in range(n_micro):
        for size in sizes:
            job = TrainJob(backbone=backbone, range_name=range_name, dataset_size=size,
                           micro_dataset=f"pool:concept-{m}", rank=rank, steps=max(steps),
                           snapshot_every=100)  # fmt: skip
            for step, matrices in write_job(out, job, list(steps), seed=seed).items():
                truth[(job.job_id, step)] = (job, matrices)
            seed += 1
    return truth


def upstream_column(name: str, kind: str) -> str:
    """Upstream's column name: ``unet.<path>.lora.down.weight`` (A) / ``.lora.up.weight`` (B)."""
    return f"{name}.lora.{kind}.weight"


def write_upstream_parquet(path: Path, rows: list[tuple[int, str, dict]], row_group_size: int = 2) -> None:
    """An upstream-format file: ``label``, ``name`` and one FLAT float64 list column per matrix."""
    names = list(rows[0][2])
    columns: dict[str, list] = {"label": [r[0] for r in rows], "name": [r[1] for r in rows]}
    for name in names:
        columns[upstream_column(name, "down")] = [r[2][name][0].astype(np.float64).ravel() for r in rows]
        columns[upstream_column(name, "up")] = [r[2][name][1].astype(np.float64).ravel() for r in rows]
    schema = pa.schema(
        [("label", pa.int64()), ("name", pa.string())]
        + [(c, pa.list_(pa.float64())) for c in columns if c not in ("label", "name")]
    )
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)


@pytest.fixture(autouse=True)
def isolated_datasets_cache(tmp_path, monkeypatch):
    """Each test's ``datasets`` cache in its own tmp folder (imported into the test modules):
    ``datasets`` keys a local folder's cache by folder name and config, not content."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
