"""Shared fixtures of the trainer tests: the tiny-sd backbone and the plain reference trainer."""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F

from lora_wise.factory.backbones import DiffusionBackbone, load_backbone
from lora_wise.factory.defences import flip_generator
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.micro_datasets import open_micro_dataset
from lora_wise.factory.train import (
    ADAM_BETAS,
    ADAM_EPS,
    MAX_GRAD_NORM,
    WEIGHT_DECAY,
    init_lora,
    target_module_names,
)


@lru_cache(maxsize=1)
def tiny() -> DiffusionBackbone:
    torch.set_num_threads(1)
    return load_backbone("tiny-sd")


def job(micro: str, n: int, steps: int = 20, every: int = 10, batch: int = 1, rank: int = 4) -> TrainJob:
    return TrainJob(
        "tiny-sd", "low", n, micro, rank=rank, steps=steps, snapshot_every=every, batch_size=batch
    )


def train_alone_reference(j: TrainJob, bb: DiffusionBackbone) -> dict[str, torch.Tensor]:
    """One job through a plain PEFT-wrapped UNet, written like train_dreambooth_lora.py's loop.

    No caching: the VAE encodes each batch and samples its posterior, the prompt goes through
    the text encoder every step. A flip job mirrors the drawn pixels on the coins of its flip
    generator before they are encoded. Returns {"<module>.lora_A.weight": ..., ...}.
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(bb.unet)
    names = target_module_names(unet, j.target_modules)
    unet.add_adapter(LoraConfig(r=j.rank, lora_alpha=j.rank, init_lora_weights="gaussian",
                                target_modules=list(j.target_modules)))  # fmt: skip
    modules = dict(unet.named_modules())
    init = init_lora({n: tuple(modules[n].base_layer.weight.shape) for n in names}, j.rank, j.seed)
    with torch.no_grad():  # the same init values copied in
        for n in names:
            modules[n].lora_A["default"].weight.copy_(init[n])
            modules[n].lora_B["default"].weight.zero_()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=j.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY
    )
    md = open_micro_dataset(j.micro_dataset)
    pixels = torch.from_numpy(md.load(md.choose(j.dataset_size), bb.resolution))
    noise_gen, order_gen = torch.Generator().manual_seed(j.seed), torch.Generator().manual_seed(j.seed)
    flip_gen = flip_generator(j)
    order: list[int] = []
    for _ in range(j.steps):
        if not order:
            order = torch.randperm(len(pixels), generator=order_gen).tolist()
        idx, order = order[: j.batch_size], order[j.batch_size :]
        batch = pixels[idx]
        if j.augment == "flip":  # torchvision's RandomHorizontalFlip(p=0.5), one coin per drawn image
            coins = torch.rand(len(idx), generator=flip_gen) < 0.5
            batch = torch.stack([img.flip(-1) if c else img for img, c in zip(batch, coins, strict=True)])
        with torch.no_grad():
            latents = bb.vae.encode(batch).latent_dist.sample(generator=noise_gen)
            latents = latents * bb.vae.config.scaling_factor
            embeds, _ = bb.encode_prompt(md.instance_prompt)
        noise = torch.randn(latents.shape, generator=noise_gen)
        t = torch.randint(0, bb.scheduler.config.num_train_timesteps, (len(idx),), generator=noise_gen)
        noisy = bb.scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, embeds.expand(len(idx), -1, -1)).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad()
    return get_peft_model_state_dict(unet)


def assert_same_lora(got: dict, ref: dict, lr: float = 1e-4) -> None:
    """Every A and B entry agrees to 0.01 * lr: a hundredth of one AdamW step.

    Float reduction order differs (one batched pass of K rows vs one row; bmm vs Linear), and
    Adam's g / sqrt(v) amplifies that noise where gradients are tiny, so bit equality is not
    expected (measured: <= 2e-7 after 20 steps). A real recipe difference (another image, noise
    draw, timestep or init) moves entries by whole steps of ~lr; dropping weight decay moves A
    by ~3e-6 in 20 steps, which this tolerance catches.
    """
    assert {f"unet.{k}" for k in ref} == set(got)
    worst = max((got[f"unet.{k}"] - v).abs().max().item() for k, v in ref.items())
    assert worst <= 0.01 * lr, worst


def save_tiny_sdxl(folder) -> None:
    """A tiny SDXL-shaped pipeline (two text encoders, pooled embeds, added time ids), saved to folder."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_wise.factory.backbones import tiny_sd

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(1, 2), norm_num_groups=32,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )  # fmt: skip
    text = CLIPTextConfig(**tiny_sd.TEXT_CONFIG)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**tiny_sd.VAE_CONFIG), text_encoder=CLIPTextModel(text),
        text_encoder_2=CLIPTextModelWithProjection(text), tokenizer=tiny_sd.build_tokenizer(),
        tokenizer_2=tiny_sd.build_tokenizer(), unet=unet, scheduler=tiny_sd.build_scheduler(),
    )  # fmt: skip
    pipe.save_pretrained(folder)
