"""``read_lora(path) -> LoraWeights``: one entry point for every LoRA file people publish.

A path is a ``.safetensors`` file or a folder (a PEFT adapter: ``adapter_model.safetensors``
plus an optional ``adapter_config.json``, or a folder holding one ``.safetensors`` file).
Pickle-based files are refused by name and by magic bytes without being opened as pickle.
Every failure is an :class:`InvalidLoraFile` (exit 2) or :class:`NoLoraWeightsError` (exit 3)
whose one-line message names the file and the problem.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from lora_wise.errors import InvalidLoraFile, NoLoraWeightsError, UnsafeFormatError
from lora_wise.lora.checks import declared_conflicts, non_image_warning
from lora_wise.lora.fingerprint import fingerprint
from lora_wise.lora.formats import ScalePolicy, parse_state_dict
from lora_wise.lora.metadata import alpha_configs, parse_declared
from lora_wise.lora.safetensors_io import PICKLE_SUFFIXES, display_name, read_safetensors, refuse_unsafe
from lora_wise.lora.weights import LoraWeights

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20
#: Preferred file names in a folder holding several safetensors files (diffusers, then kohya habits).
PREFERRED = (PEFT_WEIGHTS, "pytorch_lora_weights.safetensors")


def _pick_in_folder(folder: Path) -> Path:
    """The one LoRA file of a folder; ambiguity and pickle-only folders are errors, not guesses."""
    for name in PREFERRED:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        shown = ", ".join(display_name(p) for p in candidates[:3])
        raise InvalidLoraFile(
            f"{display_name(folder)}/: {len(candidates)} .safetensors files ({shown}...); pass one file"
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFormatError(
            f"{display_name(folder)}/: only pickle-based weights ({display_name(pickles[0])}); "
            "refused, not opened"
        )
    raise NoLoraWeightsError(f"{display_name(folder)}/: no .safetensors file in this folder")


def _peft_config(folder: Path) -> dict[str, Any] | None:
    path = folder / PEFT_CONFIG
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidLoraFile(f"{PEFT_CONFIG}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidLoraFile(f"{PEFT_CONFIG}: not valid JSON") from None
    if not isinstance(config, dict):
        raise InvalidLoraFile(f"{PEFT_CONFIG}: not a JSON object")
    return config


def _dominant_dtype(dtypes: dict[str, str], used: set[str]) -> str:
    counts = Counter(
        dtype for key, dtype in dtypes.items() if key in used and dtype in ("F32", "F16", "BF16", "F64")
    )
    return counts.most_common(1)[0][0] if counts else "F32"


def read_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA from a ``.safetensors`` file or a PEFT adapter folder into canonical form."""
    try:
        return _read(Path(path))
    except OSError as exc:  # unreadable file, vanished mid-read, I/O error: still a one-line input error
        raise InvalidLoraFile(
            f"{display_name(path)}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None


def _read(path: Path) -> LoraWeights:
    if not path.exists():
        raise InvalidLoraFile(
            f"{os.fsencode(path).decode('utf-8', 'backslashreplace')}: no such file or folder"
        )
    peft_config = None
    if path.is_dir():
        peft_config = _peft_config(path)
        path = _pick_in_folder(path)
    elif not path.is_file():
        raise InvalidLoraFile(f"{display_name(path)}: not a regular file")
    refuse_unsafe(path)
    loaded = read_safetensors(path)
    policy = ScalePolicy(alpha_configs(loaded.metadata, peft_config, display_name(path)))
    parsed = parse_state_dict(loaded.tensors, display_name(path), policy)
    declared = parse_declared(loaded.metadata, peft_config)
    weights = LoraWeights(
        layers=parsed.layers,
        format=parsed.format,
        backbone=fingerprint(parsed.layers, loaded.metadata, loaded.tensors.keys()),
        declared=declared,
        dtype=_dominant_dtype(loaded.dtypes, set(loaded.tensors)),
        header_metadata=loaded.metadata,
        source=str(path),
        warnings=parsed.warnings + (declared.warnings if declared else []),
    )
    weights.conflicts = declared_conflicts(weights)
    if what := non_image_warning(weights):
        weights.warnings.append(what)
    return weights
