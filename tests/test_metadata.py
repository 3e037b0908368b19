"""Declared training metadata: kohya ss_*, modelspec.*, PEFT config, diffusers adapter metadata, lora_wise."""

from __future__ import annotations

import json

import pytest
from reader_helpers import write_diffusers, write_kohya, write_peft_folder

from lora_wise import read_lora
from lora_wise.factory.jobs import TrainJob
from lora_wise.lora.metadata import parse_declared

KOHYA_META = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_num_train_images": "150",  # with repeats: 10×12 + 3×10
    "ss_num_reg_images": "0",
    "ss_dataset_dirs": json.dumps({
        "10_alice": {"n_repeats": 10, "img_count": 12},
        "3_alice closeup": {"n_repeats": 3, "img_count": 10},
    }),
    "ss_steps": "1500",
    "ss_max_train_steps": "1500",
    "ss_num_epochs": "10",
    "ss_epoch": "10",
    "ss_batch_size_per_device": "2",
    "ss_total_batch_size": "2",
    "ss_learning_rate": "0.0001",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_base_model_version": "sd_v1",
    "ss_tag_frequency": json.dumps({"10_alice": {"alice": 12}}),
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "Alice",
    "modelspec.trigger_phrase": "alice person",
}  # fmt: skip


def test_kohya_file_declares_unique_images_not_repeats(tmp_path):
    weights = read_lora(write_kohya(tmp_path / "k.safetensors", metadata=KOHYA_META))
    d = weights.declared
    assert d is not None and d.source == "kohya+modelspec"
    assert d.unique_images == 22 and d.num_train_images == 150
    assert d.repeats == {"10_alice": 10, "3_alice closeup": 3}
    assert (d.steps, d.max_train_steps, d.epochs, d.epoch, d.batch_size) == (1500, 1500, 10, 10, 2)
    assert d.learning_rate == pytest.approx(1e-4)
    assert (d.network_module, d.network_dim, d.network_alpha) == ("networks.lora", 4, 2.0)
    assert d.base_model == "v1-5-pruned-emaonly.safetensors" and d.base_model_version == "sd_v1"
    assert (d.architecture, d.title, d.trigger_phrase) == (
        "stable-diffusion-v1/lora",
        "Alice",
        "alice person",
    )
    assert weights.header_metadata["ss_network_dim"] == "4"


def test_ss_datasets_skips_regularisation_subsets():
    datasets = [{
        "subsets": [
            {"img_count": 7, "num_repeats": 5, "is_reg": False, "image_dir": "cat"},
            {"img_count": 200, "num_repeats": 1, "is_reg": True, "image_dir": "reg"},
        ]
    }, {"subsets": [{"img_count": 3, "num_repeats": 2, "is_reg": False, "image_dir": "dog"}]}]  # fmt: skip
    d = parse_declared({"ss_datasets": json.dumps(datasets), "ss_num_train_images": "41"})
    assert d.unique_images == 10 and d.repeats == {"cat": 5, "dog": 2}


def test_malformed_declared_values_are_skipped_not_fatal():
    d = parse_declared({
        "ss_dataset_dirs": "{broken", "ss_network_dim": "Dynamic", "ss_learning_rate": "nan",
        "ss_steps": "1e400", "ss_datasets": json.dumps([1, "x", {"subsets": "no"}]),
    })  # fmt: skip
    assert d is not None and d.source == "kohya"
    assert d.unique_images is None and d.network_dim is None and d.learning_rate is None and d.steps is None


def test_nothing_declared_is_none(tmp_path):
    weights = read_lora(write_diffusers(tmp_path, text=False))
    assert weights.declared is None


def test_peft_folder_declares_its_config(tmp_path):
    weights = read_lora(write_peft_folder(tmp_path, 4, lora_alpha=8))
    d = weights.declared
    assert d.source == "peft" and d.network_dim == 4 and d.network_alpha == 8
    assert d.target_modules == sorted(["to_q", "to_k", "to_v", "to_out.0"])


def test_diffusers_adapter_metadata_is_declared(tmp_path):
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"])
    weights = read_lora(write_diffusers(tmp_path, text=False, unet_lora_adapter_metadata=config.to_dict()))
    assert weights.declared.source == "peft"
    assert weights.declared.target_modules == ["to_q", "to_v"]


def test_lora_wise_sidecar_key(tmp_path):
    from reader_helpers import save, state_dicts

    job = TrainJob(backbone="tiny-sd", range_name="low", dataset_size=3, micro_dataset="pool:digit-3", rank=4)
    sidecar = {
        "model_id": job.job_id, "job": job.to_dict(), "step": 600, "dataset_size": 3,
        "micro_dataset": job.micro_dataset, "image_ids": ["a", "b", "c"], "backbone": "tiny-sd",
        "rank": 4, "alpha": 4, "recipe": {},
    }  # fmt: skip
    unet, _ = state_dicts(4)
    path = save(tmp_path / "step-00600.safetensors", {f"unet.{k}": v for k, v in unet.items()},
                {"lora_wise": json.dumps(sidecar)})  # fmt: skip
    weights = read_lora(path)
    d = weights.declared
    assert d.source == "lora-wise"
    assert (d.unique_images, d.steps, d.max_train_steps, d.network_dim, d.network_alpha) == (
        3,
        600,
        1400,
        4,
        4.0,
    )
    assert d.base_model == "tiny-sd" and d.extra["micro_dataset"] == "pool:digit-3"
    assert {layer.scale for layer in weights.layers.values()} == {1.0}
    assert weights.backbone.name == "tiny-sd"


@pytest.mark.parametrize(
    "meta, backbone",
    [
        ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
        ({"ss_base_model_version": "sd_v2"}, "sd2"),
        ({"ss_v2": "True"}, "sd2"),
        ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "sdxl"),
        ({"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
        ({"ss_base_model_version": "sd_v1"}, "sd15"),
        ({}, "unknown"),
    ],
)
def test_backbone_from_metadata_when_shapes_say_nothing(tmp_path, meta, backbone):
    import numpy as np
    from reader_helpers import save

    name = "unet.down_blocks.0.resnets.0.time_emb_proj"  # no attn2.to_k: shapes are silent
    tensors = {f"{name}.lora_A.weight": np.ones((2, 5)), f"{name}.lora_B.weight": np.ones((7, 2))}
    weights = read_lora(save(tmp_path / "x.safetensors", tensors, meta))
    assert weights.backbone.name == backbone
    assert weights.backbone.evidence


def test_shapes_beat_metadata_and_the_conflict_is_reported(tmp_path):
    weights = read_lora(
        write_kohya(tmp_path / "k.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    )
    assert weights.backbone.name == "tiny-sd"
    assert any("sdxl" in clue for clue in weights.backbone.evidence)
