"""``tiny-sd``: a tiny Stable-Diffusion-1.5-shaped pipeline, built from config in code.

Its UNet has SD1.5's module layout (CrossAttnDownBlock2D x3 + DownBlock2D, UpBlock2D +
CrossAttnUpBlock2D x3, two layers per block, hence 16 transformer blocks), so a LoRA on
``to_q, to_k, to_v, to_out.0`` has exactly SD1.5's 128 layers under SD1.5's names; only the
widths are small (block_out_channels 32, 32, 64, 64; cross_attention_dim 32; head width 32). 64x64 RGB
images become 16x16x4 latents through a small AutoencoderKL (3 blocks, factor 4). The text
encoder is a 2-layer CLIPTextModel (width 32) with the REAL CLIP BPE tokenizer: its
vocabulary is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (MIT, vendored with its licence
in ``lora_wise/data/tiny_sd/``), from which ``vocab``/``merges`` are derived at load time
exactly as open_clip's ``SimpleTokenizer`` derives them.

The weights in ``lora_wise/data/tiny_sd/*.safetensors`` (fp16) come from a short, seeded
denoising pre-training on the offline pool (``scripts/pretrain_tiny_sd.py`` reproduces it),
so every machine starts LoRA training from the same base.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

RESOLUTION = 64
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"

UNET_CONFIG = dict(
    sample_size=RESOLUTION // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32,
    # diffusers reads this as the number of heads: 1, 1, 2, 2 heads give every level a head width
    # of 32 (SD1.5's is 40-160). LoRA layer names and shapes do not depend on it; SD1.5's 8 heads
    # would mean width-4 heads, which made a batched training step 1.6x slower on CPU.
    attention_head_dim=(1, 1, 2, 2),
    norm_num_groups=32,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=RESOLUTION,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

#: Stable Diffusion 1.5's noise schedule (its scheduler/scheduler_config.json).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def data_dir() -> Path:
    return Path(str(resources.files("lora_wise") / "data" / "tiny_sd"))


def build_tokenizer():
    """The CLIP BPE tokenizer (49,408 tokens), from the vendored open_clip vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges], model_max_length=77)


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2/CLIP byte map

    lines = gzip.open(data_dir() / VOCAB_FILE).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip's SimpleTokenizer
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return tuple((tok, i) for i, tok in enumerate(vocab)), tuple(merges)


def build_models(seed: int = 0):
    """Fresh, randomly initialised (seeded) UNet, VAE and text encoder with tiny-sd's configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return unet, vae, text_encoder


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def load_tiny_sd(weights_dir: Path | None = None):
    """``(unet, vae, text_encoder, tokenizer, scheduler)`` with the shipped pre-trained weights, float32."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(weights_dir) if weights_dir else data_dir()
    unet, vae, text_encoder = build_models()
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"tiny-sd weights missing: {path} (run scripts/pretrain_tiny_sd.py)")
        state = {k: v.float() for k, v in load_file(path).items()}
        model.load_state_dict(state, strict=True)
        model.requires_grad_(False).eval()
    with safe_open(folder / "vae.safetensors", "pt") as f:
        scaling = float((f.metadata() or {}).get("scaling_factor", 1.0))
    vae.register_to_config(scaling_factor=scaling)
    return unet, vae, text_encoder, build_tokenizer(), build_scheduler()


def save_weights(unet, vae, text_encoder, folder: Path, scaling_factor: float, provenance: str) -> None:
    """Store the three models as fp16 safetensors (the shipped form)."""
    from lora_wise.lora.safetensors_io import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"provenance": provenance}
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        extra = {"scaling_factor": repr(scaling_factor)} if name == "vae" else {}
        write_safetensors(folder / f"{name}.safetensors", state, metadata={**meta, **extra})
