"""The factory's two defences against what LoRA weights leak: flip augmentation and DP-SGD.

Both are options of a ``TrainJob`` (``augment``, ``dp_epsilon``/``dp_delta``/``dp_clip``) applied
by the batched trainer (``lora_wise.factory.train``) per job, so jobs with different defences, or
none, may share one batched pass and each is still trained exactly as if alone.

**Flip** (``augment="flip"``), as ``--random_flip`` in diffusers' training scripts (torchvision's
``RandomHorizontalFlip(p=0.5)`` in the per-draw image transform): each time an image is drawn it
is mirrored left-right with probability 0.5. The VAE is not flip-equivariant, so the mirrored
pixels are encoded too (once, like the originals), never the latents flipped. The coins come from
a generator of their own, so a job without the flip keeps every one of its random draws.

**DP-SGD** (``dp_epsilon``): per-sample clipping to norm C (``dp_clip``, replacing the 1.0
max-norm clip), Gaussian noise N(0, σ²C²) on every coordinate, division by the batch size, as
Opacus' ``DPOptimizer`` does; AdamW and its weight decay follow (post-processing keeps DP). Each
job's batch is one image (the paper's recipe), so a job's gradient over ALL its LoRA parameters IS
its per-sample gradient and the mechanism is written by hand; batches of more images would need
per-sample gradients and are refused. σ comes from Opacus' RDP accountant (the maintained
reference implementation): ``get_noise_multiplier(target_epsilon, target_delta, sample_rate=q,
steps)`` with q = batch / N for the job's N images, so σ differs between the jobs of one group.
The privacy unit is one image of the job's micro-dataset (add/remove one). Every DP snapshot's
sidecar records ε, δ, C, σ, q, the accountant and the ε the accountant gives at that snapshot's
step (intermediate snapshots are published too; composition over their steps covers them).
``dp_epsilon=inf`` is the mechanism without noise (clipping to C only): with C = 1 it is plain
training, bit for bit.

Two caveats, stated in every sidecar:

- Sampling: the accountant assumes Poisson sampling (each image in each step independently with
  probability q); the trainer shuffles per epoch (each image exactly once per epoch, as a
  shuffling DataLoader and as Opacus itself unless ``poisson_sampling=True``). The Poisson bound
  is not a proven bound for shuffling, and the gap can be real (Chua et al., "How Private are
  DP-SGD Implementations?", ICML 2024): read the recorded ε as the usual, optimistic, accounting.
- Secrecy: the noise generator is seeded from the job's seed so that runs reproduce. Someone who
  knows the seed and the code can regenerate the noise, which voids the guarantee; the leak
  study's attacker reads weights only. A release would need a secret seed (a CSPRNG, as Opacus'
  ``secure_mode``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata

import torch

from lora_wise.errors import FactoryError
from lora_wise.factory.jobs import TrainJob

FLIP_P = 0.5
ACCOUNTANT = "rdp"
OPACUS_MISSING = "DP-SGD jobs need Opacus for their privacy accounting: pip install 'lora-wise[dp]'"
SAMPLING_NOTE = "shuffled epochs; the accountant assumes Poisson sampling at rate q (optimistic)"
SEED_NOTE = "derived from the job seed: reproducible, so not secret"


def parse_defence(spec: str) -> dict:
    """``none``, ``flip``, ``dp:EPS`` (``dp:inf``: no noise) or a comma-separated mix such as
    ``flip,dp:10`` -> the TrainJob keys it sets (``{}`` for ``none``)."""
    out: dict = {}
    for part in (p.strip() for p in spec.split(",")):
        if part == "flip":
            out["augment"] = "flip"
        elif part.startswith("dp:"):
            out["dp_epsilon"] = _positive(part.removeprefix("dp:"), spec)
        elif part != "none":
            raise ValueError(f"unknown defence {part!r} in {spec!r}: expected none, flip, dp:EPS or a mix")
    return out


def _positive(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"{spec!r}: dp:EPS needs a number EPS > 0 (inf: no noise)")
    return value


def derived_seed(seed: int, stream: str) -> int:
    # a generator seeded with the job seed itself would replay the noise generator's stream
    digest = hashlib.sha256(f"lora-wise/{stream}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def flip_generator(job: TrainJob) -> torch.Generator:
    """The generator of a flip job's coins (one ``torch.rand`` per drawn image)."""
    return torch.Generator().manual_seed(derived_seed(job.seed, "flip"))


def dp_noise_generator(job: TrainJob) -> torch.Generator:
    """The generator of a DP job's gradient noise (one flat vector over its parameters per step)."""
    return torch.Generator().manual_seed(derived_seed(job.seed, "dp-noise"))


def check_jobs(jobs: Sequence[TrainJob]) -> None:
    """Refuse what the trainer cannot do (DP with batches > 1); load Opacus if a DP job needs it."""
    for job in jobs:
        if job.is_dp and job.batch_size != 1:
            raise FactoryError(
                f"{job.job_id}: DP-SGD needs batch_size 1 here (a job's gradient is then its per-sample "
                f"gradient); batch {job.batch_size} would need per-sample gradients"
            )
    if any(_needs_noise(job) for job in jobs):
        _opacus()


def sample_rate(job: TrainJob) -> float:
    return job.batch_size / job.dataset_size


def noise_multiplier(job: TrainJob) -> float:
    """σ of a DP job (its noise std is σ·C); 0 for ε = inf and for jobs without DP."""
    if not _needs_noise(job):
        return 0.0
    return sigma_for(job.dp_epsilon, job.dp_delta, sample_rate(job), job.steps)


def _needs_noise(job: TrainJob) -> bool:
    return job.is_dp and math.isfinite(job.dp_epsilon)


@lru_cache(maxsize=1024)
def sigma_for(epsilon: float, delta: float, q: float, steps: int) -> float:
    """Opacus' σ for a target (ε, δ) after ``steps`` steps at sample rate q (RDP accountant)."""
    _, utils = _opacus()
    with warnings.catch_warnings():
        # the search's trial sigmas far above the answer hit the largest RDP order; epsilon_spent,
        # which the sidecar records for the sigma found, keeps the warning
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(utils.get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q,
                                                steps=steps, accountant=ACCOUNTANT))  # fmt: skip


@lru_cache(maxsize=4096)
def epsilon_spent(sigma: float, q: float, steps: int, delta: float) -> float:
    """The accountant's ε after ``steps`` steps of noise multiplier σ at rate q (inf without noise)."""
    if sigma == 0:
        return math.inf
    accountants, _ = _opacus()
    accountant = accountants.create_accountant(mechanism=ACCOUNTANT)
    accountant.history = [(sigma, q, steps)]  # as get_noise_multiplier itself evaluates a σ
    return float(accountant.get_epsilon(delta=delta))


def _opacus():
    try:
        from opacus import accountants
        from opacus.accountants import utils
    except ImportError:
        raise FactoryError(OPACUS_MISSING) from None
    return accountants, utils


def add_dp_noise(params: Sequence[torch.Tensor], noise_std: torch.Tensor,
                 gens: Sequence[torch.Generator | None], batch_size: int) -> None:  # fmt: skip
    """Opacus' noise step on K stacked jobs: grad_k <- (grad_k + N(0, std_k²) per coordinate) / batch.

    ``params`` hold job k's parameters in slice k; ``noise_std`` (K,) is σ_k·C_k and a job with 0 is
    left untouched. Job k's noise is one flat draw from ``gens[k]`` over its parameters in ``params``
    order, so a job draws the same noise in a group as alone. Its gradient must be clipped already.
    """
    rows = [k for k in range(len(gens)) if noise_std[k] > 0]
    if not rows:
        return
    sizes = [p[0].numel() for p in params]
    noise = torch.stack([torch.randn(sum(sizes), generator=gens[k]) * noise_std[k] for k in rows])
    for p, chunk in zip(params, noise.split(sizes, dim=1), strict=True):
        p.grad[rows] = (p.grad[rows] + chunk.view(len(rows), *p.shape[1:])) / batch_size


def sidecar_record(job: TrainJob, step: int) -> dict:
    """The recipe entries of a job's defences at one snapshot; empty for an undefended job."""
    out: dict = {}
    if job.augment == "flip":
        how = "each drawn image mirrored left-right; the mirrors VAE-encoded, not the latents flipped"
        out["augment"] = {"name": "flip", "p": FLIP_P, "how": how, "seed": SEED_NOTE}
    if job.is_dp:
        out["dp"] = dp_record(job, step)
    return out


def dp_record(job: TrainJob, step: int) -> dict:
    """What a DP snapshot guarantees, and under which accounting."""
    sigma, q = noise_multiplier(job), sample_rate(job)
    accountant = f"opacus {_opacus_version()} {ACCOUNTANT}" if sigma else "none (no noise: no guarantee)"
    return {
        "epsilon": _json_float(job.dp_epsilon),
        "epsilon_at_this_step": _json_float(epsilon_spent(sigma, q, step, job.dp_delta)),
        "delta": job.dp_delta,
        "clip_norm": job.dp_clip,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": job.steps,
        "unit": "one image (add/remove)",
        "accountant": accountant,
        "sampling": SAMPLING_NOTE,
        "noise_seed": SEED_NOTE,
    }


def _opacus_version() -> str:
    try:
        return metadata.version("opacus")
    except metadata.PackageNotFoundError:  # imported from a source tree
        return "(version unknown)"


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"
