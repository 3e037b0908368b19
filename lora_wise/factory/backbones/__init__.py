"""Backbones the trainer fine-tunes: the built-in ``tiny-sd`` and any Stable-Diffusion-style pipeline.

``load_backbone(name_or_path)`` accepts a preset (``tiny-sd``, ``sd15``, ``sd2``, ``sdxl``), a Hub
id or a local folder written by ``DiffusionPipeline.save_pretrained``, and returns the frozen
pieces DreamBooth-LoRA needs, plus the two encoders the diffusers scripts run before the UNet
(``encode_prompt`` and ``encode_images``) so that the trainer does not care which family it has.
SDXL is detected by its second text encoder; it gets pooled text embeddings and added time ids
as in diffusers' ``train_dreambooth_lora_sdxl.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from lora_wise.errors import BackboneError

PRESETS: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
TINY_SD = "tiny-sd"
TINY_SD_V2 = "tiny-sd-v2"


@dataclass
class DiffusionBackbone:
    """Frozen UNet, VAE, text encoder(s), tokenizer(s) and the training noise scheduler."""

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: tuple
    tokenizers: tuple
    scheduler: object
    resolution: int
    is_sdxl: bool = False
    extra: dict = field(default_factory=dict)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, dict]:
        """``(encoder_hidden_states (1, 77, D), added_cond_kwargs)`` for one prompt."""
        if not self.is_sdxl:  # train_dreambooth_lora.py: last hidden state, no attention mask
            return self.text_encoders[0](self._ids(self.tokenizers[0], prompt))[0], {}
        hidden, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders, strict=True):
            out = enc(self._ids(tok, prompt), output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output
            hidden.append(out.hidden_states[-2])
        res = self.resolution  # original size, crop (0, 0), target size: no cropping here
        time_ids = torch.tensor([[res, res, 0, 0, res, res]], dtype=hidden[0].dtype)
        return torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior's ``(mean, std)`` for images in [-1, 1], unscaled."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def pipeline(self):
        """A diffusers pipeline around these pieces (for ``load_lora_weights``, sampling)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.is_sdxl:
            return StableDiffusionXLPipeline(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0],
                tokenizer_2=self.tokenizers[1],
                unet=self.unet,
                scheduler=self.scheduler,
            )
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    @staticmethod
    def _ids(tokenizer, prompt: str) -> torch.Tensor:
        return tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids


@lru_cache(maxsize=2)
def load_backbone(name_or_path: str) -> DiffusionBackbone:
    """Load a backbone once per process (cached: the trainer treats it as read-only)."""
    if name_or_path == TINY_SD:
        from lora_wise.factory.backbones import tiny_sd
        from lora_wise.factory.backbones.tiny_sd import RESOLUTION, load_tiny_sd

        unet, vae, text_encoder, tokenizer, scheduler = load_tiny_sd()
        bb = DiffusionBackbone(TINY_SD, unet, vae, (text_encoder,), (tokenizer,), scheduler, RESOLUTION)
        return _with_digest(bb, [tiny_sd.data_dir()])
    if name_or_path == TINY_SD_V2:  # v1's architecture, a longer pre-training on a disjoint pool
        from lora_wise.factory.backbones import tiny_sd, tiny_sd_v2
        from lora_wise.factory.backbones.tiny_sd_v2 import RESOLUTION as RES_V2
        from lora_wise.factory.backbones.tiny_sd_v2 import load_tiny_sd_v2

        unet, vae, text_encoder, tokenizer, scheduler = load_tiny_sd_v2()
        bb = DiffusionBackbone(TINY_SD_V2, unet, vae, (text_encoder,), (tokenizer,), scheduler, RES_V2)
        return _with_digest(bb, [tiny_sd_v2.data_dir(), tiny_sd.data_dir() / "text_encoder.safetensors"])
    return _load_pipeline_folder(name_or_path, PRESETS.get(name_or_path, name_or_path))


def _with_digest(bb: DiffusionBackbone, places: list[Path]) -> DiffusionBackbone:
    """Record which weights a packaged backbone loaded: one name may be pre-trained more than once
    (tiny-sd-v2's candidates), and a LoRA is only meaningful on the base it was trained on."""
    from lora_wise._files import sha256_file

    files = sorted(f for p in places for f in ([p] if p.is_file() else p.glob("*.safetensors")))
    joined = "".join(f"{f.name}:{sha256_file(f)}\n" for f in files)
    bb.extra["weights_sha256"] = hashlib.sha256(joined.encode()).hexdigest()
    return bb


def _load_pipeline_folder(name: str, source: str) -> DiffusionBackbone:
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if "/" not in source and not Path(source).exists():
        raise BackboneError(
            f"unknown backbone {name!r}: use tiny-sd(-v2), {', '.join(PRESETS)}, a Hub id or a folder"
        )
    try:
        index = DiffusionPipeline.load_config(source)
    except Exception as e:  # diffusers raises OSError/EnvironmentError/HTTP errors: one line for the user
        raise BackboneError(f"cannot load backbone {source!r}: {str(e).splitlines()[0]}") from None
    is_sdxl = "text_encoder_2" in index
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
    encoders = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder")]
    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
    if is_sdxl:
        encoders.append(CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2"))
        tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"))
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")  # as the dreambooth scripts do
    for model in (unet, vae, *encoders):
        model.requires_grad_(False).eval()
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return DiffusionBackbone(
        name,
        unet,
        vae,
        tuple(encoders),
        tuple(tokenizers),
        scheduler,
        unet.config.sample_size * vae_factor,
        is_sdxl,
    )
