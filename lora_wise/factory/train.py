"""The DreamBooth-LoRA trainer: several LoRAs trained at once, each exactly as if alone.

The recipe is diffusers' ``examples/dreambooth/train_dreambooth_lora.py`` with the paper's
settings (``lora_wise.factory.jobs``): epsilon-prediction MSE under the backbone's DDPM schedule, the
instance prompt ``a photo of sks <class>``, LoRA on the UNet's ``to_q, to_k, to_v, to_out.0``
with PEFT's init (A kaiming-uniform with a = sqrt(5), B zeros), lora_alpha = rank, AdamW
(betas 0.9/0.999, eps 1e-8, weight decay 1e-2), constant lr, gradient-norm clipping at 1.0,
one seed for every model.

Speed comes from three exact rewrites of that script:

- the text encoder is frozen, so the prompt is encoded once per job; the VAE is frozen, so
  each image is encoded once to its posterior (mean, std) and a latent is drawn per step as
  ``mean + std * noise`` from the job's generator, which is what ``latent_dist.sample()`` does;
- K jobs that share backbone, rank, steps, batch size and lr run in ONE batched UNet pass:
  every targeted Linear becomes ``StackedLoraLinear`` holding stacked A (K, r, in) and
  B (K, out, r) and applying job k's LoRA to job k's batch rows (nothing in the UNet mixes
  rows: GroupNorm and attention are per sample). The loss is the SUM over jobs of each job's
  own mean MSE, gradient clipping is per job, and AdamW is elementwise, so each job's update
  is its own;
- each job draws VAE noise, noise and timesteps from its own generator seeded with its seed,
  and its image order (a fresh permutation per epoch, as a shuffling DataLoader) from a second
  generator with the same seed, so with seed 0 everywhere only the images differ.

The defences (``lora_wise.factory.defences``: flip augmentation, DP-SGD) are per job too: a flip
job's mirrored images are encoded once beside the originals and its coins come from a generator
of its own; a DP job's gradient is clipped to its own C and noised from its own generator with
its own σ. A job without them draws exactly what it drew before they existed.

``tests/test_train.py`` checks the batched result against a plain PEFT-wrapped UNet trained
alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_wise.factory import defences
from lora_wise.factory.backbones import DiffusionBackbone, load_backbone
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.micro_datasets import open_micro_dataset
from lora_wise.factory.snapshots import Sidecar, folder_done, job_folder, mark_done, write_snapshot
from lora_wise.lora.safetensors_io import write_safetensors

#: The diffusers script's optimiser defaults that the paper did not change.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0

#: ``progress(step, steps)`` is called after every optimisation step of the group.
Progress = Callable[[int, int], None]


class StackedLoraLinear(torch.nn.Module):
    """A frozen Linear plus K LoRAs; rows [k*m, (k+1)*m) of the batch use LoRA k."""

    def __init__(self, base: torch.nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Parameter(lora_a)  # (K, r, in)
        self.lora_B = torch.nn.Parameter(lora_b)  # (K, out, r)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.lora_A.shape[0]
        xs = x.reshape(k, -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(xs, self.lora_A.transpose(1, 2)), self.lora_B.transpose(1, 2))
        return self.base(x) + self.scale * delta.reshape(*x.shape[:-1], -1)


@dataclass
class _JobData:
    job: TrainJob
    image_ids: list[str]
    mean: torch.Tensor  # (n, C, h, w) VAE posterior, unscaled
    std: torch.Tensor
    prompt_embeds: torch.Tensor  # (1, 77, D)
    added: dict
    noise_gen: torch.Generator
    order_gen: torch.Generator
    order: list[int] = field(default_factory=list)
    flipped: tuple[torch.Tensor, torch.Tensor] | None = None  # the mirrored images' (mean, std)
    flip_gen: torch.Generator | None = None
    max_norm: float = MAX_GRAD_NORM  # the clipping norm: C under DP
    noise_std: float = 0.0  # DP's σ·C
    dp_gen: torch.Generator | None = None


@dataclass
class _Gradients:
    """Each job's gradient treatment, as vectors over the K jobs: clipping, then DP noise."""

    max_norm: torch.Tensor  # (K,)
    noise_std: torch.Tensor  # (K,) 0: no noise
    dp_gens: list
    batch_size: int

    @classmethod
    def of(cls, data: list[_JobData], batch_size: int) -> _Gradients:
        return cls(torch.tensor([d.max_norm for d in data]), torch.tensor([d.noise_std for d in data]),
                   [d.dp_gen for d in data], batch_size)  # fmt: skip

    def apply(self, params: list[torch.Tensor]) -> None:
        _clip_per_job(params, self.max_norm)
        if (self.noise_std > 0).any():
            defences.add_dp_noise(params, self.noise_std, self.dp_gens, self.batch_size)


def target_module_names(unet: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """Linear modules PEFT would adapt for ``target_modules`` (name == t or endswith '.' + t)."""
    return [
        name
        for name, mod in unet.named_modules()
        if isinstance(mod, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]


def init_lora(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """PEFT's default LoRA init for each layer: A kaiming-uniform(a=sqrt 5) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, (_, fan_in) in shapes.items():
        a = torch.empty(rank, fan_in)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        out[name] = a
    return out


def train_group(
    jobs: list[TrainJob],
    out_dir: Path,
    progress: Progress | None = None,
    backbone: DiffusionBackbone | None = None,
) -> list[Path]:
    """Train jobs together; write each job's snapshots to ``out_dir/<job_id>/``; return the folders.

    Jobs already finished (``done.json`` present) are skipped. The jobs must share backbone,
    rank, steps, snapshot interval, batch size, lr, target modules and resolution.
    """
    out_dir = Path(out_dir)
    folders = [job_folder(out_dir, j) for j in jobs]
    todo = [j for j, f in zip(jobs, folders, strict=True) if not folder_done(f)]
    if not todo:
        return folders
    _check_group(todo)
    defences.check_jobs(todo)
    bb = backbone or load_backbone(todo[0].backbone)
    _train(todo, bb, out_dir, progress)
    return folders


def _check_group(jobs: list[TrainJob]) -> None:
    # seeds and defences may differ (each job has its own generators, clip norm and σ);
    # lora_wise.factory.runner.group_key is stricter
    keys = {(j.backbone, j.rank, j.steps, j.snapshot_every, j.batch_size, j.learning_rate,
             tuple(j.target_modules), j.resolution) for j in jobs}  # fmt: skip
    if len(keys) != 1:
        raise ValueError(
            f"jobs of one group must share backbone/rank/steps/batch/lr/targets; got {sorted(keys)}"
        )
    ids = [j.job_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate job ids in one group")


def _prepare(job: TrainJob, bb: DiffusionBackbone) -> _JobData:
    md = open_micro_dataset(job.micro_dataset)
    ids = md.choose(job.dataset_size)
    pixels = torch.from_numpy(md.load(ids, job.resolution or bb.resolution))
    mean, std = bb.encode_images(pixels)
    embeds, added = bb.encode_prompt(md.instance_prompt)
    gens = [torch.Generator().manual_seed(job.seed) for _ in range(2)]  # noise, order
    d = _JobData(job, ids, mean, std, embeds, added, *gens)
    if job.augment == "flip":  # the VAE is not flip-equivariant: encode the mirrors, never flip latents
        d.flipped, d.flip_gen = bb.encode_images(pixels.flip(-1)), defences.flip_generator(job)
    if job.is_dp:
        d.max_norm = job.dp_clip
        d.noise_std = defences.noise_multiplier(job) * job.dp_clip
        d.dp_gen = defences.dp_noise_generator(job)
    return d


def _posterior(d: _JobData, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior of the drawn images, each mirrored on its own coin for a flip job."""
    if d.flipped is None:
        return d.mean[idx], d.std[idx]
    flip = (torch.rand(len(idx), generator=d.flip_gen) < defences.FLIP_P).view(-1, 1, 1, 1)
    return torch.where(flip, d.flipped[0][idx], d.mean[idx]), torch.where(flip, d.flipped[1][idx], d.std[idx])


def _next_batch(d: _JobData, batch_size: int) -> list[int]:
    # a shuffling DataLoader (drop_last=False): a new permutation each epoch, a short last batch
    if not d.order:
        d.order = torch.randperm(len(d.image_ids), generator=d.order_gen).tolist()
    take, d.order = d.order[:batch_size], d.order[batch_size:]
    return take


def _train(jobs: list[TrainJob], bb: DiffusionBackbone, out_dir: Path, progress: Progress | None) -> None:
    j0 = jobs[0]
    k, m = len(jobs), j0.batch_size
    data = [_prepare(j, bb) for j in jobs]
    names = target_module_names(bb.unet, j0.target_modules)
    if not names:
        raise ValueError(f"no Linear module of the UNet matches {j0.target_modules}")
    modules = dict(bb.unet.named_modules())
    shapes = {n: tuple(modules[n].weight.shape) for n in names}
    inits = {s: init_lora(shapes, j0.rank, s) for s in {j.seed for j in jobs}}
    layers = {}
    for n in names:
        a = torch.stack([inits[j.seed][n] for j in jobs])
        b = torch.zeros(k, shapes[n][0], j0.rank)
        layers[n] = StackedLoraLinear(modules[n], a, b, scale=j0.alpha / j0.rank)
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    opt = torch.optim.AdamW(
        params, lr=j0.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY
    )
    grads = _Gradients.of(data, m)
    swap_modules(bb.unet, layers)
    try:
        t0 = time.time()
        for step in range(1, j0.steps + 1):
            _step(data, bb, grads, params, opt, m)
            if step % j0.snapshot_every == 0 or step == j0.steps:
                for i, d in enumerate(data):
                    _write_snapshot(out_dir, d, i, step, layers, bb)
            if progress:
                progress(step, j0.steps)
        for d in data:
            mark_done(job_folder(out_dir, d.job), {"model_id": d.job.job_id, "steps": j0.steps,
                                                   "group_size": k,
                                                   "seconds": round(time.time() - t0, 2)})  # fmt: skip
    finally:
        swap_modules(bb.unet, {n: layer.base for n, layer in layers.items()})


def _step(data: list[_JobData], bb: DiffusionBackbone, grads: _Gradients, params: list, opt, m: int) -> None:
    sched = bb.scheduler
    lat, noise, ts, emb, mask, added = [], [], [], [], [], []
    for d in data:
        idx = _next_batch(d, m)
        shape = (len(idx), *d.mean.shape[1:])
        # the order of draws of the script: VAE sample, noise, timesteps
        mean, std = _posterior(d, idx)
        z = (mean + std * torch.randn(shape, generator=d.noise_gen)) * bb.scaling_factor
        eps = torch.randn(shape, generator=d.noise_gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=d.noise_gen)
        pad = m - len(idx)  # a short last batch: pad rows carry no loss
        lat.append(_pad(z, pad))
        noise.append(_pad(eps, pad))
        ts.append(_pad(t, pad))
        emb.append(d.prompt_embeds.expand(m, -1, -1))
        mask.append(torch.tensor([1.0 / len(idx)] * len(idx) + [0.0] * pad))
        added.append(d.added)
    z, eps, t = torch.cat(lat), torch.cat(noise), torch.cat(ts)
    cond = {key: torch.cat([a[key].expand(m, -1) for a in added]) for key in added[0]}
    noisy = sched.add_noise(z, eps, t)
    pred = bb.unet(noisy, t, torch.cat(emb), added_cond_kwargs=cond or None).sample
    per_row = (pred.float() - eps.float()).pow(2).flatten(1).mean(1)
    loss = (per_row * torch.cat(mask)).sum()  # = sum over jobs of each job's mean MSE
    loss.backward()
    grads.apply(params)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return x if pad == 0 else torch.cat([x, x[:1].expand(pad, *x.shape[1:])])


def _clip_per_job(params: list[torch.Tensor], max_norm: float | torch.Tensor) -> None:
    # torch.nn.utils.clip_grad_norm_ applied to each job's own parameters (slice k of every tensor),
    # with its own max norm when given one per job (K,); Opacus clips per sample by the same factor
    sq = torch.stack([p.grad.pow(2).flatten(1).sum(1) for p in params]).sum(0)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *([1] * (p.grad.dim() - 1))))


def swap_modules(unet: torch.nn.Module, replacement: dict[str, torch.nn.Module]) -> None:
    for name, mod in replacement.items():
        parent, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent) if parent else unet, child, mod)


def lora_state_dict(layers: dict[str, StackedLoraLinear], k: int) -> dict[str, torch.Tensor]:
    """Job k's LoRA in diffusers format: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight``."""
    out = {}
    for name, layer in layers.items():
        out[f"unet.{name}.lora_A.weight"] = layer.lora_A[k].detach().clone().contiguous()
        out[f"unet.{name}.lora_B.weight"] = layer.lora_B[k].detach().clone().contiguous()
    return out


def sidecar(d: _JobData, step: int, bb: DiffusionBackbone) -> Sidecar:
    job = d.job
    return Sidecar(
        model_id=job.job_id,
        job=job,
        step=step,
        dataset_size=job.dataset_size,
        micro_dataset=job.micro_dataset,
        image_ids=d.image_ids,
        backbone=job.backbone,
        rank=job.rank,
        alpha=job.alpha,
        recipe={
            "method": "dreambooth-lora (diffusers train_dreambooth_lora.py)",
            "instance_prompt": open_micro_dataset(job.micro_dataset).instance_prompt,
            "resolution": job.resolution or bb.resolution,
            "learning_rate": job.learning_rate,
            "lr_scheduler": "constant",
            "batch_size": job.batch_size,
            "optimizer": {
                "name": "AdamW",
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "weight_decay": WEIGHT_DECAY,
            },
            "max_grad_norm": d.max_norm,
            "seed": job.seed,
            "target_modules": list(job.target_modules),
            "init": "peft default (A kaiming_uniform a=sqrt(5), B zeros)",
            "torch": torch.__version__,
        }
        | _base_record(bb)
        | defences.sidecar_record(job, step),
    )


def _base_record(bb: DiffusionBackbone) -> dict:
    # which pre-training of the backbone (packaged backbones only: a folder or Hub id names its weights)
    return {"base_weights_sha256": bb.extra["weights_sha256"]} if "weights_sha256" in bb.extra else {}


def _write_snapshot(
    out_dir: Path, d: _JobData, k: int, step: int, layers: dict, bb: DiffusionBackbone
) -> None:
    state = lora_state_dict(layers, k)
    write_snapshot(
        job_folder(out_dir, d.job),
        sidecar(d, step, bb),
        lambda path, meta: write_safetensors(path, state, meta),
    )
