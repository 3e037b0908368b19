"""Typed errors, one per failure kind, each with a message that says what to do.

Modelled on huggingface_hub's ``errors.py``: callers (the CLIs, the crawl) catch these
types and map them to exit codes or report rows; anything else is a bug.
"""

from __future__ import annotations


class LoraWiseError(Exception):
    """Base of every error lora-wise raises on purpose."""

    exit_code = 2


class InvalidLoraFile(LoraWiseError, ValueError):
    """The input file is malformed, hostile, truncated or of an unsafe format.

    The only error the reader lets out for bad bytes; the message is one line.
    """

    exit_code = 2


class UnsafeFormatError(InvalidLoraFile):
    """A pickle-based file (.bin/.ckpt/.pt/.pth): refused, never deserialised."""


class NoLoraWeightsError(LoraWiseError):
    """The file is a valid container but holds no LoRA layer we can read."""

    exit_code = 3


class BankError(LoraWiseError):
    """A reference bank is missing, malformed, or does not fit the target."""
