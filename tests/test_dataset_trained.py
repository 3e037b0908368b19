"""build on LoRAs trained by the real trainer (tiny-sd, a few steps): the factory's true output."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from dataset_helpers import isolated_datasets_cache  # noqa: F401
from train_helpers import job, tiny

from lora_wise import compute_spectra, read_lora
from lora_wise.dataset.build import build_dataset, read_manifest
from lora_wise.factory.train import train_group


@pytest.mark.slow
def test_build_on_trained_loras(tmp_path):
    jobs = [job(micro, n, steps=10, every=5) for micro in ("pool:digit-3-ink", "pool:face") for n in (1, 3)]
    train_group(jobs, tmp_path / "factory", backbone=tiny())
    summary = build_dataset(tmp_path / "factory", tmp_path / "ds")
    (config,) = summary.configs
    assert config == "low-tiny_sd-r4"
    entry = read_manifest(tmp_path / "ds")["configs"][config]
    assert len(entry["layers"]) == 128 and entry["width"] == 4 and entry["steps"] == [5, 10]
    ds = datasets.load_dataset(str(tmp_path / "ds"), config).with_format("numpy")
    rows = [row for split in ds.values() for row in split]
    assert len(rows) == 8
    for row in rows:
        path = tmp_path / "factory" / str(row["model_id"]) / f"step-{int(row['step']):05d}.safetensors"
        expected = compute_spectra(read_lora(path)).align(entry["layers"], 4)
        np.testing.assert_allclose(row["ba"], expected.ba, rtol=1e-5, atol=1e-12)
        assert np.all(row["ba"][:, 0] > 0)  # trained: B left zero init
