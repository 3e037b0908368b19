"""Pre-train tiny-sd v2: v1's architecture, trained far longer on a pool DISJOINT from the benchmark's images.

The pool is ``lora_wise.factory.pool_emoji.pretrain_images()`` (every Twemoji image plus the Noto images of
subcategories that no benchmark concept uses), 64 px, horizontal flips as augmentation; each image
conditioned on "a photo of <its emoji name>" through v1's frozen text encoder. The
UNet trains on the VAE posterior means of every image and of its mirror image, computed once.

1. VAE (``--vae-steps``): MSE + 1e-6 KL, as v1's; then the latent scaling factor = 1 / std of the means.
2. UNet (``--unet-steps``): epsilon prediction under SD1.5's DDPM schedule, AdamW lr ``--lr`` after a
   500-step warm-up, cosine decay to 10 % over the planned steps; the shipped weights are an EMA
   (the raw weights while the EMA still holds over 1 % of the random init, i.e. before step 4,603).

Resumable: every ``--checkpoint-minutes`` the models, the EMA, the optimiser state, the step and the
generator state go to ``<work>/checkpoint.safetensors`` (safetensors only); rerunning the same
command continues from there. ``--export`` writes the current weights to ``--out`` (fp16) at any
time, also while a run is going on, from the last checkpoint. The loss is logged every ``--log-every``
steps to ``<work>/pretrain.log``.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/pretrain_tiny_sd_v2.py --work runs/pretrain-v2 \\
        --vae-steps 3000 --unet-steps 40000
    python scripts/pretrain_tiny_sd_v2.py --work runs/pretrain-v2 --export --out lora_wise/data/tiny_sd_v2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lora_wise.factory import pool_emoji
from lora_wise.factory.backbones import tiny_sd

EMA_DECAY = 0.999
WARMUP = 500


def pool_tensors(text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """All pre-training images in [-1, 1] (N, 3, 64, 64) and their prompt embeddings (N, 77, 32)."""
    images, prompts = pool_emoji.pretrain_images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    tok = tiny_sd.build_tokenizer()
    uniq = sorted(set(prompts))
    with torch.no_grad():
        ids = tok(uniq, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        emb = torch.cat([text_encoder(ids[i : i + 256])[0] for i in range(0, len(ids), 256)])
    index = {p: i for i, p in enumerate(uniq)}
    return x, emb[[index[p] for p in prompts]]


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


class State:
    """Everything a run needs to continue: models, EMA, optimisers, step counters, generator."""

    def __init__(self, args):
        self.unet, self.vae, self.text_encoder = tiny_sd.build_models(seed=0)
        v1_text = load_file(str(tiny_sd.data_dir() / "text_encoder.safetensors"))
        self.text_encoder.load_state_dict({k: v.float() for k, v in v1_text.items()})
        self.text_encoder.requires_grad_(False).eval()
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=1e-3, weight_decay=0.0)
        self.unet_opt = torch.optim.AdamW(self.unet.parameters(), lr=args.lr, weight_decay=1e-2)
        self.vae_step = self.unet_step = 0
        self.scaling = 1.0
        self.gen = torch.Generator().manual_seed(0)

    def save(self, path: Path) -> None:
        tensors = {}
        for prefix, module in (("unet", self.unet), ("ema", self.ema), ("vae", self.vae)):
            tensors |= {f"{prefix}.{k}": v.detach().contiguous() for k, v in module.state_dict().items()}
        for prefix, opt in (("vae_opt", self.vae_opt), ("unet_opt", self.unet_opt)):
            for i, st in opt.state_dict()["state"].items():
                tensors |= {
                    f"{prefix}.{i}.{k}": v.reshape(-1).clone() if k == "step" else v.clone()
                    for k, v in st.items()
                }
        tensors["gen"] = self.gen.get_state()
        meta = {
            "vae_step": str(self.vae_step),
            "unet_step": str(self.unet_step),
            "scaling": repr(self.scaling),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        for prefix, module in (("unet", self.unet), ("ema", self.ema), ("vae", self.vae)):
            module.load_state_dict(
                {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            )
        for prefix, opt in (("vae_opt", self.vae_opt), ("unet_opt", self.unet_opt)):
            sd = opt.state_dict()
            state: dict[int, dict] = {}
            for k, v in tensors.items():
                if k.startswith(prefix + "."):
                    _, i, name = k.split(".", 2)
                    state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
            sd["state"] = state
            opt.load_state_dict(sd)
        self.gen.set_state(tensors["gen"])
        self.vae_step, self.unet_step = int(meta["vae_step"]), int(meta["unet_step"])
        self.scaling = float(meta["scaling"])


def vae_step(s: State, x: torch.Tensor, batch: int) -> float:
    idx = torch.randint(0, len(x), (batch,), generator=s.gen)
    xb = flip(x[idx], s.gen)
    post = s.vae.encode(xb).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=s.gen)
    loss = F.mse_loss(s.vae.decode(z).sample, xb) + 1e-6 * post.kl().mean()
    s.vae_opt.zero_grad()
    loss.backward()
    s.vae_opt.step()
    return loss.item()


def unet_step(s: State, latents: torch.Tensor, cond: torch.Tensor, batch: int, args, sched) -> float:
    lr_scale = min(1.0, (s.unet_step + 1) / WARMUP)
    progress = min(1.0, s.unet_step / args.unet_steps)
    lr_scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    for group in s.unet_opt.param_groups:
        group["lr"] = args.lr * lr_scale
    idx = torch.randint(0, len(latents), (batch,), generator=s.gen)
    z0 = latents[idx]
    noise = torch.randn(z0.shape, generator=s.gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=s.gen)
    loss = F.mse_loss(s.unet(sched.add_noise(z0, noise, t), t, cond[idx % len(cond)]).sample, noise)
    s.unet_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.unet.parameters(), 1.0)
    s.unet_opt.step()
    with torch.no_grad():
        for e, p in zip(s.ema.parameters(), s.unet.parameters(), strict=True):
            e.lerp_(p, 1 - EMA_DECAY)
    return loss.item()


@torch.no_grad()
def encode_means(s: State, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])


def unet_latents(s: State, x: torch.Tensor) -> torch.Tensor:
    """The posterior means (as v1: a fixed target for the denoiser) of every image and its mirror image,
    scaled; row i + N is image i flipped, so its prompt is row i's."""
    return torch.cat([encode_means(s, x), encode_means(s, x.flip(-1))]) * s.scaling


def run(args) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, log_path = args.work / "checkpoint.safetensors", args.work / "pretrain.log"
    s = State(args)
    if ckpt.is_file():
        s.load(ckpt)
    log_file = log_path.open("a")
    t0, last_save = time.time(), time.time()

    def log(msg: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        log_file.flush()

    log(f"start: vae_step {s.vae_step}, unet_step {s.unet_step}, args {json.dumps(vars(args), default=str)}")
    x, cond = pool_tensors(s.text_encoder)
    log(f"pool: {len(x)} images")
    sched, losses = tiny_sd.build_scheduler(), []
    s.vae.train()
    latents = None
    while s.vae_step < args.vae_steps or s.unet_step < args.unet_steps:
        if s.vae_step < args.vae_steps:
            losses.append(vae_step(s, x, args.vae_batch))
            s.vae_step += 1
            phase, step = "vae", s.vae_step
            if s.vae_step == args.vae_steps:
                s.vae.eval().requires_grad_(False)
                s.scaling = float(1.0 / encode_means(s, x).std())
                log(f"vae done, scaling factor {s.scaling:.5f}")
        else:
            if latents is None:
                s.vae.eval().requires_grad_(False)
                latents = unet_latents(s, x)
            losses.append(unet_step(s, latents, cond, args.batch, args, sched))
            s.unet_step += 1
            phase, step = "unet", s.unet_step
        if step % args.log_every == 0:
            log(f"{phase} {step} loss {np.mean(losses):.5f} ({time.time() - t0:.0f} s)")
            losses = []
        if time.time() - last_save > 60 * args.checkpoint_minutes:
            s.save(ckpt)
            last_save = time.time()
    s.save(ckpt)
    log("finished")


def export(args) -> None:
    s = State(args)
    s.load(args.work / "checkpoint.safetensors")
    # the EMA starts at the random init and has no bias correction: after n steps that init still
    # weighs EMA_DECAY**n (0.45 at 800 steps), so a short run ships the raw weights instead
    use_ema = EMA_DECAY**s.unet_step < 0.01
    unet = s.ema if use_ema else s.unet
    provenance = (
        f"scripts/pretrain_tiny_sd_v2.py, checkpoint at vae step {s.vae_step}, unet step {s.unet_step} "
        f"({f'EMA {EMA_DECAY}' if use_ema else 'raw weights'}); the run's arguments are the log's "
        f"'start' lines; torch {torch.__version__}"
    )
    tiny_sd.save_weights(unet, s.vae, s.text_encoder, args.out, s.scaling, provenance)
    (args.out / "text_encoder.safetensors").unlink()  # v1's, unchanged: tiny-sd-v2 loads v1's file
    print(
        f"exported vae step {s.vae_step}, unet step {s.unet_step} "
        f"({'EMA' if use_ema else 'raw'}) to {args.out}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="checkpoint and log folder")
    ap.add_argument("--out", type=Path, default=None, help="where --export writes the fp16 weights")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--unet-steps", type=int, default=40000, help="planned steps (the cosine's length)")
    ap.add_argument("--batch", type=int, default=32, help="UNet batch")
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--checkpoint-minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", action="store_true", help="write the checkpoint's weights to --out and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.export:
        if args.out is None:
            ap.error("--export needs --out")
        export(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
