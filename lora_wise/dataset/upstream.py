"""Import the published LoRA-WiSE release (Hub ``MoSalama98/LoRA-WiSE``) into our dataset schema.

Upstream is parquet with ``label`` (the dataset size), ``name`` (the micro-dataset) and one FLAT
float64 list column per matrix, ``unet.<module path>.lora.down.weight`` (A, reshaped to (r, -1))
and ``....lora.up.weight`` (B, reshaped to (-1, r)), one checkpoint per model: about 103 GB in all.
It is streamed row group by row group and, inside a row group, layer by layer with
``ParquetFile.iter_batches`` over that layer's two columns, a few rows at a time: never a whole
row group, file or config in memory. Each row's spectra become a row of ours. The only other
pass reads the ``name`` column, to draw the split before writing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lora_wise.dataset.build import (
    ConfigWriter,
    DatasetBuildError,
    spectra_row,
    split_micro_datasets,
    update_manifest,
)
from lora_wise.errors import InvalidLoraFile
from lora_wise.lora.weights import LoraLayer, LoraWeights
from lora_wise.paper import SCHEDULES, TARGET_MODULES
from lora_wise.spectra.compute import Spectra, compute_spectra, natural_key
from lora_wise.spectra.table import KINDS

UPSTREAM_REPO = "MoSalama98/LoRA-WiSE"
DOWN, UP = ".lora.down.weight", ".lora.up.weight"
#: Upstream config -> (range, backbone, rank). ``medium_32_2`` is the paper's SD2 rank-32 set.
UPSTREAM_CONFIGS: dict[str, tuple[str, str, int]] = {
    "low_8": ("low", "sd15", 8),
    "low_16": ("low", "sd15", 16),
    "low_32": ("low", "sd15", 32),
    "medium_16": ("medium", "sd15", 16),
    "medium_32": ("medium", "sd15", 32),
    "medium_32_2": ("medium", "sd2", 32),
    "high_32": ("high", "sd15", 32),
}


def our_config(config: str) -> str:
    """``medium_32`` -> ``medium-sd15-r32``: the name of the imported config in our schema."""
    range_name, backbone, rank = _config_info(config)
    return f"{range_name}-{backbone}-r{rank}"


def _config_info(config: str) -> tuple[str, str, int]:
    if config not in UPSTREAM_CONFIGS:
        raise DatasetBuildError(f"unknown upstream config {config!r} (known: {', '.join(UPSTREAM_CONFIGS)})")
    return UPSTREAM_CONFIGS[config]


def find_upstream_files(folder: str | Path, config: str) -> list[Path]:
    """The parquet files of ``config`` in a local copy of the release.

    Accepted layouts: ``<config>/...parquet`` (any depth), files named ``<config>-*.parquet`` /
    ``<config>.parquet``, or a folder holding only that config's parquet files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetBuildError(f"{root}: not a folder of upstream parquet files")
    every = sorted(root.rglob("*.parquet"), key=lambda p: natural_key(str(p)))
    named = re.compile(rf"^{re.escape(config)}(-|\.|$)")
    mine = [p for p in every if config in p.relative_to(root).parts[:-1] or named.match(p.stem)]
    if (
        not mine
        and every
        and not any(c in p.relative_to(root).as_posix() for p in every for c in UPSTREAM_CONFIGS)
    ):
        mine = every  # a plain folder of one config's files
    if not mine:
        raise DatasetBuildError(f"{root}: no parquet file of upstream config {config!r}")
    return mine


def _fetch(repo_or_folder: str | Path, config: str, revision: str | None) -> list[Path]:
    if Path(repo_or_folder).is_dir():
        return find_upstream_files(repo_or_folder, config)
    if Path(repo_or_folder).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(repo_or_folder)):
        raise DatasetBuildError(
            f"{repo_or_folder}: neither a folder of parquet files nor a Hub repo id (user/name)"
        )
    from lora_wise.dataset.hub import download

    patterns = [f"{config}/*", f"*/{config}/*", f"{config}-*", f"*/{config}-*", f"{config}.parquet"]
    return find_upstream_files(
        download(str(repo_or_folder), revision=revision, allow_patterns=patterns), config
    )


def upstream_layers(files: list[Path]) -> list[str]:
    """Canonical layer names (natural order) from the first file's schema; every file must agree."""
    import pyarrow.parquet as pq

    layers = None
    for path in files:
        names = pq.read_schema(path).names
        missing = {"label", "name"} - set(names)
        if missing:
            raise InvalidLoraFile(
                f"{path}: not an upstream LoRA-WiSE file (no column {sorted(missing)[0]!r})"
            )
        downs = {n[: -len(DOWN)] for n in names if n.endswith(DOWN)}
        ups = {n[: -len(UP)] for n in names if n.endswith(UP)}
        if downs != ups or not downs:
            raise InvalidLoraFile(f"{path}: unpaired or missing lora.down/lora.up columns")
        found = sorted(downs, key=natural_key)
        if layers is not None and found != layers:
            raise InvalidLoraFile(f"{path}: its layers differ from those of {files[0].name}")
        layers = found
    return layers or []


def iter_upstream_spectra(
    path: Path, layers: list[str], rank: int, batch_size: int = 2
) -> Iterator[tuple[int, str, Spectra]]:
    """(label, name, Spectra) per row of one upstream file, in file order.

    Memory is bounded by ONE layer's two column chunks of one row group, whatever the row-group
    size: a row group of the release holds ~10 models (~0.5 GB of float64), and even
    ``iter_batches(batch_size=2)`` over all columns decodes a whole row group at once (measured:
    1.5 GB peak on such a file). So each row group is read layer by layer (its ``down``/``up``
    columns only, ``batch_size`` rows at a time) and the per-row spectra are filled in as we go.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    for group in range(parquet.num_row_groups):
        head = parquet.read_row_group(group, columns=["label", "name"])
        labels, names = head.column("label").to_pylist(), head.column("name").to_pylist()
        if any(v is None for v in labels + names):
            raise InvalidLoraFile(f"{path}: row without label or name")
        n = len(labels)
        spectra_of = {k: np.zeros((n, len(layers), rank)[: 2 if k == "fro" else 3]) for k in KINDS}
        for li, layer in enumerate(layers):
            first = 0
            batches = parquet.iter_batches(batch_size=batch_size, row_groups=[group],
                                           columns=[layer + DOWN, layer + UP], use_threads=False)  # fmt: skip
            for batch in batches:
                # The rows of this batch as the "layers" of one LoraWeights: one batched QR/SVD call.
                keys = [f"{first + j:08d}" for j in range(batch.num_rows)]
                rows = {key: _layer(batch, layer, j, rank, path, key) for j, key in enumerate(keys)}
                spectra = compute_spectra(LoraWeights(rows, "upstream"), width=rank)
                for k, key in enumerate(spectra.layers):
                    j = int(key)
                    for kind, values in spectra_of.items():
                        values[j, li] = getattr(spectra, kind)[k]
                first += batch.num_rows
            pa.default_memory_pool().release_unused()
        low = np.ones(len(layers), dtype=bool)
        for j in range(n):
            row = {kind: values[j] for kind, values in spectra_of.items()}
            yield int(labels[j]), str(names[j]), Spectra(list(layers), **row, low_rank=low)


def _layer(batch, layer: str, j: int, rank: int, path: Path, key: str) -> LoraLayer:
    down, up = batch.column(0)[j].values, batch.column(1)[j].values
    if down is None or up is None or not len(down) or not len(up) or len(down) % rank or len(up) % rank:
        raise InvalidLoraFile(f"{path}: {layer}: flat sizes do not divide by rank {rank}")
    a = down.to_numpy(zero_copy_only=False).reshape(rank, -1)
    b = up.to_numpy(zero_copy_only=False).reshape(-1, rank)
    return LoraLayer(key, "lora", a, b, float(rank), 1.0)


def import_upstream(repo_or_folder: str | Path, config: str, out_dir: str | Path, *,
                    precision: str = "float32", batch_size: int = 2, revision: str | None = None,
                    progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:  # fmt: skip
    """Convert upstream ``config`` (a Hub repo id or a local folder) into ``out_dir``; returns the manifest
    entry. ``progress(config, done, total)`` is called after each model."""
    import pyarrow.parquet as pq

    range_name, backbone, rank = _config_info(config)
    files = _fetch(repo_or_folder, config, revision)
    layers = upstream_layers(files)
    names = [str(n) for f in files for n in pq.read_table(f, columns=["name"]).column("name").to_pylist()]
    splits = split_micro_datasets(names)
    step = SCHEDULES[range_name][2]
    name = our_config(config)
    source = str(repo_or_folder) if not Path(repo_or_folder).is_dir() else UPSTREAM_REPO
    recipe = json.dumps({"source": source, "upstream_config": config, "method": "DreamBooth-LoRA",
                         "target_modules": list(TARGET_MODULES), "learning_rate": 1e-4,
                         "batch_size": SCHEDULES[range_name][0], "step": step, "seed": 0},
                        sort_keys=True)  # fmt: skip
    info = {"source": "upstream", "upstream_repo": source, "upstream_config": config, "range": range_name,
            "backbone": backbone, "rank": rank, "split_seed": 42, "evaluated_step": step}  # fmt: skip
    writer = ConfigWriter(Path(out_dir), name, layers, rank, precision=precision, info=info)
    done = 0
    for path in files:
        for label, micro, spectra in iter_upstream_spectra(path, layers, rank, batch_size):
            meta = {"model_id": f"upstream-{config}/{micro}/n{label:04d}", "micro_dataset": micro,
                    "dataset_size": label, "backbone": backbone, "rank": rank, "alpha": float(rank),
                    "step": step, "image_ids": [], "recipe": recipe}  # fmt: skip
            row = spectra_row(spectra, layers, rank, meta, precision)
            writer.add(splits[micro], row)
            done += 1
            if progress is not None:
                progress(name, done, len(names))
    entries = writer.close()
    update_manifest(out_dir, entries)
    return entries[name]


#: Backbones the factory cannot train references for (its trainer is the UNet DreamBooth-LoRA recipe).
_NO_TRAINER = ("flux", "sd3")


def no_bank_advice(backbone: str, rank: int | None) -> str:
    """How to build a bank for ``backbone`` and ``rank``: import the published LoRA-WiSE config of
    that backbone and rank when there is one, else train references with the factory."""
    published = [c for c, (_, b, r) in UPSTREAM_CONFIGS.items() if b == backbone and r == rank]
    if published:
        config = min(published, key=lambda c: ("medium" not in c, c))  # the paper's main range first
        return (
            f"build one with `lora-wise import-upstream {UPSTREAM_REPO} --config {config} --out DIR` and "
            f"`lora-wise fit-bank DIR --config {our_config(config)}`"
        )
    if backbone in _NO_TRAINER:
        return (
            f"none can be built yet: LoRA-WiSE publishes no {backbone} models, the factory trains UNets only"
        )
    ranks = sorted({r for _, b, r in UPSTREAM_CONFIGS.values() if b == backbone})
    published_note = (
        f"LoRA-WiSE publishes {backbone} models at rank {', '.join(map(str, ranks))} only"
        if ranks
        else f"LoRA-WiSE publishes no {backbone} models"
    )
    return (
        f"build one with `lora-wise generate GRID --out runs/{backbone}` "
        f"(a grid with `backbones: [{backbone}]`, `ranks: [{rank}]`), "
        f"`lora-wise build` and `lora-wise fit-bank` ({published_note})"
    )
