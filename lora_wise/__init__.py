"""lora-wise: recover how many images a LoRA was fine-tuned on, from its weights.

The public names below load lazily (as huggingface_hub's do), so ``import lora_wise`` stays cheap:
reading a file never pays for scikit-learn, torch or datasets unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that owns it
_EXPORTS: dict[str, str] = {
    "read_lora": "lora_wise.lora.reader",
    "LoraWeights": "lora_wise.lora.weights",
    "LoraLayer": "lora_wise.lora.weights",
    "Backbone": "lora_wise.lora.weights",
    "DeclaredTraining": "lora_wise.lora.weights",
    "compute_spectra": "lora_wise.spectra.compute",
    "Spectra": "lora_wise.spectra.compute",
    "SpectraTable": "lora_wise.spectra.table",
    "load_benchmark": "lora_wise.dataset.load",
    "DSiRe": "lora_wise.estimation.estimators",
    "Bank": "lora_wise.estimation.bank",
    "Estimate": "lora_wise.estimation.bank",
    "estimate": "lora_wise.estimation.bank",
    "LoraWiseError": "lora_wise.errors",
    "InvalidLoraFile": "lora_wise.errors",
    "NoLoraWeightsError": "lora_wise.errors",
    "UnsafeFormatError": "lora_wise.errors",
}

__all__ = [
    "Backbone",
    "Bank",
    "DSiRe",
    "DeclaredTraining",
    "Estimate",
    "InvalidLoraFile",
    "LoraLayer",
    "LoraWeights",
    "LoraWiseError",
    "NoLoraWeightsError",
    "Spectra",
    "SpectraTable",
    "UnsafeFormatError",
    "compute_spectra",
    "estimate",
    "load_benchmark",
    "read_lora",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_wise' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from lora_wise.dataset.load import load_benchmark
    from lora_wise.errors import InvalidLoraFile, LoraWiseError, NoLoraWeightsError, UnsafeFormatError
    from lora_wise.estimation.bank import Bank, Estimate, estimate
    from lora_wise.estimation.estimators import DSiRe
    from lora_wise.lora.reader import read_lora
    from lora_wise.lora.weights import Backbone, DeclaredTraining, LoraLayer, LoraWeights
    from lora_wise.spectra.compute import Spectra, compute_spectra
    from lora_wise.spectra.table import SpectraTable
