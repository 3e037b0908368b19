"""lora-wise import-upstream: the published flat-float64 layout -> our schema, spectra exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from dataset_helpers import (  # noqa: F401
    TINY_LAYERS,
    isolated_datasets_cache,
    random_lora,
    upstream_column,
    weights_of,
    write_upstream_parquet,
)

from lora_wise import InvalidLoraFile, compute_spectra
from lora_wise.dataset.build import read_manifest, split_micro_datasets
from lora_wise.dataset.load import load_benchmark
from lora_wise.dataset.upstream import find_upstream_files, import_upstream, our_config
from lora_wise.errors import DatasetBuildError
from lora_wise.spectra.compute import natural_key

RANK = 32  # the rank of upstream config medium_32


def upstream_rows(n_names: int, sizes=(1, 10, 20), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (size, f"n0{1440764 + k}", random_lora(rng, RANK, size)) for k in range(n_names) for size in sizes
    ]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    rows = upstream_rows(5)
    (root / "release" / "medium_32").mkdir(parents=True)
    (root / "release" / "medium_32_2").mkdir(parents=True)
    write_upstream_parquet(
        root / "release" / "medium_32" / "train-00000-of-00002.parquet", rows[:8], row_group_size=3
    )
    write_upstream_parquet(
        root / "release" / "medium_32" / "train-00001-of-00002.parquet", rows[8:], row_group_size=3
    )
    # A neighbour config whose name starts with ours: it must not be picked up.
    write_upstream_parquet(
        root / "release" / "medium_32_2" / "train-00000-of-00001.parquet", upstream_rows(1, seed=9)
    )
    entry = import_upstream(root / "release", "medium_32", root / "ds", batch_size=2)
    return root, rows, entry


def test_the_test_files_have_the_upstream_layout(imported):
    root, _, _ = imported
    schema = pq.read_schema(root / "release" / "medium_32" / "train-00000-of-00002.parquet")
    name = next(iter(TINY_LAYERS))
    assert {"label", "name", upstream_column(name, "down"), upstream_column(name, "up")} <= set(schema.names)
    assert str(schema.field(upstream_column(name, "down")).type) == "list<element: double>"


def test_imported_spectra_equal_those_of_the_original_matrices(imported):
    root, rows, entry = imported
    config = our_config("medium_32")
    assert config == "medium-sd15-r32"
    layers = entry["layers"]
    assert layers == sorted(TINY_LAYERS, key=natural_key)
    ds = datasets.load_dataset(str(root / "ds"), config, cache_dir=str(root / "cache")).with_format("numpy")
    originals = {(name, size): matrices for size, name, matrices in rows}
    seen = 0
    for split in ds:
        for row in ds[split]:
            matrices = originals[(str(row["micro_dataset"]), int(row["dataset_size"]))]
            expected = compute_spectra(weights_of(matrices, RANK)).align(layers, 32)
            for kind in ("a", "b", "ba"):
                np.testing.assert_allclose(row[kind], getattr(expected, kind), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(row["fro"], expected.fro, rtol=1e-5)
            assert int(row["step"]) == 1200 and str(row["backbone"]) == "sd15"
            seen += 1
    assert seen == len(rows)


def test_import_splits_by_name_and_records_its_origin(imported):
    root, rows, entry = imported
    expected = split_micro_datasets(name for _, name, _ in rows)
    table = load_benchmark(root / "ds", "medium-sd15-r32", split="train", cache_dir=str(root / "cache"))
    assert set(table.micro_dataset) == {n for n, s in expected.items() if s == "train"}
    assert entry["source"] == "upstream" and entry["upstream_config"] == "medium_32"
    assert "medium-sd15-r32" in (root / "ds" / "README.md").read_text()
    assert (
        read_manifest(root / "ds")["configs"]["medium-sd15-r32"]["splits"]["test"]["models"] == 9
    )  # 3 of 5 names × 3 sizes


def test_config_files_are_found_without_the_prefix_neighbour(imported):
    root, _, _ = imported
    files = find_upstream_files(root / "release", "medium_32")
    assert [f.parent.name for f in files] == ["medium_32", "medium_32"]
    assert len(find_upstream_files(root / "release", "medium_32_2")) == 1


def test_bad_upstream_input_is_a_one_line_error(tmp_path):
    with pytest.raises(DatasetBuildError, match="unknown upstream config"):
        import_upstream(tmp_path, "medium_99", tmp_path / "ds")
    with pytest.raises(DatasetBuildError, match="neither a folder"):
        import_upstream(tmp_path / "no" / "such" / "folder", "medium_32", tmp_path / "ds")
    (tmp_path / "medium_32").mkdir()
    with pytest.raises(DatasetBuildError, match="no parquet file"):
        import_upstream(tmp_path, "medium_32", tmp_path / "ds")
    rows = upstream_rows(1, sizes=(1,))
    bad = [(1, "x", dict(rows[0][2]))]
    bad[0][2][next(iter(TINY_LAYERS))] = (np.ones(7, dtype=np.float32), np.ones((32, RANK), dtype=np.float32))
    write_upstream_parquet(tmp_path / "medium_32" / "train.parquet", bad)
    with pytest.raises(InvalidLoraFile, match="do not divide by rank"):
        import_upstream(tmp_path, "medium_32", tmp_path / "ds", batch_size=1)


def test_import_from_the_hub_repo_id_through_an_offline_cache(imported, tmp_path):
    root, rows, entry = imported
    revision = "b" * 40
    repo = tmp_path / "hub" / "datasets--MoSalama98--LoRA-WiSE"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(root / "release", repo / "snapshots" / revision)
    script = (
        "import json, sys; from lora_wise.dataset.upstream import import_upstream\n"
        "e = import_upstream('MoSalama98/LoRA-WiSE', 'medium_32', sys.argv[1])\n"
        "print(json.dumps({s: v['rows'] for s, v in e['splits'].items()}))"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ds")], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        s: v["rows"] for s, v in entry["splits"].items()
    }
    local = pq.read_table(root / "ds" / entry["splits"]["test"]["files"][0]).column("ba").to_pylist()
    hub = pq.read_table(tmp_path / "ds" / entry["splits"]["test"]["files"][0]).column("ba").to_pylist()
    assert local == hub


def test_import_into_a_built_folder_keeps_both_configs(imported, tmp_path):
    from dataset_helpers import make_factory

    from lora_wise.dataset.build import build_dataset

    root, _, _ = imported
    make_factory(tmp_path / "factory", n_micro=2, sizes=(1, 10), steps=(100,))
    build_dataset(tmp_path / "factory", tmp_path / "ds")
    import_upstream(root / "release", "medium_32", tmp_path / "ds")
    assert set(read_manifest(tmp_path / "ds")["configs"]) == {"medium-tiny_sd-r8", "medium-sd15-r32"}
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "config_name: medium-sd15-r32" in card and "config_name: medium-tiny_sd-r8" in card
    for config in ("medium-tiny_sd-r8", "medium-sd15-r32"):
        assert len(load_benchmark(tmp_path / "ds", config)) > 0
