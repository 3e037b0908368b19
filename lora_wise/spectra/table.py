"""A stack of many models' spectra with their labels: what estimators fit and evaluate on.

The table owns its columns: every operation on whole rows (subset, concat, align, astype,
stacking spectra) walks the dataclass fields, so a column is added in one place. A field's
``role`` says what it is: ``spectra`` (per model and layer, NaN where a model lacks the layer)
or ``label`` (one value per model, with the dtype and the default of a stacked row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from lora_wise.errors import LoraWiseError
from lora_wise.spectra.compute import Spectra


def _spectra() -> Any:
    return field(metadata={"role": "spectra"})


def _label(dtype: type, default: Any) -> Any:
    return field(metadata={"role": "label", "dtype": dtype, "default": default})


@dataclass
class SpectraTable:
    """N model snapshots × L layers (in the order of ``layers``) × ``width`` singular values."""

    layers: list[str]
    a: np.ndarray = _spectra()  # (N, L, W) σ(A)
    b: np.ndarray = _spectra()  # (N, L, W) σ(B)
    ba: np.ndarray = _spectra()  # (N, L, W) σ(scale·B·A)
    fro: np.ndarray = _spectra()  # (N, L) ‖scale·B·A‖_F
    size: np.ndarray = _label(np.int64, 0)  # the true fine-tuning dataset size
    micro_dataset: np.ndarray = _label(str, "")  # the concept, the unit of train/test splits
    step: np.ndarray = _label(np.int64, 0)  # training step of the snapshot
    rank: np.ndarray = _label(np.int64, 0)  # 0 when unknown
    backbone: np.ndarray = _label(str, "unknown")
    model_id: np.ndarray = _label(str, "")

    def __len__(self) -> int:
        return int(self.size.shape[0])

    @property
    def width(self) -> int:
        return int(self.ba.shape[2])

    def matrix(self, kind: str) -> np.ndarray:
        """(N, L, W) for a/b/ba, (N, L, 1) for fro."""
        if kind not in KINDS:
            raise ValueError(f"unknown matrix kind {kind!r}; choose from {KINDS}")
        return self.fro[:, :, None] if kind == "fro" else getattr(self, kind)

    def subset(self, mask: np.ndarray) -> SpectraTable:
        """The rows selected by a boolean mask or an index array."""
        mask = np.asarray(mask)
        return replace(self, **{name: getattr(self, name)[mask] for name in COLUMNS})

    def astype(self, dtype: Any) -> SpectraTable:
        """The same table with its spectra cast to ``dtype`` (labels untouched)."""
        return replace(self, **{k: getattr(self, k).astype(dtype) for k in KINDS})

    def align(self, layers: Sequence[str]) -> SpectraTable:
        """The spectra re-ordered to ``layers``; layers the table lacks become NaN columns."""
        layers = list(layers)
        if layers == self.layers:
            return self
        index = {name: i for i, name in enumerate(self.layers)}
        cols = np.array([index.get(name, -1) for name in layers], dtype=np.int64)

        def take(arr: np.ndarray) -> np.ndarray:
            out = np.full(arr.shape[:1] + (len(layers),) + arr.shape[2:], np.nan)
            out[:, cols >= 0] = arr[:, cols[cols >= 0]]
            return out

        return replace(self, layers=layers, **{k: take(getattr(self, k)) for k in KINDS})

    def widen(self, width: int) -> SpectraTable:
        """The same table padded to ``width`` singular values per layer, so that tables of several
        ranks can be pooled: zeros, as ``Spectra.align`` pads (a rank-r LoRA has no further
        singular values), except in a missing layer's NaN row, which stays NaN throughout."""
        if width < self.width:
            raise ValueError(f"cannot widen a table of width {self.width} to {width}")
        if width == self.width:
            return self

        def pad(arr: np.ndarray) -> np.ndarray:
            fill = np.where(np.isnan(arr[..., :1]), np.nan, 0.0)
            return np.concatenate([arr, np.broadcast_to(fill, arr.shape[:2] + (width - self.width,))], axis=2)

        return replace(self, **{k: pad(getattr(self, k)) for k in ("a", "b", "ba")})

    @classmethod
    def concat(cls, tables: Sequence[SpectraTable]) -> SpectraTable:
        """Stack tables of the same layers and width (configs of one backbone and rank)."""
        first = tables[0]
        for t in tables[1:]:
            if t.layers != first.layers or t.width != first.width:
                raise LoraWiseError("tables to pool must share layers and width (rank)")
        return replace(
            first, **{name: np.concatenate([getattr(t, name) for t in tables]) for name in COLUMNS}
        )

    @classmethod
    def from_columns(cls, layers: Sequence[str], columns: dict[str, Any]) -> SpectraTable:
        """A table from one array-like per column: spectra reshaped to (N, L, W) and (N, L) in
        float64, labels cast to their dtype; a label absent from ``columns`` takes its default."""
        layers = list(layers)
        n = len(columns["fro"])
        shapes = {k: (n, len(layers)) if k == "fro" else (n, len(layers), -1) for k in KINDS}
        table = {k: np.asarray(columns[k], dtype=np.float64).reshape(shape) for k, shape in shapes.items()}
        for f in fields(cls):
            if f.metadata.get("role") == "label":
                dtype, given = f.metadata["dtype"], columns.get(f.name)
                table[f.name] = np.full(n, f.metadata["default"], dtype=dtype) if given is None else (
                    np.asarray(given).astype(dtype))  # fmt: skip
        return cls(layers, **table)

    @classmethod
    def from_spectra(
        cls,
        items: Sequence[tuple[Spectra, dict[str, Any]]],
        layers: Sequence[str] | None = None,
        width: int | None = None,
    ) -> SpectraTable:
        """Stack spectra aligned to ``layers`` (default: the first's) and ``width`` (default: the
        widest); each dict holds the labels (``size``, ``micro_dataset``, ...), defaults elsewhere."""
        if not items:
            raise ValueError("no spectra given")
        layers = list(layers or items[0][0].layers)
        width = width or max(s.width for s, _ in items)
        aligned = [s.align(layers, width) for s, _ in items]
        stacked = {k: np.stack([getattr(s, k) for s in aligned]) for k in KINDS}
        labels = {
            f.name: np.array(
                [m.get(f.name, f.metadata["default"]) for _, m in items], dtype=f.metadata["dtype"]
            )
            for f in fields(cls)
            if f.metadata.get("role") == "label"
        }
        return cls(layers, **stacked, **labels)


def _names(role: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(SpectraTable) if f.metadata.get("role") == role)


#: The matrix kinds a voter can use: the table's spectra columns, in field order.
KINDS: tuple[str, ...] = _names("spectra")
#: The per-model label columns.
LABELS: tuple[str, ...] = _names("label")
#: Every per-row column (all fields but ``layers``).
COLUMNS: tuple[str, ...] = KINDS + LABELS
