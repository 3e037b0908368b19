"""Declared training metadata: what the file says about how it was trained.

Sources, all strings in the safetensors header unless noted: kohya sd-scripts ``ss_*`` keys,
Stability's ``modelspec.*``, diffusers' ``lora_adapter_metadata`` (a JSON LoraConfig per
component), our own factory's ``lora_wise`` sidecar key, and a PEFT ``adapter_config.json``
(a dict, from the adapter folder). Declared values are reported, never trusted for weights:
a malformed value is skipped, it does not make the file unreadable.
"""

from __future__ import annotations

import json
import math
from typing import Any

from lora_wise.lora.formats.scaling import AlphaConfig
from lora_wise.lora.weights import DeclaredTraining

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' loaders.lora_base constant
LORA_WISE_KEY = "lora_wise"

_KOHYA_INTS = {
    "num_train_images": "ss_num_train_images",
    "num_reg_images": "ss_num_reg_images",
    "steps": "ss_steps",
    "max_train_steps": "ss_max_train_steps",
    "epochs": "ss_num_epochs",
    "epoch": "ss_epoch",
}
_KOHYA_EXTRA = (
    "ss_unet_lr", "ss_text_encoder_lr", "ss_gradient_accumulation_steps", "ss_seed", "ss_network_args",
    "ss_training_comment", "ss_training_started_at", "ss_mixed_precision", "ss_v2", "sshs_model_hash",
    "sshs_legacy_hash",
)  # fmt: skip
_KOHYA_TEXT = {  # the settings lora-inspector shows, as the file spells them
    "optimizer": "ss_optimizer", "lr_scheduler": "ss_lr_scheduler", "output_name": "ss_output_name",
    "resolution": "ss_resolution",
}  # fmt: skip
_KOHYA_FLOATS = {"noise_offset": "ss_noise_offset", "min_snr_gamma": "ss_min_snr_gamma"}
_BUCKET_KEYS = {
    "enabled": "ss_enable_bucket", "min_reso": "ss_min_bucket_reso", "max_reso": "ss_max_bucket_reso",
    "no_upscale": "ss_bucket_no_upscale",
}  # fmt: skip
TOP_TAGS = 10  # tags shown per dataset dir, most frequent first (lora-inspector shows the same kind of list)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number == number and abs(number) < 2**62 else None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any, where: str, warnings: list[str]) -> int | None:
    """An image count: a negative or non-numeric one is reported and left out, never summed."""
    count = _int(value)
    if count is not None and count < 0:
        warnings.append(
            f"declared img_count {count} for {where[:60]!r} is negative: left out of the image count"
        )
        return None
    return count


def _from_dataset_dirs(dirs: Any, warnings: list[str]) -> tuple[int | None, dict[str, int] | None]:
    if not isinstance(dirs, dict) or not dirs:
        return None, None
    entries = {str(k): v for k, v in dirs.items() if isinstance(v, dict)}
    counts = [_count(v.get("img_count"), k, warnings) for k, v in entries.items()]
    repeats = {
        k: _int(v.get("n_repeats")) for k, v in entries.items() if _int(v.get("n_repeats")) is not None
    }
    if counts and all(c is not None for c in counts):
        return sum(counts), repeats or None
    return None, None


def _from_datasets(datasets: Any, warnings: list[str]) -> tuple[int | None, dict[str, int] | None]:
    if not isinstance(datasets, list):
        return None, None
    total, repeats, seen = 0, {}, False
    for dataset in datasets:
        subsets = dataset.get("subsets") if isinstance(dataset, dict) else None
        if subsets is not None and not isinstance(subsets, list):  # a number, a boolean: not kohya's shape
            warnings.append(f"ss_datasets: 'subsets' is a {type(subsets).__name__}, not a list: ignored")
            continue
        for subset in subsets or []:
            if not isinstance(subset, dict) or subset.get("is_reg"):
                continue
            name = str(subset.get("image_dir") or f"subset{len(repeats)}")
            count = _count(subset.get("img_count"), name, warnings)
            if count is not None:
                total, seen = total + count, True
                if _int(subset.get("num_repeats")) is not None:
                    repeats[name] = _int(subset.get("num_repeats"))
    return (total, repeats or None) if seen else (None, None)


def _kohya_images(meta: dict[str, str], warnings: list[str]) -> tuple[int | None, dict[str, int] | None]:
    """Unique images (Σ img_count over non-regularisation dirs) and repeats per dir."""
    images, repeats = _from_dataset_dirs(_json(meta.get("ss_dataset_dirs")), warnings)
    if images is None:
        images, repeats = _from_datasets(_json(meta.get("ss_datasets")), warnings)
    return images, repeats


def _tag_frequency(meta: dict[str, str]) -> dict[str, dict[str, int]] | None:
    """``ss_tag_frequency`` ``{dir: {tag: count}}``, else the per-dataset copies in ``ss_datasets``."""
    data = _json(meta.get("ss_tag_frequency"))
    if not isinstance(data, dict):
        datasets = _json(meta.get("ss_datasets"))
        data = {}
        for dataset in datasets if isinstance(datasets, list) else []:
            frequency = dataset.get("tag_frequency") if isinstance(dataset, dict) else None
            data.update(frequency if isinstance(frequency, dict) else {})
    out = {}
    for folder, tags in data.items():
        if isinstance(tags, dict):
            counts = {str(tag).strip(): _int(n) for tag, n in tags.items()}
            out[str(folder)] = {tag: n for tag, n in counts.items() if n is not None and n > 0}
    return out or None


def _buckets(meta: dict[str, str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {name: meta[key] for name, key in _BUCKET_KEYS.items() if key in meta}
    info = _json(meta.get("ss_bucket_info"))
    if isinstance(info, dict):
        out["buckets"] = info.get("buckets")
        out["mean_img_ar_error"] = _float(info.get("mean_img_ar_error"))
    return out or None


def _from_kohya(meta: dict[str, str], out: DeclaredTraining) -> None:
    out.unique_images, out.repeats = _kohya_images(meta, out.warnings)
    for field_name, key in _KOHYA_INTS.items():
        setattr(out, field_name, _int(meta.get(key)))
    out.batch_size = _int(meta.get("ss_total_batch_size")) or _int(meta.get("ss_batch_size_per_device"))
    out.learning_rate = _float(meta.get("ss_learning_rate")) or _float(meta.get("ss_unet_lr"))
    out.network_module = meta.get("ss_network_module")
    out.network_dim = _int(meta.get("ss_network_dim"))
    out.network_alpha = _float(meta.get("ss_network_alpha"))
    out.base_model = meta.get("ss_sd_model_name")
    out.base_model_version = meta.get("ss_base_model_version")
    for field_name, key in _KOHYA_TEXT.items():
        setattr(out, field_name, meta.get(key) or None)
    for field_name, key in _KOHYA_FLOATS.items():
        setattr(out, field_name, _float(meta.get(key)))
    out.clip_skip = _int(meta.get("ss_clip_skip"))
    out.tag_frequency = _tag_frequency(meta)
    if out.tag_frequency:
        out.top_tags = {
            folder: [tag for tag, _ in sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]]
            for folder, tags in out.tag_frequency.items()
        }
    out.buckets = _buckets(meta)
    out.extra.update({k: meta[k] for k in _KOHYA_EXTRA if k in meta})


def _from_ai_toolkit(meta: dict[str, str], out: DeclaredTraining) -> bool:
    """ostris ai-toolkit: ``training_info`` = ``{"step": N, "epoch": M}`` (plus ``software``/``name``)."""
    info = _json(meta.get("training_info"))
    if not isinstance(info, dict):
        return False
    out.steps = out.steps if out.steps is not None else _int(info.get("step"))
    out.epoch = out.epoch if out.epoch is not None else _int(info.get("epoch"))
    software = _json(meta.get("software"))
    if isinstance(software, dict):
        out.extra["software"] = {str(k): str(v)[:80] for k, v in software.items()}
    if meta.get("name"):
        out.output_name = out.output_name or meta["name"]
    return True


def _from_modelspec(meta: dict[str, str], out: DeclaredTraining) -> None:
    out.architecture = meta.get("modelspec.architecture") or out.architecture
    out.title = meta.get("modelspec.title") or out.title
    out.trigger_phrase = meta.get("modelspec.trigger_phrase") or out.trigger_phrase
    for key, value in meta.items():
        if key.startswith("modelspec.") and key not in ("modelspec.architecture", "modelspec.title"):
            out.extra.setdefault(key, value)


def _from_peft(config: dict[str, Any], out: DeclaredTraining) -> None:
    out.network_dim = out.network_dim or _int(config.get("r"))
    out.network_alpha = out.network_alpha or _float(config.get("lora_alpha"))
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if isinstance(targets, list) and not out.target_modules:
        out.target_modules = sorted(str(t) for t in targets)
    base = config.get("base_model_name_or_path")
    if isinstance(base, str) and base and not out.base_model:
        out.base_model = base
    task = config.get("task_type")
    if isinstance(task, str) and task:
        out.task_type = task


def _from_lora_wise(sidecar: dict[str, Any], out: DeclaredTraining) -> None:
    job = sidecar.get("job") if isinstance(sidecar.get("job"), dict) else {}
    out.unique_images = _int(sidecar.get("dataset_size"))
    out.steps = _int(sidecar.get("step"))
    out.max_train_steps = _int(job.get("steps"))
    out.batch_size = _int(job.get("batch_size"))
    out.learning_rate = _float(job.get("learning_rate"))
    out.network_dim = _int(sidecar.get("rank"))
    out.network_alpha = _float(sidecar.get("alpha"))
    out.base_model = str(sidecar.get("backbone") or job.get("backbone") or "") or None
    if isinstance(job.get("target_modules"), list):
        out.target_modules = [str(t) for t in job["target_modules"]]
    for key in ("model_id", "micro_dataset"):
        if key in sidecar:
            out.extra[key] = sidecar[key]


def component_configs(meta: dict[str, str]) -> dict[str, dict[str, Any]]:
    """diffusers' ``lora_adapter_metadata`` split per component: ``{"unet": {"r": 8, ...}}``."""
    data = _json(meta.get(LORA_ADAPTER_METADATA_KEY))
    out: dict[str, dict[str, Any]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            component, _, field_name = str(key).partition(".")
            if field_name:
                out.setdefault(component, {})[field_name] = value
    return out


def parse_declared(
    meta: dict[str, str], peft_config: dict[str, Any] | None = None
) -> DeclaredTraining | None:
    """The typed declared metadata, or None when the file declares nothing we know."""
    out = DeclaredTraining()
    sources = []
    sidecar = _json(meta.get(LORA_WISE_KEY))
    if isinstance(sidecar, dict):
        _from_lora_wise(sidecar, out)
        sources.append("lora-wise")
    if any(key.startswith("ss_") for key in meta):
        _from_kohya(meta, out)
        sources.append("kohya")
    if any(key.startswith("modelspec.") for key in meta):
        _from_modelspec(meta, out)
        sources.append("modelspec")
    if _from_ai_toolkit(meta, out):
        sources.append("ai-toolkit")
    for config in [peft_config or {}, *component_configs(meta).values()]:
        if config:
            _from_peft(config, out)
            sources.append("peft")
    if not sources:
        return None
    out.source = "+".join(dict.fromkeys(sources))
    return out


def alpha_configs(
    meta: dict[str, str], peft_config: dict[str, Any] | None, source: str
) -> dict[str, AlphaConfig]:
    """Alpha settings by component (``*`` = all) from PEFT config, diffusers metadata, our sidecar."""
    if peft_config:
        return {"*": AlphaConfig.from_dict(peft_config, source)}
    configs = {c: AlphaConfig.from_dict(d, source) for c, d in component_configs(meta).items()}
    if configs:
        return configs
    sidecar = _json(meta.get(LORA_WISE_KEY))
    if isinstance(sidecar, dict) and sidecar.get("alpha") is not None:
        return {
            "*": AlphaConfig.from_dict({"r": sidecar.get("rank"), "lora_alpha": sidecar.get("alpha")}, source)
        }
    return {}
