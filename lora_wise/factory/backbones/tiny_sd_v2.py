"""``tiny-sd-v2``: tiny-sd's architecture, pre-trained longer on a pool disjoint from the benchmark.

v1 (``lora_wise.factory.backbones.tiny_sd``) was pre-trained briefly (VAE 200, UNet 400 steps at batch 16) on
the very pool its benchmark fine-tunes on. v2 keeps v1's UNet, VAE and text-encoder configs (so a LoRA
still has SD1.5's 128 layer names and the cost per step is v1's) and changes only the base: a VAE and
a UNet trained on :func:`lora_wise.factory.pool_emoji.pretrain_images` (Twemoji plus the Noto subcategories no
benchmark concept uses). The shipped weights: VAE 800 steps at batch 16, UNet 4,000 at batch 32
(raw weights, cosine-decayed to 10 %; the first candidate, piloted too, stopped at UNet step 583).
The text encoder is v1's (frozen, seeded; read from v1's file), so prompts embed as in v1.
``scripts/pretrain_tiny_sd_v2.py`` reproduces the weights; its log
is ``docs/pretrain/tiny-sd-v2.log``.

Other candidates (:data:`CANDIDATES`) differ in width or latent size; they are measured for cost
(``scripts/bench_train.py --candidate``), with random weights; none is trained yet.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lora_wise.factory.backbones import tiny_sd

NAME = "tiny-sd-v2"
RESOLUTION = tiny_sd.RESOLUTION

#: Candidate UNet configs, overrides of v1's. "v2" is the shipped one.
CANDIDATES: dict[str, dict] = {
    "v2": {},
    "v2-wide": dict(
        block_out_channels=(64, 64, 128, 128), attention_head_dim=(1, 1, 2, 2), cross_attention_dim=32
    ),
    "v2-128px": dict(sample_size=32),
}


def data_dir() -> Path:
    return Path(str(resources.files("lora_wise") / "data" / "tiny_sd_v2"))


def unet_config(candidate: str = "v2") -> dict:
    return {**tiny_sd.UNET_CONFIG, **CANDIDATES[candidate]}


def load_tiny_sd_v2(weights_dir: Path | None = None):
    """``(unet, vae, text_encoder, tokenizer, scheduler)`` with v2's shipped weights, float32.

    The folder holds ``unet`` and ``vae`` only: the text encoder is v1's file (the same frozen,
    seeded weights), not a second copy of it.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(weights_dir) if weights_dir else data_dir()
    unet, vae, text_encoder = tiny_sd.build_models()
    files = {"unet": folder / "unet.safetensors", "vae": folder / "vae.safetensors",
             "text_encoder": tiny_sd.data_dir() / "text_encoder.safetensors"}  # fmt: skip
    for model, (name, path) in zip((unet, vae, text_encoder), files.items(), strict=True):
        if not path.is_file():
            raise FileNotFoundError(
                f"tiny-sd-v2 {name} weights missing: {path} (scripts/pretrain_tiny_sd_v2.py)"
            )
        model.load_state_dict({k: v.float() for k, v in load_file(path).items()}, strict=True)
        model.requires_grad_(False).eval()
    with safe_open(files["vae"], "pt") as f:
        vae.register_to_config(scaling_factor=float((f.metadata() or {}).get("scaling_factor", 1.0)))
    return unet, vae, text_encoder, tiny_sd.build_tokenizer(), tiny_sd.build_scheduler()


def build_candidate(candidate: str, seed: int = 0):
    """A candidate's backbone with seeded random weights: for measuring its cost, not for benchmarks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from lora_wise.factory.backbones import DiffusionBackbone

    _, _, text_encoder = tiny_sd.build_models(seed)
    unet = UNet2DConditionModel(**unet_config(candidate)).requires_grad_(False).eval()
    vae_cfg = {**tiny_sd.VAE_CONFIG, "sample_size": unet.config.sample_size * 4}
    vae = AutoencoderKL(**vae_cfg).requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    return DiffusionBackbone(
        f"{NAME}:{candidate}", unet, vae, (text_encoder,), (tiny_sd.build_tokenizer(),),
        tiny_sd.build_scheduler(), unet.config.sample_size * 4,
    )  # fmt: skip
