"""lora-wise: recover how many images a LoRA was fine-tuned on, from its weights."""

from .benchmark import load_benchmark
from .errors import InvalidLoraFile, LoraWiseError, NoLoraWeightsError, UnsafeFormatError
from .reader import read_lora
from .spectra import Spectra, compute_spectra
from .weights import Backbone, DeclaredTraining, LoraLayer, LoraWeights

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "DeclaredTraining",
    "InvalidLoraFile",
    "LoraLayer",
    "LoraWeights",
    "LoraWiseError",
    "NoLoraWeightsError",
    "Spectra",
    "UnsafeFormatError",
    "compute_spectra",
    "load_benchmark",
    "read_lora",
]
