"""Typed errors of the fetching layer: one per failure kind, each saying what to do.

They subclass ``lora_wise.errors.LoraWiseError`` so the CLIs map them to exit codes the same way
as the reader's errors: a bad target is a usage error (4), a failed fetch an input error (2), a
source that holds no LoRA file "no supported files" (3), only pickle files a finding (1), as in
modelscan's contract.
"""

from __future__ import annotations

from lora_wise.errors import LoraWiseError, NoLoraWeightsError, UnsafeFormatError


class TargetError(LoraWiseError, ValueError):
    """The target string is none of the forms ``lora-scan`` understands."""

    exit_code = 4


class FetchError(LoraWiseError):
    """A source could not deliver a file to scan."""

    exit_code = 2


class NotFound(FetchError):
    """The repo, model, version or file does not exist (or is not in the offline cache)."""


class AuthRequired(FetchError):
    """The source wants credentials (private, gated or early-access)."""


class RateLimited(FetchError):
    """The source kept answering 429 after the bounded retries."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidHeader(FetchError):
    """The bytes do not start with a valid safetensors header: a fault of the file, not of the network."""


class TooLarge(FetchError):
    """The file is over ``--max-size`` (by its declared size, its Content-Length, or its stream)."""


class HashMismatch(FetchError):
    """The downloaded bytes do not match the hash the source publishes."""


class TruncatedDownload(FetchError):
    """The connection ended before the announced number of bytes arrived."""


class UnsafeFormat(FetchError, UnsafeFormatError):
    """Only pickle files (.bin/.ckpt/.pt/.pth, CivitAI ``PickleTensor``): never downloaded for parsing."""

    exit_code = UnsafeFormatError.exit_code  # a finding (1), as when the reader refuses one


class NoLoraFiles(FetchError, NoLoraWeightsError):
    """The source holds no file that could be LoRA weights (e.g. only full checkpoints)."""

    exit_code = 3


class StateError(LoraWiseError):
    """The state file is not a crawl state, or another crawl holds it."""

    exit_code = 2


class UnsafePath(FetchError, ValueError):
    """A name from outside (revision, file name, Content-Disposition, repo id, target) would leave its folder,
    or holds a NUL byte, or is longer than a file system allows: refused before anything is written."""


class BadAnswer(FetchError):
    """A server's JSON does not have the fields we use with the types we need: a fault of the answer."""


class RedirectLoop(FetchError):
    """The server redirected too many times (a loop, or a chain longer than any real CDN uses)."""


class TransferTimeout(FetchError):
    """A transfer stalled (no byte for the stall timeout) or ran past its overall deadline."""


class Refused(FetchError):
    """The server refused the request for good (an HTTP 4xx other than 401/403/404/408/429)."""


class TargetLimit(FetchError):
    """A crawl target ran past its time limit or its memory limit; its worker process was stopped."""
