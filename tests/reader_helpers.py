"""Builders that write REAL LoRA files for the reader tests.

The weights come from a tiny SD1.5-shaped UNet and a tiny CLIP text encoder built from config
(no download), with LoRA attached by peft and both A and B randomised (B is zero at init).
The same weights are then written in every published format: diffusers ``save_lora_weights``,
PEFT ``save_pretrained``, diffusers' ``convert_state_dict_to_kohya``, and hand-built old
processor / ``lora.down`` / mangled / cloneofsimo / LoHa / LoKr / LoCon files.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

TINY_UNET = dict(
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
    sample_size=16,
)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET)


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def randomise_lora(model: torch.nn.Module, seed: int) -> None:
    """Both A and B random: B is zero at init, which would make every spectrum zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def lora_config(rank: int, targets: list[str], **kwargs):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=kwargs.pop("lora_alpha", rank), target_modules=targets, **kwargs)


@lru_cache(maxsize=8)
def _state_dicts(rank: int, seed: int) -> tuple[dict, dict]:
    from peft import get_peft_model_state_dict

    unet = tiny_unet()
    unet.add_adapter(lora_config(rank, UNET_TARGETS))
    randomise_lora(unet, seed)
    text = tiny_text_encoder()
    text.add_adapter(lora_config(rank, TEXT_TARGETS))
    randomise_lora(text, seed + 1)
    return get_peft_model_state_dict(unet), get_peft_model_state_dict(text)


def state_dicts(rank: int = 4, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """PEFT-format (unet, text encoder) LoRA state dicts: ``<module path>.lora_A.weight`` keys."""
    unet, text = _state_dicts(rank, seed)
    return {k: v.clone() for k, v in unet.items()}, {k: v.clone() for k, v in text.items()}


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in state.items()
    }


def save(
    path: Path, tensors: dict, metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None
) -> Path:
    from safetensors.torch import save_file

    tensors = {k: torch.as_tensor(v) for k, v in tensors.items()}
    save_file(cast(tensors, dtype), str(path), metadata=metadata)
    return path


# --- the published formats --------------------------------------------------------------


def write_diffusers(
    folder: Path, rank: int = 4, seed: int = 0, dtype=None, text: bool = True, **kwargs
) -> Path:
    """diffusers ``StableDiffusionPipeline.save_lora_weights`` (unet. / text_encoder. prefixes)."""
    from diffusers import StableDiffusionPipeline

    unet, te = state_dicts(rank, seed)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=cast(unet, dtype),
        text_encoder_lora_layers=cast(te, dtype) if text else None,
        **kwargs,
    )
    return folder / "pytorch_lora_weights.safetensors"


def write_peft_folder(folder: Path, rank: int = 4, seed: int = 0, **config_kwargs) -> Path:
    """PEFT ``save_pretrained`` of a PeftModel around the tiny UNet holding the same weights."""
    from peft import get_peft_model, set_peft_model_state_dict

    model = get_peft_model(tiny_unet(), lora_config(rank, UNET_TARGETS, **config_kwargs))
    unet, _ = state_dicts(rank, seed)
    if not config_kwargs.get("use_dora"):
        result = set_peft_model_state_dict(model, {f"base_model.model.{k}": v for k, v in unet.items()})
        assert not result.unexpected_keys, result.unexpected_keys[:3]
    else:
        randomise_lora(model, seed)
    model.save_pretrained(folder)
    return folder


def kohya_state(rank: int = 4, seed: int = 0, text: bool = True) -> dict[str, torch.Tensor]:
    """diffusers' ``convert_state_dict_to_kohya`` of the same weights (alpha = rank)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    unet, te = state_dicts(rank, seed)
    peft = {f"unet.{k}": v for k, v in unet.items()}
    if text:
        peft.update({f"text_encoder.{k}": v for k, v in te.items()})
    return convert_state_dict_to_kohya(peft)


def write_kohya(
    path: Path,
    rank: int = 4,
    seed: int = 0,
    alpha: float | None = None,
    drop_alpha: bool = False,
    metadata: dict[str, str] | None = None,
    dtype=None,
) -> Path:
    state = kohya_state(rank, seed)
    if drop_alpha:
        state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    elif alpha is not None:
        state = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v) for k, v in state.items()}
    return save(path, state, metadata, dtype)


_OLD_PROC = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}


def _renamed_unet(path: Path, rank: int, seed: int, name) -> Path:
    """The PEFT UNet state saved under ``name(module, proj, role)`` keys."""
    unet, _ = state_dicts(rank, seed)
    return save(path, {name(*_split_peft(key)): value for key, value in unet.items()})


def write_old_processor(path: Path, rank: int = 4, seed: int = 0) -> Path:
    """Old diffusers attention processors: ``<path>.processor.to_q_lora.down.weight`` (UNet only)."""
    return _renamed_unet(path, rank, seed, lambda m, p, r: f"{m}.processor.{_OLD_PROC[p]}.{r}.weight")


def write_lora_down_up(path: Path, rank: int = 4, seed: int = 0) -> Path:
    """diffusers' other spelling: ``unet.<path>.lora.down.weight`` / ``.lora.up.weight``."""
    return _renamed_unet(path, rank, seed, lambda m, p, r: f"unet.{m}.{p}.lora.{r}.weight")


def write_mangled(path: Path, rank: int = 4, seed: int = 0) -> Path:
    """A doubled prefix and ``_`` before the role (``lora_unet_unet_..._lora_down.weight``)."""
    out = {}
    for key, value in kohya_state(rank, seed, text=False).items():
        module, _, role = key.partition(".")
        mangled = "lora_unet_unet_" + module[len("lora_unet_") :]
        out[f"{mangled}.alpha" if role == "alpha" else f"{mangled}_{role}"] = value
    return save(path, out)


def cloneofsimo_order(with_geglu: bool = False) -> list[str]:
    """Positions as lora_diffusion assigns them: walk the REAL tiny UNet the way it does."""
    targets = {"Attention", "CrossAttention"} | ({"GEGLU"} if with_geglu else set())
    unet = tiny_unet()
    names = []
    for ancestor_name, ancestor in unet.named_modules():
        if type(ancestor).__name__ in targets:
            for child_name, child in ancestor.named_modules():
                if isinstance(child, torch.nn.Linear):
                    names.append(f"unet.{ancestor_name}.{child_name}")
    return names


def write_cloneofsimo(path: Path, rank: int = 4, seed: int = 0) -> Path:
    unet, _ = state_dicts(rank, seed)
    out, metadata = {}, {"unet": json.dumps(["CrossAttention", "Attention"])}
    for i, name in enumerate(cloneofsimo_order()):
        module = name[len("unet.") :]
        out[f"unet:{i}:down"] = unet[f"{module}.lora_A.weight"]
        out[f"unet:{i}:up"] = unet[f"{module}.lora_B.weight"]
        metadata[f"unet:{i}:rank"] = str(rank)
    out["<s1>"] = torch.randn(32)  # a learned token embedding, as lora_diffusion saves them
    return save(path, out, metadata)


def _split_peft(key: str) -> tuple[str, str, str]:
    """``a.b.to_out.0.lora_A.weight`` -> (``a.b``, ``to_out.0``, ``down``)."""
    module, ab, _ = key.rsplit(".", 2)
    role = "down" if ab == "lora_A" else "up"
    for proj in ("to_out.0", "to_q", "to_k", "to_v"):
        if module.endswith("." + proj):
            return module[: -len(proj) - 1], proj, role
    raise ValueError(key)


# --- LyCORIS and conv -------------------------------------------------------------------


def write_loha(
    path: Path, shapes: dict[str, tuple[int, int]], dim: int = 4, alpha: float = 2.0, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray]]:
    """LoHa (kohya names); returns the true scaled ΔW per canonical name."""
    rng = np.random.default_rng(seed)
    out, deltas = {}, {}
    for kohya, (d, k) in shapes.items():
        w1a, w1b, w2a, w2b = (
            rng.standard_normal(s).astype(np.float32) for s in [(d, dim), (dim, k), (d, dim), (dim, k)]
        )
        out |= {
            f"{kohya}.hada_w1_a": w1a,
            f"{kohya}.hada_w1_b": w1b,
            f"{kohya}.hada_w2_a": w2a,
            f"{kohya}.hada_w2_b": w2b,
            f"{kohya}.alpha": np.array(alpha, dtype=np.float32),
        }
        deltas[kohya] = (w1a.astype(np.float64) @ w1b) * (w2a.astype(np.float64) @ w2b) * (alpha / dim)
    return save(path, out), deltas


def write_lokr(
    path: Path,
    shapes: dict[str, tuple[int, int]],
    factor: int = 4,
    dim: int = 2,
    alpha: float = 1.0,
    seed: int = 0,
) -> tuple[Path, dict[str, np.ndarray]]:
    """LoKr with a full w1 and a decomposed w2 (kohya names); returns the true scaled ΔW."""
    rng = np.random.default_rng(seed)
    out, deltas = {}, {}
    for kohya, (d, k) in shapes.items():
        w1 = rng.standard_normal((factor, factor)).astype(np.float32)
        w2a = rng.standard_normal((d // factor, dim)).astype(np.float32)
        w2b = rng.standard_normal((dim, k // factor)).astype(np.float32)
        out |= {
            f"{kohya}.lokr_w1": w1,
            f"{kohya}.lokr_w2_a": w2a,
            f"{kohya}.lokr_w2_b": w2b,
            f"{kohya}.alpha": np.array(alpha, dtype=np.float32),
        }
        deltas[kohya] = np.kron(w1.astype(np.float64), w2a.astype(np.float64) @ w2b) * (alpha / dim)
    return save(path, out), deltas


def write_locon(
    path: Path, rank: int = 4, alpha: float = 2.0, seed: int = 0
) -> tuple[Path, dict[str, np.ndarray]]:
    """LyCORIS LoCon: kohya names on resnet convs (3×3 down, 1×1 up) plus one linear layer."""
    rng = np.random.default_rng(seed)
    convs = {
        "lora_unet_down_blocks_0_resnets_0_conv1": (32, 32, 3),
        "lora_unet_up_blocks_1_resnets_2_conv2": (64, 64, 3),
        "lora_unet_down_blocks_1_attentions_0_proj_in": (64, 64, 1),
    }
    out, deltas = {}, {}
    for kohya, (o, i, ks) in convs.items():
        down = rng.standard_normal((rank, i, ks, ks)).astype(np.float32)
        up = rng.standard_normal((o, rank, 1, 1)).astype(np.float32)
        out |= {
            f"{kohya}.lora_down.weight": down,
            f"{kohya}.lora_up.weight": up,
            f"{kohya}.alpha": np.array(alpha, dtype=np.float32),
        }
        deltas[kohya] = up.reshape(o, rank).astype(np.float64) @ down.reshape(rank, -1) * (alpha / rank)
    return save(path, out), deltas


# --- raw bytes, for hostile-input tests -------------------------------------------------


def raw_file(header: dict, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors byte string with any header we like (valid or not)."""
    blob = json.dumps(header).encode()
    n = len(blob) if header_len is None else header_len
    return struct.pack("<Q", n) + blob + data


def tiny_valid_file(rank: int = 2, d: int = 4, k: int = 3, seed: int = 0) -> bytes:
    """A minimal valid diffusers LoRA file (one layer) built byte by byte."""
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((rank, k)).astype("<f4").tobytes()
    up = rng.standard_normal((d, rank)).astype("<f4").tobytes()
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    header = {
        f"{name}.lora_A.weight": {"dtype": "F32", "shape": [rank, k], "data_offsets": [0, len(down)]},
        f"{name}.lora_B.weight": {
            "dtype": "F32",
            "shape": [d, rank],
            "data_offsets": [len(down), len(down) + len(up)],
        },
        "__metadata__": {"format": "pt"},
    }
    return raw_file(header, down + up)
