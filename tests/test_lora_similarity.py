"""scripts/lora_similarity.py: LoRA cosines from r×r products equal the dense ΔW computation."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from estimator_helpers import write_factory_folder

from lora_wise import read_lora

SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "lora_similarity.py"))


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    out = tmp_path_factory.mktemp("factory")
    write_factory_folder(out, concepts=3, sizes=(1, 10, 20), steps=(100,), rank=4)
    return out


def dense_inner(x, y) -> float:
    return sum(float(np.sum((lx.scale * lx.up @ lx.down).astype(np.float64)
                            * (y.layers[n].scale * y.layers[n].up @ y.layers[n].down)))
               for n, lx in x.layers.items())  # fmt: skip


def test_inner_product_from_rank_factors_equals_the_dense_one(factory):
    files = sorted(factory.rglob("step-00100.safetensors"))
    x, y = read_lora(files[0]), read_lora(files[-1])
    assert SCRIPT["inner"](x, y) == pytest.approx(dense_inner(x, y), rel=1e-6)
    assert SCRIPT["inner"](x, x) == pytest.approx(dense_inner(x, x), rel=1e-6)


def test_report_per_concept_and_overall(factory, capsys):
    assert (
        SCRIPT["main"]([str(factory), "--step", "100", "--json", "--micro-datasets", "pool:concept-[01]"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["models"] == 6 and [r["micro_dataset"] for r in result["concepts"]] == [
        "pool:concept-0",
        "pool:concept-1",
    ]
    for r in result["concepts"]:
        assert r["sizes"] == [1, 10, 20] and r["cosine_to_largest"][-1] == pytest.approx(1.0)
        assert (
            r["norm_to_smallest"][0] == pytest.approx(1.0) and r["norm_to_smallest"][-1] < 1
        )  # B shrinks with size
    assert -1 <= result["same_size_other_concept"] <= 1 and -1 <= result["same_concept_other_size"] <= 1
    assert SCRIPT["main"]([str(factory), "--step", "900"]) == 2  # nothing at that step: one line, exit 2


def test_memorisation_gap_of_a_trained_lora_and_the_merge_is_undone(tmp_path, capsys):
    """A real tiny-sd LoRA (3 images, 30 steps at a raised learning rate so that it learns
    something): the script merges it, measures both sets and leaves the UNet as it found it."""
    import dataclasses

    import torch
    from train_helpers import job, tiny

    from lora_wise.factory.train import train_group

    gap_script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "memorisation_gap.py"))
    bb = tiny()
    j = dataclasses.replace(job("pool:digit-4-moss", 3, steps=30, every=30), learning_rate=1e-2)
    (folder,) = train_group([j], tmp_path, backbone=bb)
    before = {k: v.clone() for k, v in bb.unet.state_dict().items()}
    row = gap_script["gap"](bb, folder / "step-00030.safetensors", images=3, draws=2)
    assert all(torch.equal(before[k], v) for k, v in bb.unet.state_dict().items())
    assert row["micro_dataset"] == "pool:digit-4-moss" and row["size"] == 3 and row["images"] == 3
    assert row["gain_train"] != 0 and row["gap"] == pytest.approx(row["gain_train"] - row["gain_unseen"])
    assert gap_script["main"]([str(tmp_path), "--step", "30", "--images", "2", "--draws", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["size"] == 3


def test_export_pool_images_makes_a_folder_micro_dataset_of_unseen_images(tmp_path):
    from lora_wise.factory import pool
    from lora_wise.factory.micro_datasets import open_micro_dataset

    export = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "export_pool_images.py"))
    assert export["main"](["face", "--start", "64", "--out", str(tmp_path)]) == 0
    md = open_micro_dataset(f"folder:{tmp_path / 'face-from64'}")
    assert (
        md.class_noun == pool.concepts()["face"].class_noun
        and len(md.ids) == len(pool.concept_images("face")) - 64
    )
    first = md.load([md.ids[0]], 64)[0]
    expected = pool.concept_images("face")[64].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    np.testing.assert_allclose(first, expected, atol=1e-6)  # the very pixels, losslessly through PNG
    assert export["main"](["no-such-concept", "--out", str(tmp_path)]) == 2
