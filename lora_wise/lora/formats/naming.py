"""Canonical layer names: one diffusers module path, with a component prefix, per adapted module.

Every family's key names end up here. Kohya's underscore names go through diffusers' own
string converters (``_convert_unet_lora_key``, ``_convert_text_encoder_lora_key`` and, for
SDXL's sgm block names, ``_maybe_map_sgm_blocks_to_diffusers``), which return the old
attention-processor spelling; :func:`normalize_dotted` then folds every dotted spelling
(PEFT, current diffusers, old processors) into the one canonical form. These are pure
string functions: no tensor is touched, so naming costs nothing next to reading.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

from lora_wise.lora.formats.kohya_keys import convert_text_encoder_key, convert_unet_key, map_sgm_blocks

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "prior")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3")

#: Kohya component prefixes (LyCORIS and OneTrainer use the same ones).
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
}

# Old attention-processor spellings: UNet attention vs CLIP attention projections.
_OLD_UNET = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
_OLD_TEXT = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}

_CLIP_ROOTS = ("encoder.layers.", "embeddings.", "final_layer_norm")
_UNET_ROOTS = (
    "down_blocks",
    "mid_block",
    "up_blocks",
    "conv_in",
    "conv_out",
    "time_embedding",
    "add_embedding",
)
_TRANSFORMER_ROOTS = (
    "transformer_blocks", "single_transformer_blocks", "double_blocks", "single_blocks", "joint_blocks",
    "context_embedder", "x_embedder", "time_text_embed", "proj_out", "norm_out", "pos_embed",
)  # fmt: skip

#: Roots of Flux / SD3 kohya names (which still carry the ``lora_unet_`` prefix).
BIG_MODEL_ROOTS = ("double_blocks_", "single_blocks_", "joint_blocks_", "final_layer")

# Flux / SD3 (kohya) module words that contain underscores and must survive "_" -> ".".
_BIG_MODEL_WORDS = (
    "double_blocks", "single_blocks", "joint_blocks", "img_attn", "txt_attn", "img_mlp", "txt_mlp",
    "img_mod", "txt_mod", "final_layer", "adaLN_modulation", "x_block", "context_block", "time_in",
    "vector_in", "guidance_in", "txt_in", "img_in", "x_embedder", "t_embedder", "y_embedder",
    "context_embedder", "in_layer", "out_layer",
)  # fmt: skip
_BIG_MODEL_WORDS_BY_LENGTH = sorted(_BIG_MODEL_WORDS, key=lambda w: -w.count("_"))


def split_component(module: str) -> tuple[str, str]:
    """``unet.down_blocks.0...`` -> (``unet``, ``down_blocks.0...``); infer it when absent."""
    for prefix in ("base_model.model.", "model.diffusion_model."):
        if module.startswith(prefix):
            module = module[len(prefix) :]
    head, _, rest = module.partition(".")
    if head in COMPONENTS and rest:
        return head, rest
    return infer_component(module), module


def infer_component(path: str) -> str:
    """The component a bare module path belongs to (PEFT adapters store paths without one)."""
    root = path.split(".", 1)[0]
    if root in _UNET_ROOTS:
        return "unet"
    if root in ("text_model", "encoder", "shared") or path.startswith("text_projection"):
        return "text_encoder"
    if root in _TRANSFORMER_ROOTS:
        return "transformer"
    return "model"


def normalize_dotted(component: str, path: str) -> str:
    """Fold old spellings into the path (``attn1.processor.to_out_lora`` -> ``attn1.to_out.0``)."""
    path = path.replace(".processor.", ".")
    if path.endswith(".processor"):
        path = path[: -len(".processor")]
    if component in TEXT_COMPONENTS and path.startswith(_CLIP_ROOTS):
        # transformers 5 dropped CLIPTextModel's ``text_model`` level; published files keep it.
        path = f"text_model.{path}"
    head, _, last = path.rpartition(".")
    table = _OLD_TEXT if component in TEXT_COMPONENTS else _OLD_UNET
    if last in table:
        path = f"{head}.{table[last]}" if head else table[last]
    return f"{component}.{path}"


def canonical_dotted(module: str) -> str:
    """Canonical name of a dotted module string (PEFT, diffusers, old processors)."""
    component, path = split_component(module)
    return normalize_dotted(component, path)


@lru_cache(maxsize=1)
def _sgm_config() -> SimpleNamespace:
    # SD1.x, SD2.x and SDXL all use two layers per block; diffusers needs only this field.
    return SimpleNamespace(layers_per_block=2)


def _strip_known_tail(name: str) -> str:
    """Drop the role suffix diffusers' converters leave behind (``.lora.down.weight`` and kin)."""
    for tail in (".lora_linear_layer.down.weight", ".lora.down.weight", ".down.weight"):
        if name.endswith(tail):
            return name[: -len(tail)]
    return name


def _kohya_big_model(rest: str) -> str:
    """Flux / SD3 kohya names, best effort: keep multi-word tokens whole, join the rest with dots."""
    tokens, parts, i = rest.split("_"), [], 0
    while i < len(tokens):
        for word in _BIG_MODEL_WORDS_BY_LENGTH:
            n = word.count("_") + 1
            if "_".join(tokens[i : i + n]) == word:
                parts.append(word)
                i += n
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def kohya_unet_paths(rests: list[str]) -> dict[str, str]:
    """Map kohya UNet names (prefix stripped) to diffusers paths, sgm block names included."""
    out: dict[str, str] = {}
    plain = []
    for rest in rests:
        if rest.startswith(BIG_MODEL_ROOTS):
            out[rest] = _kohya_big_model(rest)
        else:
            plain.append(rest)
    keyed = {f"lora_unet_{rest}.lora_down.weight": rest for rest in plain}
    sgm = {
        k: k for k in keyed if any(block in k for block in ("input_blocks", "middle_block", "output_blocks"))
    }
    renamed = {k: k for k in keyed if k not in sgm}
    # Only the sgm names go through the block map (diffusers drops them when both spellings mix);
    # it moves each value to its renamed key, so values = old keys give us the map.
    try:
        renamed.update(map_sgm_blocks(list(sgm), _sgm_config().layers_per_block))
    except (ValueError, IndexError, KeyError):
        renamed.update({k: k for k in sgm})  # unusual sgm names: keep them as they are
    for key in keyed.keys() - set(renamed.values()):  # any key the block map might have dropped
        renamed[key] = key
    for new, old in renamed.items():
        out[keyed[old]] = _strip_known_tail(convert_unet_key(new))
    return out


def kohya_text_path(rest: str) -> str:
    """Map a kohya text-encoder name (prefix stripped) to the CLIP/T5 module path."""
    key = f"lora_te_{rest}.lora_down.weight"
    return _strip_known_tail(convert_text_encoder_key(key, f"lora_te_{rest}"))
