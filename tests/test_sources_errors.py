"""The fetching layer's errors keep the CLI exit-code contract and the reader's error families."""

import pytest

from lora_wise.errors import LoraWiseError, NoLoraWeightsError, UnsafeFormatError
from scanner import errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.TargetError, 4),
        (errors.FetchError, 2),
        (errors.NotFound, 2),
        (errors.AuthRequired, 2),
        (errors.RateLimited, 2),
        (errors.TooLarge, 2),
        (errors.HashMismatch, 2),
        (errors.TruncatedDownload, 2),
        (errors.UnsafeFormat, 1),  # a finding, as in modelscan
        (errors.NoLoraFiles, 3),
    ],
)
def test_exit_codes(cls, code):
    assert issubclass(cls, LoraWiseError) and cls("x").exit_code == code


def test_families_shared_with_the_reader():
    # scan() treats "unsafe" and "no LoRA" alike whether the fetcher or the reader found out.
    assert issubclass(errors.UnsafeFormat, UnsafeFormatError) and issubclass(
        errors.UnsafeFormat, errors.FetchError
    )
    assert issubclass(errors.NoLoraFiles, NoLoraWeightsError) and issubclass(
        errors.NoLoraFiles, errors.FetchError
    )
    assert errors.RateLimited("slow down", retry_after=30).retry_after == 30
