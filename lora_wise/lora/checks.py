"""What a file declares against what its weights show: warnings for the scanner, the crawl and inspect.

``declared_conflicts(weights)`` returns one line per conflict (an empty list when all agrees):
a declared base model the weights contradict (``ss_base_model_version: sd_v1`` on a Flux
LoRA), a declared rank or image count that is impossible or contradicts the layers;
``read_lora`` stores them in ``LoraWeights.conflicts`` (findings: ``lora-scan`` exits 1).
``non_image_warning`` says when the adapter is not an image model's at all (a T5 or LLM PEFT
adapter); ``read_lora`` adds it to ``LoraWeights.warnings``. The functions are public so that
callers can run them on weights they built themselves.
"""

from __future__ import annotations

from lora_wise.lora.fingerprint import from_metadata, from_names, from_shapes, same_family
from lora_wise.lora.weights import LoraWeights

IMAGE_COMPONENTS = {"unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"}
#: PEFT task types, all of them language-model tasks (diffusion adapters leave task_type unset).
LANGUAGE_TASKS = {"CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"}
_T5_PARTS = (".SelfAttention.", ".EncDecAttention.", ".DenseReluDense.", ".block.")


def non_image_adapter(weights: LoraWeights) -> str | None:
    """What the adapter is when it is not an image model's (e.g. "a T5 text model's"), else None."""
    task = weights.declared.task_type if weights.declared else None
    if task and task.upper() in LANGUAGE_TASKS:
        return f"a language model's (PEFT task_type {task})"
    components = set(weights.components)
    if not components & IMAGE_COMPONENTS:
        return f"layers under {', '.join(sorted(components))[:60]}, no image-model component"
    if components & {"unet", "transformer"} or "text_encoder" not in components:
        return None
    t5 = [
        name
        for name in weights.layers
        if name.startswith("text_encoder.") and any(p in name for p in _T5_PARTS)
    ]
    if t5 and not any("text_model." in name for name in weights.layers):
        return "a T5 text model's (encoder.block.* layers, no UNet, no CLIP text model)"
    return None


def _backbone_conflict(weights: LoraWeights) -> str | None:
    declared, clues = from_metadata(weights.header_metadata)
    for verdict, evidence in (from_shapes(weights.layers), from_names(weights.layers, ())):
        if verdict and declared and not same_family(verdict, declared):
            return f"declares {declared} ({clues[0]}) but its weights are {verdict}'s ({evidence[0]})"
        if verdict:
            return None
    return None


def _rank_conflict(weights: LoraWeights) -> str | None:
    dim = weights.declared.network_dim if weights.declared else None
    if dim is None or not weights.layers:
        return None
    widest = max(min(layer.shape) for layer in weights.layers.values())
    if dim <= 0 or dim > widest:
        return f"declared network dim {dim} is impossible for layers of at most {widest} rows or columns"
    if weights.rank and dim != weights.rank:
        return f"declared network dim {dim} but the layers have rank {weights.rank}"
    return None


def _images_conflict(weights: LoraWeights) -> str | None:
    declared = weights.declared
    if declared is None or declared.unique_images is None:
        return None
    if declared.unique_images == 0:
        return "declares 0 training images"
    with_repeats = declared.num_train_images
    if with_repeats is not None and 0 < with_repeats < declared.unique_images:
        return (
            f"declares {declared.unique_images} distinct images but only {with_repeats} training images "
            "with repeats: one of the two is wrong"
        )
    return None


def declared_conflicts(weights: LoraWeights) -> list[str]:
    """One line per place where the declared metadata is impossible or contradicts the weights:
    an auditor's findings (``lora-scan`` exits 1), not mere warnings."""
    return [
        found for check in (_backbone_conflict, _rank_conflict, _images_conflict) if (found := check(weights))
    ]


def non_image_warning(weights: LoraWeights) -> str | None:
    what = non_image_adapter(weights)
    return f"not an image model's adapter: {what}; dataset-size estimates do not apply" if what else None
