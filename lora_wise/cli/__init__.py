"""The ``lora-wise`` command: thin click layers over the library, one module per command group."""

from lora_wise.cli.app import main

__all__ = ["main"]
