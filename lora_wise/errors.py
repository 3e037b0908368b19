"""Typed errors, one per failure kind, each with a message that says what to do.

Modelled on huggingface_hub's ``errors.py``: callers (the CLIs, the crawl) catch these
types and map them to exit codes or report rows; anything else is a bug.
"""

from __future__ import annotations

#: The exit-code contract of both command-line tools (modelscan's): 0 clean, 1 findings (an unsafe
#: pickle, a declared-vs-weights conflict), 2 error in the input or the network, 3 no LoRA weights,
#: 4 usage error. Every error below carries the code it ends a command with.
EXIT_OK, EXIT_FINDINGS, EXIT_INPUT, EXIT_NO_LORA, EXIT_USAGE = 0, 1, 2, 3, 4


class LoraWiseError(Exception):
    """Base of every error lora-wise raises on purpose."""

    exit_code = EXIT_INPUT


class InvalidLoraFile(LoraWiseError, ValueError):
    """The input file is malformed, hostile, truncated or of an unsafe format.

    The only error the reader lets out for bad bytes; the message is one line.
    """

    exit_code = EXIT_INPUT


class UnsafeFormatError(InvalidLoraFile):
    """A pickle-based file (.bin/.ckpt/.pt/.pth): refused, never deserialised. A finding, not a fault."""

    exit_code = EXIT_FINDINGS


class NoLoraWeightsError(LoraWiseError):
    """The file is a valid container but holds no LoRA layer we can read."""

    exit_code = EXIT_NO_LORA


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


class EmojiSourceError(LoraWiseError):
    """An emoji source cannot be fetched, fails its checksum, or is not cached and npm is unavailable."""


def one_line(exc: BaseException) -> str:
    """An error as one line (messages may hold newlines from servers or files): what every
    outcome row, log line and CLI error shows."""
    return " ".join(str(exc).split()) or type(exc).__name__


class DocNotFound(LoraWiseError, LookupError):
    """``docs NAME`` with a name that is not in the list: a usage error."""

    exit_code = EXIT_USAGE


class LeakError(LoraWiseError, ValueError):
    """A leak run folder, attack file or target LoRA the reconstruction attack cannot use (one line)."""
