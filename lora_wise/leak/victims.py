"""Victims and shadows: one DreamBooth-LoRA per identity, trained through the factory's batched trainer.

The source paper's victim recipe (arXiv 2409.08482) scaled to the backbone: LoRA on ``to_q, to_v``
only, rank 8, all of an identity's views (at most 5), its own trigger token. Snapshots are the
factory's format (``lora_wise.factory.snapshots``), so a pilot resumes as the benchmark does.
``Recipe.defence`` trains every victim AND shadow under one of the factory's defences
(``lora_wise.factory.defences``): the attacker is assumed to know the victims' recipe.
``Recipe.vendors`` names the identities' two artwork vendors (``lora_wise.leak.identities``), by default
the backbone's own: Noto+Twemoji on tiny-sd, Noto+OpenMoji on tiny-sd-v2.
``Recipe.victim_seeds`` trains every victim with its own seed (LoRA init, noise, timesteps and DP
noise), derived from the run's seed and the victim's key, which the attacker's shadows do not share; off,
every LoRA of a run trains with the run's seed, as the factory's benchmark jobs do (the runs of
docs/leak.md), so the attacker's shadows share the victims' seed, which no real attacker could count on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_wise.errors import LeakError
from lora_wise.factory.defences import parse_defence
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.snapshots import job_folder, lora_path, snapshot_steps
from lora_wise.leak.identities import Identity, default_vendors, parse_vendors, write_identity_folders
from lora_wise.lora.safetensors_io import read_safetensors

LEAK_TARGETS = ("to_q", "to_v")
RANGE = "leak"


@dataclass(frozen=True)
class Recipe:
    """What every victim and shadow of one run shares (the backbone is a parameter: v1 now, v2 later)."""

    backbone: str = "tiny-sd"
    rank: int = 8
    steps: int = 1000
    snapshot_every: int = 250
    learning_rate: float = 1e-4
    seed: int = 0
    group_size: int = 25
    defence: str = "none"  # none, flip, dp:EPS or a mix such as flip,dp:10 (parse_defence)
    vendors: tuple[str, ...] | None = None  # None: the backbone's (a recipe.json without it is a v1 run's)
    victim_seeds: bool = False  # False: one seed for every LoRA (a recipe.json without it is such a run)

    def __post_init__(self) -> None:
        parse_defence(self.defence)  # a bad spec fails here, before any identity is drawn
        # resolved here so that recipe.json records the pair; a list (read back from JSON) becomes a tuple
        vendors = default_vendors(self.backbone) if self.vendors is None else parse_vendors(self.vendors)
        object.__setattr__(self, "vendors", vendors)

    def job(self, spec: str, n_views: int, seed: int | None = None) -> TrainJob:
        return TrainJob(
            backbone=self.backbone,
            range_name=RANGE,
            dataset_size=n_views,
            micro_dataset=spec,
            rank=self.rank,
            steps=self.steps,
            snapshot_every=self.snapshot_every,
            learning_rate=self.learning_rate,
            seed=self.seed if seed is None else seed,
            target_modules=LEAK_TARGETS,
            **parse_defence(self.defence),
        )


def identity_jobs(identities: list[Identity], root: Path, recipe: Recipe) -> dict[str, TrainJob]:
    """Identity key -> its training job (its views written under ``root/identities``)."""
    specs = write_identity_folders(identities, Path(root) / "identities")
    return {i.key: recipe.job(specs[i.key], len(i.views), victim_seed(recipe, i)) for i in identities}


def victim_seed(recipe: Recipe, ident: Identity) -> int | None:
    """A victim's own training seed under ``recipe.victim_seeds``, else None (the run's seed).

    A hash of the run's seed and the key, not a draw, so that it does not depend on which identities a
    run holds or their order; the shadows keep the run's seed, so a run with own victim seeds shares its
    shadows (and so its attack) with the run of the same seed without them."""
    if not (recipe.victim_seeds and ident.split == "victim"):
        return None
    digest = hashlib.sha256(f"{recipe.seed}:{ident.key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def train_identities(jobs: dict[str, TrainJob], root: Path, recipe: Recipe, workers: int = 1) -> None:
    """Train every job not finished yet through the factory's planner and runner: at most
    ``recipe.group_size`` per batched pass, the groups spread over ``workers`` processes, a killed run
    resumed from its finished groups. A failed group fails the run, after the others were trained."""
    from lora_wise.factory.runner import make_plan, run_plan

    plan = make_plan(list(jobs.values()), Path(root) / "loras", group_size=recipe.group_size, workers=workers)
    summary = run_plan(plan, executor="pool" if workers > 1 else "inprocess", workers=workers)
    if not summary.ok:
        job, error = next(iter(summary.failed.items()))
        raise LeakError(f"{len(summary.failed)} LoRA(s) failed to train, e.g. {job}: {error}")


def lora_folder(root: Path, job: TrainJob) -> Path:
    return job_folder(Path(root) / "loras", job)


def steps_of(root: Path, job: TrainJob) -> list[int]:
    return snapshot_steps(lora_folder(root, job))


def load_lora(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A factory snapshot as module name -> (A (r, in), B (out, r)), float32, in the file's layer order."""
    tensors = read_safetensors(path).tensors
    out = {}
    for key in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        name = key.removeprefix("unet.").removesuffix(".lora_A.weight")
        b = key.replace(".lora_A.", ".lora_B.")
        out[name] = (
            torch.from_numpy(np.array(tensors[key], np.float32)),
            torch.from_numpy(np.array(tensors[b], np.float32)),
        )
    return out


def load_snapshot(root: Path, job: TrainJob, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return load_lora(lora_path(lora_folder(root, job), step))
