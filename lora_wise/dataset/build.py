"""LoRA-WiSE as a Hugging Face dataset folder: schema, splits, streaming shard writer, build.

Layout of a dataset folder (what ``datasets.load_dataset(folder, config)`` and the Hub read)::

    README.md                      the dataset card (YAML ``configs:`` with data_files per split)
    lora_wise.json                 the manifest: per config its layer names (once), width, counts
    data/<config>/train-00000.parquet, test-00000.parquet           spectra, one row per snapshot
    data/<config>-weights/train-00000.parquet, ...                  the safetensors bytes (optional)

Rows hold spectra in a FIXED layer order: the natural sort of canonical layer names (the order
of :class:`~lora_wise.spectra.compute.Spectra`), listed once in the manifest and the card. Layers a
model lacks are NaN rows. Everything is written one model at a time: a build never holds more
than one LoRA and one small buffer of rows.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lora_wise._files import atomic_write_text
from lora_wise.errors import DatasetBuildError, InvalidLoraFile
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.snapshots import Sidecar, folder_done, iter_snapshots, lora_path
from lora_wise.lora.reader import read_lora
from lora_wise.paper import PAPER_SEED, PAPER_TOTAL, PAPER_TRAIN, SCHEDULES
from lora_wise.spectra.compute import Spectra, compute_spectra, natural_key
from lora_wise.spectra.table import KINDS

if TYPE_CHECKING:
    from datasets import Features

MANIFEST = "lora_wise.json"
MANIFEST_VERSION = 1
#: ``progress(config, done, total)``: called by :func:`build_dataset` after each snapshot.
Progress = Callable[[str, int, int], None]
#: The paper's split: 15 of 50 micro-datasets train, 35 test, ``random.seed(42)``.
SPLITS = ("train", "test")
PRECISIONS = ("float32", "float64")
#: Shards are cut near this size so the Hub and ``datasets`` can fetch them in parallel.
MAX_SHARD_BYTES = 500 * 1024 * 1024
#: Rows are flushed to a parquet row group past either bound: small groups keep memory flat.
FLUSH_ROWS, FLUSH_BYTES = 256, 16 * 1024 * 1024


# --------------------------------------------------------------------------- schema


def spectra_features(n_layers: int, width: int, precision: str = "float32") -> Features:
    """The declared ``datasets.Features`` of a spectra config (fixed shapes: (L, W) and (L,))."""
    from datasets import Array2D, Features, Sequence, Value

    _check_precision(precision)
    return Features(
        {
            "model_id": Value("string"),
            "micro_dataset": Value("string"),
            "dataset_size": Value("int32"),
            "backbone": Value("string"),
            "rank": Value("int32"),
            "alpha": Value("float32"),
            "step": Value("int32"),
            "image_ids": Sequence(Value("string")),
            "recipe": Value("string"),
            "a": Array2D((n_layers, width), precision),
            "b": Array2D((n_layers, width), precision),
            "ba": Array2D((n_layers, width), precision),
            "fro": Sequence(Value(precision), length=n_layers),
        }
    )


def weights_features() -> Features:
    """The ``-weights`` config: the snapshot's safetensors file, byte for byte."""
    from datasets import Features, Value

    return Features(
        {
            "model_id": Value("string"),
            "micro_dataset": Value("string"),
            "dataset_size": Value("int32"),
            "step": Value("int32"),
            "safetensors": Value("binary"),
        }
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise DatasetBuildError(f"precision must be one of {PRECISIONS}, not {precision!r}")


def spectra_row(
    spectra: Spectra, layers: list[str], width: int, meta: dict[str, Any], precision: str
) -> dict:
    """One dataset row: ``meta`` (model_id, micro_dataset, ...) plus spectra aligned to ``layers``."""
    aligned = spectra.align(layers, width)
    dtype = np.dtype(precision)
    row = {
        "model_id": str(meta["model_id"]),
        "micro_dataset": str(meta["micro_dataset"]),
        "dataset_size": int(meta["dataset_size"]),
        "backbone": str(meta["backbone"]),
        "rank": int(meta["rank"]),
        "alpha": float(meta["alpha"]),
        "step": int(meta["step"]),
        "image_ids": [str(i) for i in meta.get("image_ids") or []],
        "recipe": meta["recipe"]
        if isinstance(meta["recipe"], str)
        else json.dumps(meta["recipe"], sort_keys=True),
    }
    return row | {kind: getattr(aligned, kind).astype(dtype) for kind in KINDS}


# --------------------------------------------------------------------------- splits


def split_micro_datasets(names: Iterable[str], seed: int = PAPER_SEED) -> dict[str, str]:
    """Micro-dataset -> ``train``/``test``: the paper's 15 of 50 with ``random.seed(42)``, scaled.

    From 50 names on this is exactly ``random.seed(42); random.sample(sorted(names), 15)`` (the
    rest is test, as in ``lora_wise.evaluation``'s first repeat). With fewer, the train share
    stays 15/50 (at least one train and, from two names on, one test).
    """
    pool = sorted(set(names))
    if not pool:
        return {}
    n_train = PAPER_TRAIN if len(pool) >= PAPER_TOTAL else round(len(pool) * PAPER_TRAIN / PAPER_TOTAL)
    n_train = max(1, min(n_train, len(pool) - 1)) if len(pool) > 1 else 1
    train = set(random.Random(seed).sample(pool, n_train))
    return {name: ("train" if name in train else "test") for name in pool}


# --------------------------------------------------------------------------- writer


@dataclass
class _Shards:
    """Parquet shards of one (config, split), rotated near ``max_bytes``; temp names until closed."""

    folder: Path
    split: str
    features: Any
    max_bytes: int
    paths: list[Path] = field(default_factory=list)
    rows: int = 0
    _writer: Any = None
    _written: int = 0
    _buffer: list[dict] = field(default_factory=list)
    _buffer_bytes: int = 0

    def add(self, row: dict, nbytes: int) -> None:
        self._buffer.append(row)
        self._buffer_bytes += nbytes
        self.rows += 1
        if len(self._buffer) >= FLUSH_ROWS or self._buffer_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from datasets import Dataset

        if not self._buffer:
            return
        columns = {key: [row[key] for row in self._buffer] for key in self._buffer[0]}
        schema = self.features.arrow_schema
        if any(isinstance(t, pa.ExtensionType) for t in schema.types):
            table = Dataset.from_dict(columns, features=self.features).data.table  # Array2D needs datasets
        else:
            table = pa.Table.from_pydict(columns, schema=schema)  # plain types: no extra copies
        if self._writer is None or self._written >= self.max_bytes:
            self._close_writer()
            path = self.folder / f"{self.split}-{len(self.paths):05d}.parquet.tmp"
            # Dictionary-encode strings only: hashing multi-MB safetensors blobs costs memory for nothing.
            # and store blobs uncompressed (float weights barely compress; snappy would buffer a copy).
            strings = [f.name for f in schema if pa.types.is_string(f.type)]
            codecs = {f.name: "none" if pa.types.is_binary(f.type) else "snappy" for f in schema}
            small = [f.name for f in schema if not pa.types.is_binary(f.type)]  # no min/max copies of blobs
            self._writer = pq.ParquetWriter(path, table.schema, use_dictionary=strings, compression=codecs,
                                            write_statistics=small)  # fmt: skip
            self.paths.append(path)
            self._written = 0
        self._writer.write_table(table)
        self._written += self._buffer_bytes
        self._buffer, self._buffer_bytes = [], 0
        del table, columns
        pa.default_memory_pool().release_unused()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Flush, close and rename every shard to its final ``.parquet`` name."""
        self.flush()
        self._close_writer()
        final = []
        for path in self.paths:
            target = path.with_suffix("")  # drop ".tmp"
            os.replace(path, target)
            final.append(target)
        return final


class ConfigWriter:
    """Streams the rows of one config (and optionally its ``-weights`` config) into a dataset folder.

    ``add(split, row, weights_bytes)`` writes one snapshot; ``close()`` returns the manifest entries.
    Old shards of the config are removed first, so a rebuild never mixes with a previous one.
    """

    def __init__(self, out_dir: Path, config: str, layers: list[str], width: int, *,
                 precision: str = "float32", with_weights: bool = False, info: dict[str, Any] | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> None:  # fmt: skip
        _check_precision(precision)
        self.out_dir, self.config, self.layers, self.width = Path(out_dir), config, list(layers), width
        self.precision, self.info = precision, dict(info or {})
        features = spectra_features(len(layers), width, precision)
        self._spectra = {s: _Shards(self._fresh(config), s, features, max_shard_bytes) for s in SPLITS}
        self._weights = None
        folder = self._fresh(f"{config}-weights")  # a rebuild without weights must not keep old ones
        if with_weights:
            self._weights = {s: _Shards(folder, s, weights_features(), max_shard_bytes) for s in SPLITS}
        else:
            folder.rmdir()
        self._stats = {
            s: {"models": set(), "micro_datasets": set(), "steps": set(), "sizes": set()} for s in SPLITS
        }

    def _fresh(self, config: str) -> Path:
        folder = self.out_dir / "data" / config
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def add(self, split: str, row: dict, weights_bytes: bytes | None = None) -> None:
        nbytes = sum(row[k].nbytes for k in KINDS)
        self._spectra[split].add(row, nbytes)
        if self._weights is not None:
            if weights_bytes is None:
                raise DatasetBuildError(
                    f"{row['model_id']} step {row['step']}: no weights bytes for the -weights config"
                )
            keys = ("model_id", "micro_dataset", "dataset_size", "step")
            self._weights[split].add(
                {**{k: row[k] for k in keys}, "safetensors": weights_bytes}, len(weights_bytes)
            )
        stats = self._stats[split]
        stats["models"].add(row["model_id"])
        stats["micro_datasets"].add(row["micro_dataset"])
        stats["steps"].add(row["step"])
        stats["sizes"].add(row["dataset_size"])

    def close(self) -> dict[str, dict | None]:
        """Finish the shards; the manifest entries of the config and of its -weights config (None: gone)."""
        splits = {}
        for split, shards in self._spectra.items():
            files = shards.close()
            if shards.rows:
                splits[split] = self._split_entry(split, shards.rows, files)
        entry = {
            "kind": "spectra",
            **self.info,
            "layers": self.layers,
            "width": self.width,
            "precision": self.precision,
            "splits": splits,
            "steps": sorted({s for st in self._stats.values() for s in st["steps"]}),
            "dataset_sizes": sorted({s for st in self._stats.values() for s in st["sizes"]}),
            "weights_config": None,
        }
        entries: dict[str, dict | None] = {self.config: entry, f"{self.config}-weights": None}
        if self._weights is not None:
            name = f"{self.config}-weights"
            entry["weights_config"] = name
            wsplits = {}
            for split, shards in self._weights.items():
                files = shards.close()
                if shards.rows:
                    wsplits[split] = self._split_entry(split, shards.rows, files)
            entries[name] = {"kind": "weights", "of": self.config, "splits": wsplits}
        return entries

    def _split_entry(self, split: str, rows: int, files: list[Path]) -> dict:
        stats = self._stats[split]
        return {
            "rows": rows,
            "models": len(stats["models"]),
            "micro_datasets": len(stats["micro_datasets"]),
            "files": [f.relative_to(self.out_dir).as_posix() for f in files],
            "bytes": sum(f.stat().st_size for f in files),
        }


# --------------------------------------------------------------------------- manifest


def read_manifest(folder: str | Path) -> dict:
    """The folder's ``lora_wise.json`` (an empty manifest if there is none yet)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {"version": MANIFEST_VERSION, "configs": {}}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetBuildError(f"{path}: unreadable manifest ({exc})") from exc


def update_manifest(folder: str | Path, entries: dict[str, dict | None]) -> dict:
    """Merge config entries (None removes one) into the manifest, write it atomically, re-render the card."""
    from lora_wise.dataset.card import write_card

    folder = Path(folder)
    manifest = read_manifest(folder)
    manifest["version"] = MANIFEST_VERSION
    for name, entry in entries.items():
        if entry is None:
            manifest["configs"].pop(name, None)
        else:
            manifest["configs"][name] = entry
    manifest["configs"] = dict(sorted(manifest["configs"].items()))
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False))
    write_card(folder, manifest)
    return manifest


# --------------------------------------------------------------------------- factory input


@dataclass
class FactoryJob:
    """One finished job folder of the factory: its sidecars by step."""

    folder: Path
    job: TrainJob
    sidecars: dict[int, Sidecar]


def scan_factory(factory_dir: str | Path) -> tuple[list[FactoryJob], list[str]]:
    """Finished jobs under ``factory_dir`` (those with ``done.json``) and notes on what was skipped."""
    root = Path(factory_dir)
    if not root.is_dir():
        raise DatasetBuildError(f"{root}: not a folder (expected the factory's output folder)")
    by_folder: dict[Path, dict[int, Sidecar]] = {}
    try:
        for snap in iter_snapshots(root):
            by_folder.setdefault(snap.folder, {})[snap.sidecar.step] = snap.sidecar
    except InvalidLoraFile as exc:
        raise DatasetBuildError(str(exc)) from None
    jobs, notes = [], []
    for folder in sorted(by_folder, key=lambda p: natural_key(str(p))):
        if not folder_done(folder):
            notes.append(f"{folder.relative_to(root)}: unfinished (no done.json), skipped")
            continue
        sidecars = by_folder[folder]
        jobs.append(FactoryJob(folder, next(iter(sidecars.values())).job, sidecars))
    if not jobs:
        raise DatasetBuildError(f"{root}: no finished factory job (step-*.json + done.json) found")
    return jobs, notes


def _snapshot_layers(path: Path) -> list[str]:
    """Layer names from the safetensors header only (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return sorted({k.rsplit(".lora_", 1)[0] for k in f.keys() if ".lora_" in k}, key=natural_key)


# --------------------------------------------------------------------------- build


@dataclass
class BuildSummary:
    out_dir: Path
    configs: dict[str, dict]
    notes: list[str]


def build_dataset(factory_dir: str | Path, out_dir: str | Path, weights: bool = False,
                  steps: Iterable[int] | None = None, precision: str = "float32",
                  progress: Progress | None = None, merge: bool = False) -> BuildSummary:  # fmt: skip
    """Turn a factory output folder into a LoRA-WiSE dataset folder (spectra, card, manifest).

    One config per (range, backbone, rank); ``steps`` picks the snapshots (all when None);
    ``weights=True`` adds the ``<config>-weights`` configs. Streams one snapshot at a time;
    ``progress(config, done, total)`` is called after each. ``merge=True`` keeps the rows already
    in ``out_dir`` of models the factory folder does not hold (a benchmark generated across several
    machines or sessions, each with its own factory folder) and re-splits the union.
    """
    _check_precision(precision)
    if merge and weights:
        raise DatasetBuildError(
            "--merge keeps spectra rows only: build the -weights configs from one factory folder"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, notes = scan_factory(factory_dir)
    wanted = None if steps is None else {int(s) for s in steps}
    by_config: dict[str, list[FactoryJob]] = {}
    for fjob in jobs:
        by_config.setdefault(fjob.job.config_name, []).append(fjob)
    entries = {}
    for config, members in sorted(by_config.items()):
        kept = _kept_rows(out, config, members, wanted, precision) if merge else []
        entries.update(_build_config(out, config, members, wanted, weights, precision, notes, progress, kept))
    update_manifest(out, entries)
    return BuildSummary(out, {k: v for k, v in entries.items() if v is not None}, notes)


def _build_config(out: Path, config: str, members: list[FactoryJob], wanted: set[int] | None, weights: bool,
                  precision: str, notes: list[str], progress: Progress | None,
                  kept: list[dict] = ()) -> dict[str, dict | None]:  # fmt: skip
    splits = split_micro_datasets({m.job.micro_dataset for m in members} | {r["micro_dataset"] for r in kept})
    snapshots = [
        (m, step) for m in members for step in sorted(m.sidecars) if wanted is None or step in wanted
    ]
    if not snapshots:
        raise DatasetBuildError(f"{config}: none of the requested steps {sorted(wanted or [])} exists")
    # The layer order is fixed before any row is written: the union over the jobs' headers.
    layers = sorted({name for m in members for name in _snapshot_layers(_snapshot_path(m, min(m.sidecars)))},
                    key=natural_key)  # fmt: skip
    width = max(m.job.rank for m in members)
    job = members[0].job
    info = {"source": "factory", "range": job.range_name, "backbone": job.backbone, "rank": job.rank,
            "split_seed": PAPER_SEED,
            "evaluated_step": SCHEDULES.get(job.range_name, (0, 0, None))[2]}  # fmt: skip
    _check_kept(out, config, kept, layers, width)
    writer = ConfigWriter(out, config, layers, width, precision=precision, with_weights=weights, info=info)
    for row in kept:
        writer.add(splits[row["micro_dataset"]], row)
    for done, (member, step) in enumerate(snapshots, 1):
        path = _snapshot_path(member, step)
        spectra = compute_spectra(read_lora(path), width=width)
        meta = _row_meta(member, step)
        writer.add(splits[member.job.micro_dataset], spectra_row(spectra, layers, width, meta, precision),
                   path.read_bytes() if weights else None)  # fmt: skip
        if progress is not None:
            progress(config, done, len(snapshots))
    if wanted is not None:
        missing = sorted(wanted - {s for m in members for s in m.sidecars})
        if missing:
            notes.append(f"{config}: steps {missing} found in no job")
    return writer.close()


def _kept_rows(
    out: Path, config: str, members: list[FactoryJob], wanted: set[int] | None, precision: str
) -> list[dict]:
    """Rows of ``config`` already in ``out`` whose model the factory folder does not hold (for ``merge``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry = read_manifest(out)["configs"].get(config)
    if entry is None:
        return []
    if entry.get("precision", "float32") != precision:
        raise DatasetBuildError(
            f"{config}: stored in {entry.get('precision')}, cannot merge {precision} rows into it"
        )
    tables = [pq.read_table(f) for f in _config_files(out, entry)]
    fresh = {_row_meta(m, min(m.sidecars))["model_id"] for m in members}
    rows = []
    for row in pa.concat_tables(tables).to_pylist() if tables else []:
        if row["model_id"] in fresh or (wanted is not None and row["step"] not in wanted):
            continue
        rows.append({**row, **{k: np.asarray(row[k], dtype=precision) for k in KINDS}})
    return rows


def _check_kept(out: Path, config: str, kept: list[dict], layers: list[str], width: int) -> None:
    """Merged rows must share the new rows' layer order and width, or the columns would not mean the same."""
    if not kept:
        return
    entry = read_manifest(out)["configs"][config]
    if entry["layers"] != layers or entry["width"] != width:
        raise DatasetBuildError(f"{config}: the rows in {out} have another layer order or width than the "
                                "factory's snapshots: rebuild without --merge")  # fmt: skip


def built_model_ids(folder: str | Path) -> set[str]:
    """Model ids with rows in any spectra config of a dataset folder (reads the model_id column only)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    ids: set[str] = set()
    for entry in read_manifest(folder)["configs"].values():
        for f in _config_files(folder, entry) if entry.get("kind") == "spectra" else ():
            ids.update(pq.read_table(f, columns=["model_id"]).column("model_id").to_pylist())
    return ids


def _config_files(folder: Path, entry: dict) -> list[Path]:
    """The parquet shards of one manifest entry, every split."""
    return [folder / f for split in entry["splits"].values() for f in split["files"]]


def _snapshot_path(member: FactoryJob, step: int) -> Path:
    return lora_path(member.folder, step)


def _row_meta(member: FactoryJob, step: int) -> dict:
    sc = member.sidecars[step]
    return {"model_id": sc.model_id, "micro_dataset": sc.micro_dataset, "dataset_size": sc.dataset_size,
            "backbone": sc.backbone, "rank": sc.rank, "alpha": sc.alpha, "step": step,
            "image_ids": sc.image_ids, "recipe": sc.recipe}  # fmt: skip
