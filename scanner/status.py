"""The outcome of scanning one target, and the two mappings every caller shares.

``Status`` is the one vocabulary of outcomes: a ``ScanReport``, a crawl state row and a crawl
report all carry these values. It subclasses ``str`` (Python 3.10 has no ``StrEnum``) so that
the values stay today's strings: old crawl states and reports read back unchanged, JSON and
SQLite see plain text.

- :func:`status_of` is the only place where an exception becomes an outcome;
- :func:`exit_code` is the only place where an outcome becomes a ``lora-scan`` exit code
  (the modelscan-style contract: 0 clean, 1 findings, 2 error, 3 no LoRA weights, 4 usage).
"""

from __future__ import annotations

from enum import Enum

from lora_wise.errors import (
    EXIT_FINDINGS,
    EXIT_INPUT,
    EXIT_NO_LORA,
    EXIT_OK,
    NoLoraWeightsError,
    UnsafeFormatError,
)

from .errors import TooLarge


class Status(str, Enum):
    OK = "ok"  # read and reported (an estimate may still be absent, with its reason)
    UNSAFE = "unsafe"  # a pickle-based file: refused, never loaded, a finding
    ERROR = "error"  # malformed, hostile or unreachable input
    NO_LORA = "no-lora"  # a valid container that holds no LoRA weights
    SKIPPED = "skipped"  # over --max-size: not downloaded
    FAILED = "failed"  # crawl only: transient faults outlasted every attempt
    PENDING = "pending"  # crawl only: not tried yet (or to be tried again)
    RUNNING = "running"  # crawl only: claimed by a worker
    RETRY = "retry"  # crawl only, never stored: a transient fault, try again later

    def __str__(self) -> str:  # f-strings and str() give the value on every Python version
        return self.value

    # Enum hashes a member by its name; hashing as the value makes ``Status.OK`` and the "ok" read
    # back from a crawl state the same dict key, as they are equal.
    __hash__ = str.__hash__


#: Statuses a crawl target ends in (stored in the state); the rest are in flight.
FINAL = (Status.OK, Status.ERROR, Status.UNSAFE, Status.NO_LORA, Status.SKIPPED, Status.FAILED)

_EXIT = {Status.OK: EXIT_OK, Status.UNSAFE: EXIT_FINDINGS, Status.NO_LORA: EXIT_NO_LORA}


def status_of(exc: BaseException) -> Status:
    """The outcome an error stands for. Anything not named here is an ``error``; whether an error
    is worth retrying is the crawl's question, not this one."""
    if isinstance(exc, TooLarge):
        return Status.SKIPPED
    if isinstance(exc, UnsafeFormatError):
        return Status.UNSAFE
    if isinstance(exc, NoLoraWeightsError):
        return Status.NO_LORA
    return Status.ERROR


def exit_code(status: str, *, findings: bool = False) -> int:
    """The ``lora-scan`` exit code of one outcome; ``findings`` (a conflict the reader reports in
    an otherwise clean file) turns a clean 0 into 1."""
    code = _EXIT.get(status, EXIT_INPUT)  # anything else (error, skipped, failed, unknown) is an error
    return EXIT_FINDINGS if code == EXIT_OK and findings else code
