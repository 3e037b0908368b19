"""Strict, hostile-input-first reading of one ``.safetensors`` file (and atomic writing).

The header is validated here, byte by byte, with the safetensors format's own rules (offsets
in range, tiling the data region exactly, sizes matching dtype and shape): an untrusted file
cannot make us allocate a huge buffer, read past its end, or see overlapping views. The data
region is then read in one go and every tensor decoded by numpy from its validated slice
(little-endian, as the format fixes): F32 as a zero-copy view, F16/F64/integers by
``astype``, BF16 as the top 16 bits of a float32, F8 through a 256-entry table. This is what
``safetensors.numpy`` would do for the dtypes numpy has, and it covers the ones numpy lacks
(BF16, F8), so reading never imports torch. Every failure is an
:class:`~lora_wise.errors.InvalidLoraFile` with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lora_wise._files import atomic_write_bytes
from lora_wise.errors import InvalidLoraFile, UnsafeFormatError

#: Header cap: real LoRA headers (kohya metadata with tag frequencies included) stay far below.
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: Longest tensor name we accept: real keys stay under 300 characters; this bounds name parsing.
MAX_NAME_CHARS = 4096

#: dtypes we accept, with their item sizes. Anything else is refused rather than guessed.
ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class SafetensorsHeader:
    """The validated header: tensor entries (by name) and the ``__metadata__`` strings."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    header_size: int = 0


@dataclass
class SafetensorsFile:
    """A loaded file: float32 arrays, header metadata and each tensor's stored dtype."""

    path: Path
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]
    dtypes: dict[str, str]


def display_name(path: str | os.PathLike) -> str:
    """A file name fit for a one-line message: bytes that are not UTF-8 (kept by the OS as lone
    surrogates) shown as ``\\xff`` escapes, so that printing the message cannot fail."""
    name = Path(path).name or str(path)
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _bad(path: Path, problem: str) -> InvalidLoraFile:
    return InvalidLoraFile(f"{display_name(path)}: {problem}")


def looks_like_pickle(path: Path) -> bool:
    """True for files whose first bytes are a zip (torch.save) or a pickle protocol opcode.

    A safetensors file can also start with byte 0x80 (a header length of 128 + 256·k), so a
    file whose length-prefixed header plausibly opens with ``{`` is not taken for a pickle.
    """
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n <= os.path.getsize(path) - 8:
            return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def refuse_unsafe(path: Path) -> None:
    """Raise :class:`UnsafeFormatError` for pickle-based files, by name or by magic bytes."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFormatError(
            f"{display_name(path)}: pickle-based format ({path.suffix}) refused; it was not opened. "
            "Ask for a .safetensors file."
        )
    if looks_like_pickle(path):
        raise UnsafeFormatError(
            f"{display_name(path)}: pickle/zip content refused (never deserialised); not a safetensors file"
        )


def _read_header_bytes(path: Path) -> tuple[bytes, int]:
    size = os.path.getsize(path)
    if size < 8:
        raise _bad(path, f"truncated file ({size} bytes): no safetensors header")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES:
            raise _bad(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
        if n > size - 8:
            raise _bad(
                path, f"header length {n} is larger than the file ({size} bytes): truncated or corrupt"
            )
        if n < 2:
            raise _bad(path, f"header length {n} is too small for a JSON object")
        raw = fh.read(n)
    return raw, size - 8 - n


def _parse_json(path: Path, raw: bytes) -> dict:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "header is not a JSON object")
    return obj


def _parse_metadata(path: Path, meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(path, "__metadata__ must map strings to strings")
    return dict(meta)


def _parse_entry(path: Path, name: str, entry: object) -> TensorInfo:
    if len(name) > MAX_NAME_CHARS:
        raise _bad(path, f"tensor name of {len(name)} characters (more than {MAX_NAME_CHARS})")
    if not isinstance(entry, dict):
        raise _bad(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise _bad(path, f"tensor {name!r}: unknown or unsupported dtype {str(dtype)[:20]!r}")

    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if not isinstance(shape, list) or len(shape) > 8 or not all(is_int(d) and d < 2**40 for d in shape):
        raise _bad(path, f"tensor {name!r}: shape must be a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        raise _bad(path, f"tensor {name!r}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise _bad(path, f"tensor {name!r}: data_offsets end before they begin")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise _bad(
            path, f"tensor {name!r}: {dtype}{shape} needs {expected} bytes but offsets span {end - begin}"
        )
    return TensorInfo(dtype, tuple(shape), begin, end)


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """Offsets must tile the data region exactly: in range, no overlap, no gap, no tail."""
    cursor = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.begin < cursor:
            raise _bad(path, f"tensor {name!r}: data_offsets overlap another tensor")
        if info.begin > cursor:
            raise _bad(path, f"tensor {name!r}: gap in the data region before its offsets")
        if info.end > data_len:
            raise _bad(path, f"tensor {name!r}: data_offsets run past the end of the file (truncated?)")
        cursor = info.end
    if cursor != data_len:
        raise _bad(path, f"{data_len - cursor} trailing bytes after the last tensor")


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Validate and return the header of a safetensors file, without reading tensor data."""
    path = Path(path)
    raw, data_len = _read_header_bytes(path)
    obj = _parse_json(path, raw)
    metadata = _parse_metadata(path, obj.pop("__metadata__", None))
    tensors = {name: _parse_entry(path, name, entry) for name, entry in obj.items()}
    _check_layout(path, tensors, data_len)
    return SafetensorsHeader(tensors, metadata, len(raw))


def is_finite(flat: np.ndarray, zeros: np.ndarray) -> bool:
    """Whether a 1-D float array holds no NaN/Inf.

    ``x · 0`` is 0 for every finite x and NaN for NaN/±Inf, so one BLAS dot product against a
    zero vector checks a whole tensor without the boolean mask ``isfinite`` would allocate.
    """
    if not flat.size:
        return True
    with np.errstate(invalid="ignore"):  # inf · 0 is the very NaN we are looking for
        return bool(np.isfinite(flat @ zeros[: flat.size]))


def _f8_table(exponent_bits: int, bias: int, ieee_specials: bool) -> np.ndarray:
    """float32 value of every byte of an 8-bit float (E4M3 "fn": only NaN; E5M2: IEEE inf/NaN)."""
    codes = np.arange(256)
    mantissa_bits = 7 - exponent_bits
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = (codes & ((1 << mantissa_bits) - 1)) / (1 << mantissa_bits)
    values = np.where(exponent == 0, mantissa * 2.0 ** (1 - bias), (1 + mantissa) * 2.0 ** (exponent - bias))
    top = exponent == (1 << exponent_bits) - 1
    if ieee_specials:
        values = np.where(top, np.where(mantissa == 0, np.inf, np.nan), values)
    else:
        values = np.where(top & (mantissa == 1 - 1 / (1 << mantissa_bits)), np.nan, values)
    return (sign * values).astype(np.float32)


_NUMPY_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def decode(dtype: str, buffer: np.ndarray, begin: int, count: int) -> np.ndarray:
    """A 1-D float32 array of ``count`` values of safetensors ``dtype`` starting at byte ``begin``."""
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        halves = np.frombuffer(buffer, "<u2", count, begin)
        return (halves.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        table = _f8_table(4, 7, False) if dtype == "F8_E4M3" else _f8_table(5, 15, True)
        return table[np.frombuffer(buffer, np.uint8, count, begin)]
    array = np.frombuffer(buffer, _NUMPY_DTYPES[dtype], count, begin)
    return array if dtype == "F32" else array.astype(np.float32)


def _load_tensors(path: Path, header: SafetensorsHeader) -> dict[str, np.ndarray]:
    size = max((info.end for info in header.tensors.values()), default=0)
    with open(path, "rb") as fh:  # one read into an uninitialised buffer, bounded by the file's size
        fh.seek(8 + header.header_size)
        buffer = np.fromfile(fh, dtype=np.uint8, count=size)
    if buffer.size != size:
        raise _bad(path, "the file got shorter while it was read")
    return {
        name: decode(info.dtype, buffer, info.begin, math.prod(info.shape)).reshape(info.shape)
        for name, info in header.tensors.items()
    }


def first_non_finite(tensors: dict[str, np.ndarray]) -> str | None:
    """Name of the first tensor holding NaN or Inf, else None.

    One pass after loading (measured faster than checking each tensor as it arrives).
    """
    zeros = np.zeros(max((a.size for a in tensors.values()), default=0), dtype=np.float32)
    for name, array in tensors.items():
        if not is_finite(array.reshape(-1), zeros):
            return name
    return None


def read_safetensors(path: str | os.PathLike) -> SafetensorsFile:
    """Read every tensor of a safetensors file as float32, after validating its header.

    Raises :class:`InvalidLoraFile` for any malformed or hostile file and for NaN/Inf values.
    """
    path = Path(path)
    header = read_header(path)
    tensors = _load_tensors(path, header)
    name = first_non_finite(tensors)
    if name is not None:
        raise _bad(path, f"tensor {name!r} contains NaN or Inf values")
    dtypes = {name: info.dtype for name, info in header.tensors.items()}
    return SafetensorsFile(path, tensors, header.metadata, dtypes)


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write numpy or torch tensors atomically: to a temporary name, then renamed into place.

    ``safetensors``' own ``save_file`` creates files with mode 0600; serialising to bytes and
    writing them ourselves gives the umask's usual 0644, which a shared bank folder needs.
    A kill mid-write leaves the previous file (if any) intact.
    """
    if all(isinstance(t, np.ndarray) for t in tensors.values()):
        from safetensors.numpy import save
    else:
        from safetensors.torch import save
    return atomic_write_bytes(path, save(tensors, metadata=metadata))
