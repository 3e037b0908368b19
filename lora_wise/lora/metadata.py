"""Declared training metadata: what the file says about how it was trained.

Sources, all strings in the safetensors header unless noted: kohya sd-scripts ``ss_*`` keys,
Stability's ``modelspec.*``, diffusers' ``lora_adapter_metadata`` (a JSON LoraConfig per
component), our own factory's ``lora_wise`` sidecar key, and a PEFT ``adapter_config.json``
(a dict, from the adapter folder). Declared values are reported, never trusted for weights:
a malformed value is skipped, it does not make the file unreadable.
"""

from __future__ import annotations

import json
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
    "ss_unet_lr", "ss_text_encoder_lr", "ss_gradient_accumulation_steps", "ss_resolution", "ss_seed",
    "ss_network_args", "ss_optimizer", "ss_lr_scheduler", "ss_training_comment", "ss_output_name",
    "ss_training_started_at", "ss_mixed_precision", "ss_v2", "sshs_model_hash", "sshs_legacy_hash",
)  # fmt: skip


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
    return number if number == number else None


def _kohya_images(meta: dict[str, str]) -> tuple[int | None, dict[str, int] | None]:
    """Unique images (Σ img_count over non-regularisation dirs) and repeats per dir."""
    dirs = _json(meta.get("ss_dataset_dirs"))
    if isinstance(dirs, dict) and dirs:
        entries = {str(k): v for k, v in dirs.items() if isinstance(v, dict)}
        counts = [_int(v.get("img_count")) for v in entries.values()]
        repeats = {k: _int(v.get("n_repeats")) for k, v in entries.items() if _int(v.get("n_repeats")) is not None}
        if counts and all(c is not None for c in counts):
            return sum(counts), repeats or None
    datasets = _json(meta.get("ss_datasets"))
    if isinstance(datasets, list):
        total, repeats, seen = 0, {}, False
        for dataset in datasets:
            for subset in (dataset.get("subsets") or []) if isinstance(dataset, dict) else []:
                if not isinstance(subset, dict) or subset.get("is_reg"):
                    continue
                count = _int(subset.get("img_count"))
                if count is not None:
                    total, seen = total + count, True
                    name = str(subset.get("image_dir") or f"subset{len(repeats)}")
                    if _int(subset.get("num_repeats")) is not None:
                        repeats[name] = _int(subset.get("num_repeats"))
        if seen:
            return total, repeats or None
    return None, None


def _from_kohya(meta: dict[str, str], out: DeclaredTraining) -> None:
    out.unique_images, out.repeats = _kohya_images(meta)
    for field_name, key in _KOHYA_INTS.items():
        setattr(out, field_name, _int(meta.get(key)))
    out.batch_size = _int(meta.get("ss_total_batch_size")) or _int(meta.get("ss_batch_size_per_device"))
    out.learning_rate = _float(meta.get("ss_learning_rate")) or _float(meta.get("ss_unet_lr"))
    out.network_module = meta.get("ss_network_module")
    out.network_dim = _int(meta.get("ss_network_dim"))
    out.network_alpha = _float(meta.get("ss_network_alpha"))
    out.base_model = meta.get("ss_sd_model_name")
    out.base_model_version = meta.get("ss_base_model_version")
    out.extra.update({k: meta[k] for k in _KOHYA_EXTRA if k in meta})


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


def parse_declared(meta: dict[str, str], peft_config: dict[str, Any] | None = None) -> DeclaredTraining | None:
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
    for config in [peft_config or {}, *component_configs(meta).values()]:
        if config:
            _from_peft(config, out)
            sources.append("peft")
    if not sources:
        return None
    out.source = "+".join(dict.fromkeys(sources))
    return out


def alpha_configs(meta: dict[str, str], peft_config: dict[str, Any] | None, source: str) -> dict[str, AlphaConfig]:
    """Alpha settings by component (``*`` = all) from PEFT config, diffusers metadata, our sidecar."""
    if peft_config:
        return {"*": AlphaConfig.from_dict(peft_config, source)}
    configs = {c: AlphaConfig.from_dict(d, source) for c, d in component_configs(meta).items()}
    if configs:
        return configs
    sidecar = _json(meta.get(LORA_WISE_KEY))
    if isinstance(sidecar, dict) and sidecar.get("alpha") is not None:
        return {"*": AlphaConfig.from_dict({"r": sidecar.get("rank"), "lora_alpha": sidecar.get("alpha")}, source)}
    return {}
