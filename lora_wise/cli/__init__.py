"""The ``lora-wise`` command: thin click layers over the library, one module per command group.

The entry point is ``lora_wise.cli.app:main`` (``lora_wise.cli.main`` still resolves, for
installs made before it moved). Nothing is imported eagerly, so that ``lora-scan``, which shares
``lora_wise.cli.tools``, does not pay for registering every ``lora-wise`` command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from lora_wise.cli.app import main

        return main
    raise AttributeError(f"module 'lora_wise.cli' has no attribute {name!r}")
