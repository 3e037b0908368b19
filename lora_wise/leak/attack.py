"""Training the attack on shadows, and generating from a conditioning through a LoRA'd UNet.

Training (:func:`train_attack`): for a batch of (shadow, snapshot step) pairs the encoder predicts a
conditioning; each pair's own FROZEN fine-tuned UNet (base UNet plus that snapshot, applied through
``lora_wise.leak.apply``'s bank, all pairs in one batched pass) denoises a noisy latent of one of the
shadow's own views under it. The loss is the ordinary epsilon-prediction MSE plus ``prompt_weight``
times the MSE to the shadow's true prompt embedding. Only the encoder learns; the attacker sees the
shadows' images and prompts, never a victim's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lora_wise.factory.backbones import DiffusionBackbone
from lora_wise.leak.apply import Lora, bank_applied
from lora_wise.leak.encoder import EncoderConfig, LoraEncoder


@dataclass
class Shadow:
    """One shadow identity as the attacker holds it: its snapshots, its views' latents, its prompt."""

    key: str
    snapshots: list[tuple[int, Lora]]  # (step, LoRA)
    mean: torch.Tensor  # (V, C, h, w) VAE posterior of its views
    std: torch.Tensor
    prompt_embeds: torch.Tensor  # (77, D)


@dataclass(frozen=True)
class AttackTraining:
    iterations: int = 300
    batch: int = 16
    lr: float = 1e-3
    prompt_weight: float = 1.0
    seed: int = 0
    use_step: bool = True


def train_attack(
    bb: DiffusionBackbone,
    shadows: list[Shadow],
    scale: float,
    train: AttackTraining,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[LoraEncoder, dict]:
    """The trained encoder and a summary (losses, seconds)."""
    torch.manual_seed(train.seed)
    entries = [(s_i, step, lora) for s_i, s in enumerate(shadows) for step, lora in s.snapshots]
    width = shadows[0].prompt_embeds.shape[-1]
    model = LoraEncoder(EncoderConfig.from_lora(entries[0][2], width, use_step=train.use_step))
    x_all, rms_all = model.matrices([e[2] for e in entries])
    steps_all = torch.tensor([e[1] for e in entries])
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(train.seed)
    sched = bb.scheduler
    history, t0 = [], time.time()
    with bank_applied(bb.unet, [e[2] for e in entries], scale) as state:
        for it in range(1, train.iterations + 1):
            pick = torch.randint(0, len(entries), (train.batch,), generator=gen)
            cond = model.from_matrices(x_all[pick], rms_all[pick], steps_all[pick])
            owners = [shadows[entries[i][0]] for i in pick.tolist()]
            z = torch.stack([_latent(s, gen) for s in owners]) * bb.scaling_factor
            eps = torch.randn(z.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(pick),), generator=gen)
            state["index"] = pick + 1  # bank entry 0 is the base model
            pred = bb.unet(sched.add_noise(z, eps, t), t, cond).sample
            denoise = (pred - eps).pow(2).mean()
            target = torch.stack([s.prompt_embeds for s in owners])
            prompt = (cond - target).pow(2).mean()
            loss = denoise + train.prompt_weight * prompt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            history.append((denoise.item(), prompt.item()))
            if progress:
                progress(it, train.iterations, loss.item())
    tail = np.array(history[-max(1, len(history) // 10) :])
    summary = {
        "iterations": train.iterations,
        "batch": train.batch,
        "lr": train.lr,
        "prompt_weight": train.prompt_weight,
        "seed": train.seed,
        "use_step": train.use_step,
        "final_denoise_loss": float(tail[:, 0].mean()),
        "final_prompt_mse": float(tail[:, 1].mean()),
        "seconds": round(time.time() - t0, 1),
        "shadows": len(shadows),
        "pairs": len(entries),
    }
    return model.eval(), summary


def _latent(s: Shadow, gen: torch.Generator) -> torch.Tensor:
    v = int(torch.randint(0, len(s.mean), (1,), generator=gen))
    return s.mean[v] + s.std[v] * torch.randn(s.mean[v].shape, generator=gen)


@torch.no_grad()
def generate(
    bb: DiffusionBackbone,
    loras: list[Lora],
    scale: float,
    index: torch.Tensor,
    cond: torch.Tensor,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
) -> np.ndarray:
    """One image per row: row i through bank entry ``index[i]`` (0 = base model, j + 1 = ``loras[j]``)
    under conditioning ``cond[i]`` (77, D); DDIM. ``guidance`` > 1 is classifier-free guidance against
    ``uncond`` (77, D; by default the empty prompt's embedding) through the same row's UNet:
    eps(uncond) + guidance * (eps(cond) - eps(uncond)), as diffusers' pipelines do. Returns (n, H, W, 3)
    uint8."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(bb.scheduler.config)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    size = bb.unet.config.sample_size
    z = torch.randn((len(index), bb.unet.config.in_channels, size, size), generator=gen)
    guided = guidance != 1.0
    if guided:
        u = bb.encode_prompt("")[0][0] if uncond is None else uncond
        cond, index = torch.cat([u.expand_as(cond), cond]), torch.cat([index, index])
    with bank_applied(bb.unet, loras, scale) as state:
        state["index"] = index
        for t in sched.timesteps:
            if guided:
                e_u, e_c = bb.unet(torch.cat([z, z]), t, cond).sample.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            else:
                eps = bb.unet(z, t, cond).sample
            z = sched.step(eps, t, z).prev_sample
    images = bb.vae.decode(z / bb.scaling_factor).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
