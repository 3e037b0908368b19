"""lora-wise build: factory folders -> a dataset folder that ``datasets.load_dataset`` reads as declared."""

from __future__ import annotations

import json
import random

import datasets
import numpy as np
import pytest
import yaml
from dataset_helpers import isolated_datasets_cache, make_factory, weights_of, write_job  # noqa: F401
from safetensors.numpy import load as load_safetensors

from lora_wise import compute_spectra
from lora_wise.dataset.build import (
    DatasetBuildError,
    build_dataset,
    read_manifest,
    spectra_features,
    split_micro_datasets,
)
from lora_wise.dataset.load import load_benchmark
from lora_wise.factory.jobs import TrainJob
from lora_wise.spectra.compute import natural_key

CONFIG = "medium-tiny_sd-r8"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    truth = make_factory(root / "factory", n_micro=4, sizes=(1, 10, 20), steps=(100, 200), rank=8)
    summary = build_dataset(root / "factory", root / "ds")
    return root / "ds", truth, summary


def test_load_dataset_gives_splits_with_declared_features(built):
    folder, truth, _ = built
    ds = datasets.load_dataset(str(folder), CONFIG, cache_dir=str(folder.parent / "cache"))
    layers = read_manifest(folder)["configs"][CONFIG]["layers"]
    assert set(ds) == {"train", "test"}
    assert ds["train"].features == spectra_features(len(layers), 8)
    assert len(ds["train"]) + len(ds["test"]) == len(truth)


def test_spectra_equal_those_recomputed_from_the_original_matrices(built):
    folder, truth, _ = built
    layers = read_manifest(folder)["configs"][CONFIG]["layers"]
    assert layers == sorted(layers, key=natural_key)
    ds = datasets.load_dataset(str(folder), CONFIG, cache_dir=str(folder.parent / "cache")).with_format(
        "numpy"
    )
    checked = 0
    for split in ds:
        for row in ds[split]:
            job, matrices = truth[(str(row["model_id"]), int(row["step"]))]
            expected = compute_spectra(weights_of(matrices, job.alpha)).align(layers, 8)
            for kind in ("a", "b", "ba"):
                np.testing.assert_allclose(row[kind], getattr(expected, kind), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(row["fro"], expected.fro, rtol=1e-5)
            assert int(row["dataset_size"]) == job.dataset_size
            assert list(row["image_ids"]) == [f"{job.micro_dataset}/{i}" for i in range(job.dataset_size)]
            checked += 1
    assert checked == len(truth)


def test_splits_are_by_micro_dataset_with_the_seeded_paper_share(built):
    folder, truth, _ = built
    ds = datasets.load_dataset(str(folder), CONFIG, cache_dir=str(folder.parent / "cache"))
    train, test = set(ds["train"]["micro_dataset"]), set(ds["test"]["micro_dataset"])
    assert not train & test
    expected = split_micro_datasets({job.micro_dataset for job, _ in truth.values()})
    assert train == {m for m, s in expected.items() if s == "train"}
    assert len(train) == 1 and len(test) == 3  # round(4 * 15 / 50) = 1


def test_fifty_micro_datasets_split_exactly_like_random_seed_42():
    names = [f"imagenet:n{i:08d}" for i in range(50)]
    random.seed(42)
    paper_train = set(random.sample(sorted(names), 15))
    split = split_micro_datasets(reversed(names))
    assert {n for n, s in split.items() if s == "train"} == paper_train
    assert sum(s == "test" for s in split.values()) == 35
    many = split_micro_datasets(f"c{i:03d}" for i in range(80))
    assert sum(s == "train" for s in many.values()) == 15


def test_the_first_split_is_the_evaluation_protocols_first_repeat():
    from lora_wise.evaluation import micro_splits

    names = [f"concept-{i}" for i in range(12)]
    split = split_micro_datasets(names)
    train = sorted(n for n, s in split.items() if s == "train")
    (first_train, _), *_ = micro_splits(names, len(train), len(names) - len(train))
    assert train == first_train


def test_card_declares_configs_and_real_counts(built):
    folder, truth, _ = built
    text = (folder / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    (config,) = header["configs"]
    assert config["config_name"] == CONFIG
    assert {f["split"] for f in config["data_files"]} == {"train", "test"}
    assert header["license"] and header["task_categories"] and header["size_categories"] == ["n<1K"]
    assert f"{len(truth)} snapshots of {len(truth) // 2} models" in text
    assert "arXiv:2406.19395" in text and "Salama" in text
    layers = read_manifest(folder)["configs"][CONFIG]["layers"]
    assert all(f"`{name}`" in text for name in layers)


def test_weights_config_holds_the_files_and_steps_select_snapshots(tmp_path):
    truth = make_factory(tmp_path / "factory", n_micro=2, sizes=(1, 10), steps=(100, 200, 300), rank=4)
    build_dataset(tmp_path / "factory", tmp_path / "ds", weights=True, steps=[200])
    spectra = datasets.load_dataset(
        str(tmp_path / "ds"), "medium-tiny_sd-r4", cache_dir=str(tmp_path / "cache")
    )
    weights = datasets.load_dataset(
        str(tmp_path / "ds"), "medium-tiny_sd-r4-weights", cache_dir=str(tmp_path / "cache")
    )
    assert {int(s) for split in spectra for s in spectra[split]["step"]} == {200}
    rows = [row for split in weights for row in weights[split]]
    assert len(rows) == 4
    for row in rows:
        path = tmp_path / "factory" / row["model_id"] / "step-00200.safetensors"
        assert row["safetensors"] == path.read_bytes()
        _, matrices = truth[(row["model_id"], 200)]
        name = next(iter(matrices))
        np.testing.assert_array_equal(
            load_safetensors(row["safetensors"])[f"{name}.lora_B.weight"], matrices[name][1]
        )
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["configs"]["medium-tiny_sd-r4"]["weights_config"] == "medium-tiny_sd-r4-weights"


def test_unfinished_jobs_are_skipped_and_reported(tmp_path):
    make_factory(tmp_path / "factory", n_micro=2, sizes=(1,), steps=(100,))
    job = TrainJob(
        backbone="tiny-sd", range_name="medium", dataset_size=10, micro_dataset="pool:half", rank=8
    )
    write_job(tmp_path / "factory", job, [100], done=False)
    calls = []
    summary = build_dataset(tmp_path / "factory", tmp_path / "ds", progress=lambda *a: calls.append(a))
    assert calls == [(CONFIG, 1, 2), (CONFIG, 2, 2)]
    assert any("unfinished" in note for note in summary.notes)
    ids = {
        r
        for split in datasets.load_dataset(
            str(tmp_path / "ds"), CONFIG, cache_dir=str(tmp_path / "cache")
        ).values()
        for r in split["model_id"]
    }
    assert job.job_id not in ids and len(ids) == 2


def test_load_benchmark_returns_the_estimators_table(built):
    folder, truth, _ = built
    table = load_benchmark(folder, CONFIG, split="test", step=200, cache_dir=str(folder.parent / "cache"))
    layers = read_manifest(folder)["configs"][CONFIG]["layers"]
    assert table.layers == layers
    assert table.ba.shape == (len(table), len(layers), 8) and table.fro.shape == (len(table), len(layers))
    assert set(table.step) == {200} and len(table) == 9  # 3 test micro-datasets × 3 sizes
    for i in range(len(table)):
        job, matrices = truth[(table.model_id[i], 200)]
        assert table.size[i] == job.dataset_size and table.micro_dataset[i] == job.micro_dataset
        expected = compute_spectra(weights_of(matrices, job.alpha)).align(layers, 8)
        np.testing.assert_allclose(table.ba[i], expected.ba, rtol=1e-5, atol=1e-9)


def test_bad_inputs_are_one_line_errors(tmp_path, built):
    folder, _, _ = built
    with pytest.raises(DatasetBuildError, match="not a folder"):
        build_dataset(tmp_path / "missing", tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetBuildError, match="no finished factory job"):
        build_dataset(tmp_path / "empty", tmp_path / "ds")
    with pytest.raises(DatasetBuildError, match="no spectra config"):
        load_benchmark(folder, "low-sd15-r8")
    with pytest.raises(DatasetBuildError, match="step 999"):
        load_benchmark(folder, CONFIG, step=999)


def test_manifest_lists_files_that_exist(built):
    folder, _, summary = built
    manifest = json.loads((folder / "lora_wise.json").read_text())
    for split in manifest["configs"][CONFIG]["splits"].values():
        assert all((folder / f).is_file() for f in split["files"])
    assert summary.configs[CONFIG]["splits"]["train"]["rows"] == 6


def test_load_benchmark_sees_a_rebuild_in_place(tmp_path):
    make_factory(tmp_path / "factory", n_micro=2, sizes=(1, 10), steps=(100, 200))
    cache = str(tmp_path / "cache")
    build_dataset(tmp_path / "factory", tmp_path / "ds")
    assert set(load_benchmark(tmp_path / "ds", CONFIG, cache_dir=cache).step) == {100, 200}
    build_dataset(tmp_path / "factory", tmp_path / "ds", steps=[100])
    assert set(load_benchmark(tmp_path / "ds", CONFIG, cache_dir=cache).step) == {100}


def test_table_loader_serves_dataset_folders_and_passes_on_the_rest(built, tmp_path):
    from lora_wise.dataset.load import table_loader

    folder, truth, _ = built
    table = table_loader(str(folder), None)  # one spectra config: chosen without asking
    assert len(table) == len(truth)
    assert table_loader(str(tmp_path), CONFIG) is None  # not a dataset folder: the next loader's turn


def test_the_cards_python_examples_run(built, tmp_path, monkeypatch):
    import re

    from lora_wise.dataset.card import render_card

    folder, _, _ = built
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    text = render_card(read_manifest(folder), repo_id=str(folder))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own rendered card
    assert namespace["train"]["ba"].shape[1:] == (len(read_manifest(folder)["configs"][CONFIG]["layers"]), 8)


def test_a_corrupt_sidecar_is_a_one_line_error(tmp_path):
    make_factory(tmp_path / "factory", n_micro=1, sizes=(1,), steps=(100,))
    (sidecar,) = (tmp_path / "factory").rglob("step-00100.json")
    sidecar.write_text("{not json")
    with pytest.raises(DatasetBuildError, match="not a factory sidecar"):
        build_dataset(tmp_path / "factory", tmp_path / "ds")


def test_a_benchmark_built_in_pieces_with_merge_equals_one_build(tmp_path):
    import shutil

    from lora_wise.dataset.build import built_model_ids
    from lora_wise.factory.runner import make_plan

    truth = make_factory(tmp_path / "all", n_micro=4, sizes=(1, 10), steps=(100, 200))
    for m in (2, 3):  # a second session's factory folder holds the last two micro-datasets
        shutil.copytree(
            tmp_path / "all" / CONFIG / f"pool-concept-{m}",
            tmp_path / "second" / CONFIG / f"pool-concept-{m}",
        )
    shutil.copytree(tmp_path / "all", tmp_path / "first")
    for m in (2, 3):
        shutil.rmtree(tmp_path / "first" / CONFIG / f"pool-concept-{m}")

    build_dataset(tmp_path / "all", tmp_path / "whole")
    build_dataset(tmp_path / "first", tmp_path / "pieces", steps=[100, 200])
    jobs = [job for job, _ in truth.values()]
    assert len(make_plan(jobs, tmp_path / "second", skip=built_model_ids(tmp_path / "pieces")).done) == len(
        jobs
    )
    build_dataset(tmp_path / "second", tmp_path / "pieces", merge=True)

    whole, pieces = (load_benchmark(tmp_path / d, CONFIG) for d in ("whole", "pieces"))
    assert built_model_ids(tmp_path / "pieces") == {job.job_id for job in jobs}
    order = [np.lexsort((t.step, t.model_id)) for t in (whole, pieces)]
    for kind in ("a", "b", "ba", "fro", "size", "step", "model_id"):
        np.testing.assert_array_equal(getattr(whole, kind)[order[0]], getattr(pieces, kind)[order[1]])
    splits = [{s: e["micro_datasets"]
               for s, e in read_manifest(tmp_path / d)["configs"][CONFIG]["splits"].items()}
              for d in ("whole", "pieces")]  # fmt: skip
    assert splits[0] == splits[1]
    with pytest.raises(DatasetBuildError, match="merge"):
        build_dataset(tmp_path / "second", tmp_path / "pieces", merge=True, weights=True)
