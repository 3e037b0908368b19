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


class ExecutorError(LoraWiseError):
    """The executor cannot run at all (bad option, Ray missing or unreachable)."""


class MicroDatasetError(LoraWiseError):
    """A micro-dataset spec is malformed, points nowhere, or has too few images."""


class BackboneError(LoraWiseError):
    """A backbone name or folder cannot be loaded as a Stable-Diffusion-style pipeline."""


class GridError(LoraWiseError):
    """The grid spec is malformed or names something that does not exist."""


class FactoryError(LoraWiseError):
    """The factory cannot plan or start (bad output folder, trainer not importable, ...)."""


class HubError(LoraWiseError):
    """The Hub (or its stand-in) refused or could not be reached; the message says what to do."""


class DatasetBuildError(LoraWiseError):
    """The factory folder or the dataset folder is not usable as asked."""


def one_line(exc: BaseException) -> str:
    """An error as one line (messages may hold newlines from servers or files): what every
    outcome row, log line and CLI error shows."""
    return " ".join(str(exc).split()) or type(exc).__name__


class LeakError(LoraWiseError, ValueError):
    """A leak run folder, attack file or target LoRA the reconstruction attack cannot use (one line)."""
