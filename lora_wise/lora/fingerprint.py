"""Which base model a LoRA belongs to: sd15, sd2, sdxl, flux, sd3, tiny-sd, tiny-sd-v2 or unknown.

Three kinds of evidence, strongest first: tensor shapes (the UNet cross-attention ``attn2.to_k``
input width is the text encoder's width: 768 SD1.x, 1024 SD2.x, 2048 SDXL, 32 the project's
tiny SD1.5-shaped model), layer names (``text_encoder_2``/``lora_te2_``, sgm block names,
``double_blocks``, ``joint_blocks``), then declared metadata (``ss_base_model_version``,
``modelspec.architecture``, our ``lora_wise`` key). Every clue is kept as an evidence string,
including the ones that disagree with the verdict.

Some bases share every shape with another (``tiny-sd-v2`` is tiny-sd's architecture with other
weights): shapes name the family, and only metadata can name the variant, so a variant the
metadata declares refines a shape verdict of its family instead of contradicting it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from lora_wise.lora.weights import Backbone, LoraLayer

CROSS_ATTENTION_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl", 32: "tiny-sd"}
#: Bases whose LoRAs have exactly another base's shapes: variant -> the family its shapes say.
SAME_SHAPES_AS = {"tiny-sd-v2": "tiny-sd"}

_VERSION_PREFIXES = (  # ss_base_model_version / modelspec.architecture / sidecar backbone, by prefix
    ("sdxl", "sdxl"), ("stable-diffusion-xl", "sdxl"), ("sd_v1", "sd15"), ("stable-diffusion-v1", "sd15"),
    ("sd15", "sd15"), ("sd_v2", "sd2"), ("stable-diffusion-v2", "sd2"), ("sd2", "sd2"), ("flux", "flux"),
    ("sd3", "sd3"), ("stable-diffusion-v3", "sd3"), ("stable-diffusion-3", "sd3"),
    ("tiny-sd-v2", "tiny-sd-v2"), ("tiny_sd_v2", "tiny-sd-v2"), ("tiny-sd", "tiny-sd"),
    ("tiny_sd", "tiny-sd"),
)  # fmt: skip


def _input_width(layer: LoraLayer) -> int | None:
    try:
        return layer.shape[1]
    except (IndexError, ValueError):  # a layer without any weights: no width to read
        return None


def from_shapes(layers: dict[str, LoraLayer]) -> tuple[str | None, list[str]]:
    widths = {
        _input_width(layer)
        for name, layer in layers.items()
        if name.startswith("unet.") and name.endswith("attn2.to_k")
    }
    widths.discard(None)
    if len(widths) != 1:
        return None, [f"attn2.to_k input widths disagree: {sorted(widths)}"] if widths else []
    width = widths.pop()
    verdict = CROSS_ATTENTION_WIDTHS.get(width)
    return verdict, [f"unet attn2.to_k input width {width}" + (f" -> {verdict}" if verdict else " (unknown)")]


def from_names(names: Iterable[str], raw_keys: Iterable[str]) -> tuple[str | None, list[str]]:
    names = list(names)
    components = {name.split(".", 1)[0] for name in names}
    raw = list(raw_keys)
    if any(
        ".double_blocks." in n or ".single_blocks." in n or ".single_transformer_blocks." in n for n in names
    ):
        return "flux", ["flux block names (double_blocks / single_blocks)"]
    if any(".joint_blocks." in n for n in names):
        return "sd3", ["sd3 block names (joint_blocks)"]
    if "text_encoder_3" in components:  # T5: both SD3 and Flux have one, so it decides nothing
        return None, ["a T5 text encoder (text_encoder_3 / lora_te3_): sd3 or flux"]
    if "text_encoder_2" in components:
        return "sdxl", ["second text encoder (text_encoder_2 / lora_te2_)"]
    if any("input_blocks" in k or "output_blocks" in k for k in raw):
        return "sdxl", ["sgm block names (input_blocks / output_blocks), as kohya writes SDXL"]
    return None, []


def from_metadata(meta: dict[str, str]) -> tuple[str | None, list[str]]:
    clues = [("ss_base_model_version", meta.get("ss_base_model_version")),
             ("modelspec.architecture", meta.get("modelspec.architecture"))]  # fmt: skip
    try:
        sidecar = json.loads(meta.get("lora_wise") or "null")
    except (ValueError, RecursionError):
        sidecar = None
    if isinstance(sidecar, dict) and isinstance(sidecar.get("backbone"), str):
        clues.append(("lora_wise backbone", sidecar["backbone"]))
    if meta.get("ss_v2") == "True":
        clues.append(("ss_v2", "sd_v2"))
    for key, value in clues:
        if not value:
            continue
        lowered = value.lower()
        for prefix, verdict in _VERSION_PREFIXES:
            if lowered.startswith(prefix):
                return verdict, [f"{key}={value[:60]} -> {verdict}"]
    return None, []


def same_family(a: str, b: str) -> bool:
    """Whether two verdicts agree on the shapes: equal, or one a same-shaped variant of the other."""
    return SAME_SHAPES_AS.get(a, a) == SAME_SHAPES_AS.get(b, b)


def fingerprint(layers: dict[str, LoraLayer], meta: dict[str, str], raw_keys: Iterable[str] = ()) -> Backbone:
    """The backbone verdict with its evidence: shapes win over names, names over metadata."""
    votes = [
        from_shapes(layers),
        from_names(layers, raw_keys),
        from_metadata(meta),
        from_text_encoder(layers),
    ]
    evidence = [clue for _, clues in votes for clue in clues]
    verdicts = [verdict for verdict, _ in votes if verdict]
    if not verdicts:
        return Backbone("unknown", evidence or ["no shape, name or metadata clue"])
    name = verdicts[0]  # the strongest kind of clue that said anything
    variant = next((v for v in verdicts if SAME_SHAPES_AS.get(v) == name), None)
    if variant:
        evidence.append(f"{variant} has {name}'s shapes; the metadata names the variant")
        name = variant
    disagree = sorted({v for v in verdicts if v != name and SAME_SHAPES_AS.get(name) != v})
    if disagree:
        evidence.append(f"weaker clues suggest {', '.join(disagree)}; kept {name}")
    return Backbone(name, evidence)


def from_text_encoder(layers: dict[str, LoraLayer]) -> tuple[str | None, list[str]]:
    """Text-encoder-only: CLIP width 1024 is SD2's OpenCLIP-H; 768 is CLIP-L (SD1.x or SDXL's first)."""
    widths = {
        _input_width(layer)
        for name, layer in layers.items()
        if name.startswith("text_encoder.") and name.endswith("self_attn.q_proj")
    }
    if len(widths) != 1:
        return None, []
    width = widths.pop()
    verdict = {768: "sd15", 1024: "sd2", 32: "tiny-sd"}.get(width)
    return verdict, [f"text_encoder q_proj width {width}" + (f" -> {verdict}" if verdict else "")]
