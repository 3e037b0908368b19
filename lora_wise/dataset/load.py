"""Load a LoRA-WiSE config as the :class:`~lora_wise.spectra.table.SpectraTable` the estimators consume.

The source is a local dataset folder or a Hub dataset repo id. A repo is first fetched with
``snapshot_download`` restricted to the config's shards and the manifest (so a spectra user never
downloads the weights configs), which also makes the offline path work from the Hub cache;
the rows are then read with ``datasets.load_dataset`` on that folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_wise.dataset.build import MANIFEST, read_manifest
from lora_wise.errors import DatasetBuildError
from lora_wise.spectra.table import SpectraTable


def resolve_dataset(path_or_repo: str | Path, config: str | None, revision: str | None = None) -> Path:
    """A local folder holding ``config``: the path itself, or the Hub snapshot of the repo
    (with ``config=None``, a snapshot of the manifest and card only)."""
    path = Path(path_or_repo)
    if path.is_dir():
        return path
    if str(path_or_repo).count("/") != 1 or path.exists():
        raise DatasetBuildError(f"{path_or_repo}: neither a dataset folder nor a Hub repo id (user/name)")
    from lora_wise.dataset.hub import download

    patterns = [MANIFEST, "README.md"] + ([f"data/{config}/*"] if config else [])
    return download(str(path_or_repo), revision=revision, allow_patterns=patterns)


def load_benchmark(path_or_repo: str | Path, config: str, split: str | None = None,
                   step: int | None = None, revision: str | None = None,
                   cache_dir: str | None = None) -> SpectraTable:  # fmt: skip
    """The spectra of ``config`` (all splits when ``split`` is None; one snapshot step if given)."""
    import datasets

    folder = resolve_dataset(path_or_repo, config, revision)
    configs = read_manifest(folder)["configs"]
    entry = configs.get(config)
    if entry is None or entry.get("kind") != "spectra":
        known = sorted(k for k, v in configs.items() if v.get("kind") == "spectra")
        raise DatasetBuildError(f"{path_or_repo}: no spectra config {config!r} (have: {', '.join(known) or 'none'})")
    if split is not None and split not in entry["splits"]:
        raise DatasetBuildError(f"{path_or_repo}: config {config!r} has no split {split!r}")
    # The manifest's file list, not the card's globs: datasets keys its cache of a folder's YAML
    # configs by config name (not by file contents), so a folder rebuilt in place would load stale
    # rows; explicit data_files are keyed by path and mtime.
    files = {s: [str(folder / f) for f in e["files"]] for s, e in entry["splits"].items()}
    loaded = datasets.load_dataset("parquet", data_files=files, split=split, cache_dir=cache_dir)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.concatenate_datasets([loaded[s] for s in sorted(loaded)])
    if step is not None:
        keep = np.flatnonzero(np.asarray(loaded["step"]) == int(step))
        if keep.size == 0:
            raise DatasetBuildError(f"{path_or_repo}: no snapshot at step {step} in {config!r} (steps: {entry['steps']})")
        loaded = loaded.select(keep)
    return _to_table(loaded, entry["layers"])


def _to_table(ds, layers: list[str]) -> SpectraTable:
    n, n_layers = len(ds), len(layers)
    columns = ["a", "b", "ba", "fro", "dataset_size", "micro_dataset", "step", "rank", "backbone", "model_id"]
    batch = ds.select_columns(columns).with_format("numpy")[:]  # one Arrow -> numpy conversion per column
    return SpectraTable(
        layers=list(layers),
        **{kind: np.asarray(batch[kind], dtype=np.float64).reshape(n, n_layers, -1) for kind in ("a", "b", "ba")},
        fro=np.asarray(batch["fro"], dtype=np.float64).reshape(n, n_layers),
        size=np.asarray(batch["dataset_size"], dtype=np.int64),
        micro_dataset=np.asarray(batch["micro_dataset"]).astype(str),
        step=np.asarray(batch["step"], dtype=np.int64),
        rank=np.asarray(batch["rank"], dtype=np.int64),
        backbone=np.asarray(batch["backbone"]).astype(str),
        model_id=np.asarray(batch["model_id"]).astype(str),
    )


def table_loader(source: str, config: str | None) -> SpectraTable | None:
    """The dataset as a source for ``lora_wise.evaluation.load_table``.

    Takes a dataset folder (one with ``lora_wise.json``) or a Hub repo id; returns None for
    anything else (a factory folder, say) so that the next loader can try. Without ``config``
    the dataset must hold exactly one spectra config.
    """
    path = Path(source)
    if path.exists() and not (path / MANIFEST).is_file():
        return None
    if not path.exists() and source.count("/") != 1:
        return None
    if config is None:
        folder = resolve_dataset(source, None)
        spectra = sorted(k for k, v in read_manifest(folder)["configs"].items() if v.get("kind") == "spectra")
        if len(spectra) != 1:
            raise DatasetBuildError(f"{source} holds {len(spectra)} spectra configs ({', '.join(spectra)}): choose one")
        config = spectra[0]
    return load_benchmark(source, config)
