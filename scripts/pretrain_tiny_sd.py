"""Reproduce tiny-sd's shipped weights: a short, seeded pre-training on the offline pool.

1. VAE: reconstruction (MSE + 1e-6 KL, as SD's autoencoder without its GAN/perceptual terms)
   on up to 64 images of every pool concept; then the latent scaling factor = 1 / std.
2. UNet: epsilon-prediction denoising on those latents, conditioned on "a photo of <noun>"
   through the frozen, seeded-random 2-layer CLIP text encoder, SD1.5's DDPM schedule.

    python scripts/pretrain_tiny_sd.py --out lora_wise/data/tiny_sd --vae-steps 600 --unet-steps 1500

Deterministic for a given thread count and machine (seed 0, explicit generators).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lora_wise.factory import pool
from lora_wise.factory.backbones import tiny_sd


def pool_tensor(per_concept: int) -> tuple[torch.Tensor, list[str]]:
    images, prompts = [], []
    for name, c in pool.concepts().items():
        imgs = pool.concept_images(name)[:per_concept]
        images.append(imgs)
        prompts += [f"a photo of {c.class_noun}"] * len(imgs)
    x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, prompts


def train_vae(vae, x, steps: int, batch: int, gen: torch.Generator, log) -> float:
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        post = vae.encode(x[idx]).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x[idx]) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae {step} loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    return float(1.0 / means.std())


def train_unet(unet, latents, cond, steps: int, batch: int, gen: torch.Generator, log) -> None:
    sched = tiny_sd.build_scheduler()
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=1e-2)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(sched.add_noise(z0, noise, t), t, cond[idx]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet {step} loss {loss.item():.4f}")
    unet.eval().requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=tiny_sd.data_dir())
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--per-concept", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    unet, vae, text_encoder = tiny_sd.build_models(seed=0)
    text_encoder.requires_grad_(False).eval()
    tok = tiny_sd.build_tokenizer()
    x, prompts = pool_tensor(args.per_concept)
    log(f"pool: {len(x)} images, {len(set(prompts))} prompts")
    gen = torch.Generator().manual_seed(0)
    scaling = train_vae(vae, x, args.vae_steps, args.batch, gen, log)
    log(f"scaling factor {scaling:.5f}")
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        latents = (post.mean * scaling).contiguous()  # the mode: a fixed target for the denoiser
        uniq = sorted(set(prompts))
        ids = tok(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        emb = dict(zip(uniq, text_encoder(ids)[0], strict=True))
        cond = torch.stack([emb[p] for p in prompts])
    train_unet(unet, latents, cond, args.unet_steps, args.batch, gen, log)
    provenance = (
        f"scripts/pretrain_tiny_sd.py --vae-steps {args.vae_steps} --unet-steps {args.unet_steps} "
        f"--batch {args.batch} --per-concept {args.per_concept} --threads {args.threads}; "
        f"torch {torch.__version__}"
    )
    tiny_sd.save_weights(unet, vae, text_encoder, args.out, scaling, provenance)
    log(f"saved to {args.out}")


if __name__ == "__main__":
    main()
