"""Everything a file declares, read typed; impossible or contradicting declarations become warnings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from reader_helpers import write_kohya
from safetensors.numpy import save_file

from lora_wise import compute_spectra, read_lora
from lora_wise.lora.checks import declared_conflicts, non_image_adapter
from scanner.inspect import describe, inspect_path

TAGS = {
    "10_alice": {"alice": 12, "smile": 5, "outdoors": 7, " hat": 1},
    "3_closeup": {"alice": 10, "face": 10},
}
INSPECTOR_META = {  # the kohya fields lora-inspector shows
    "ss_network_dim": "4",
    "ss_network_alpha": "4",
    "ss_dataset_dirs": json.dumps(
        {"10_alice": {"n_repeats": 10, "img_count": 12}, "3_closeup": {"n_repeats": 3, "img_count": 10}}
    ),
    "ss_num_train_images": "150",
    "ss_tag_frequency": json.dumps(TAGS),
    "ss_noise_offset": "0.0357",
    "ss_min_snr_gamma": "5.0",
    "ss_clip_skip": "2",
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    "ss_lr_scheduler": "cosine_with_restarts",
    "ss_output_name": "alice_v2",
    "ss_resolution": "(512, 512)",
    "ss_enable_bucket": "True",
    "ss_min_bucket_reso": "256",
    "ss_max_bucket_reso": "1024",
    "ss_bucket_no_upscale": "False",
    "ss_bucket_info": json.dumps(
        {"buckets": {"0": {"resolution": [512, 512], "count": 220}}, "mean_img_ar_error": 0.03}
    ),
}


def test_lora_inspector_fields_are_typed(tmp_path):
    weights = read_lora(write_kohya(tmp_path / "k.safetensors", metadata=INSPECTOR_META))
    d = weights.declared
    assert d.unique_images == 22 and d.num_train_images == 150
    assert (d.noise_offset, d.min_snr_gamma, d.clip_skip) == (0.0357, 5.0, 2)
    assert (d.optimizer, d.lr_scheduler, d.output_name, d.resolution) == (
        "bitsandbytes.optim.adamw.AdamW8bit",
        "cosine_with_restarts",
        "alice_v2",
        "(512, 512)",
    )
    assert d.tag_frequency["10_alice"] == {"alice": 12, "smile": 5, "outdoors": 7, "hat": 1}
    assert d.top_tags == {"10_alice": ["alice", "outdoors", "smile", "hat"], "3_closeup": ["alice", "face"]}
    assert (
        d.buckets["enabled"] == "True"
        and d.buckets["max_reso"] == "1024"
        and d.buckets["mean_img_ar_error"] == 0.03
    )
    assert weights.header_metadata == INSPECTOR_META  # the raw header, every key as stored
    assert describe(weights, raw=True)["raw_metadata"] == INSPECTOR_META
    assert declared_conflicts(weights) == []  # an honest kohya file: nothing to flag


def test_ai_toolkit_training_info(tmp_path):
    meta = {
        "training_info": json.dumps({"step": 2500, "epoch": 3}),
        "name": "my_flux_lora",
        "software": json.dumps({"name": "ai-toolkit", "version": "0.1.0"}),
    }
    d = read_lora(write_kohya(tmp_path / "a.safetensors", metadata=meta)).declared
    assert (d.steps, d.epoch, d.output_name) == (2500, 3, "my_flux_lora") and "ai-toolkit" in d.source


@pytest.mark.parametrize("subsets", [5, True, "x", {"img_count": 3}])
def test_ss_datasets_with_a_non_list_subsets_is_a_warning(tmp_path, subsets):
    meta = {
        "ss_datasets": json.dumps([{"subsets": subsets}, {"subsets": [{"img_count": 4, "image_dir": "d"}]}])
    }
    weights = read_lora(write_kohya(tmp_path / "k.safetensors", metadata=meta))
    assert weights.declared.unique_images == 4
    assert any("'subsets' is a" in w for w in weights.warnings)


def test_negative_img_count_is_a_warning_not_negative_images(tmp_path):
    meta = {"ss_dataset_dirs": json.dumps({"a": {"n_repeats": 1, "img_count": -40}, "b": {"img_count": 5}})}
    weights = read_lora(write_kohya(tmp_path / "k.safetensors", metadata=meta))
    assert weights.declared.unique_images is None or weights.declared.unique_images >= 0
    assert any("negative" in w for w in weights.warnings)
    datasets = json.dumps(
        [{"subsets": [{"img_count": -3, "image_dir": "x"}, {"img_count": 6, "image_dir": "y"}]}]
    )
    weights = read_lora(write_kohya(tmp_path / "d.safetensors", metadata={"ss_datasets": datasets}))
    assert weights.declared.unique_images == 6 and any("negative" in w for w in weights.warnings)


@pytest.mark.parametrize("value", ["1e400", "nan", "-inf"])
def test_non_finite_declared_numbers_are_left_out(tmp_path, value):
    meta = {
        "ss_network_alpha": value,
        "ss_learning_rate": value,
        "ss_noise_offset": value,
        "ss_num_train_images": value,
    }
    d = read_lora(write_kohya(tmp_path / "k.safetensors", metadata=meta)).declared
    assert (d.network_alpha, d.learning_rate, d.noise_offset, d.num_train_images) == (None, None, None, None)


def test_a_non_utf8_file_name_is_read_not_called_corrupt(tmp_path):
    good = write_kohya(tmp_path / "good.safetensors")
    name = os.fsencode(tmp_path) + b"/caf\xe9-\xff.safetensors"  # Latin-1 bytes, not UTF-8
    with open(good, "rb") as src, open(name, "wb") as dst:
        dst.write(src.read())
    path = os.fsdecode(name)
    spectra = compute_spectra(read_lora(path))
    assert np.array_equal(spectra.ba, compute_spectra(read_lora(good)).ba)
    json.dumps(inspect_path(path))  # the summary serialises
    os.truncate(name, 100)
    with pytest.raises(Exception, match=r"caf\\xe9-\\xff") as info:  # the message names it, printably
        read_lora(path)
    str(info.value).encode("utf-8")


def _flux_file(tmp_path, meta):
    rng = np.random.default_rng(0)
    tensors = {}
    for kohya, (d, k) in {
        "lora_unet_double_blocks_0_img_attn_qkv": (96, 32),
        "lora_unet_single_blocks_3_linear1": (64, 32),
    }.items():
        tensors |= {
            f"{kohya}.lora_down.weight": rng.standard_normal((4, k)).astype(np.float32),
            f"{kohya}.lora_up.weight": rng.standard_normal((d, 4)).astype(np.float32),
        }
    path = tmp_path / "flux.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


def test_declared_sd15_on_flux_weights_is_flagged(tmp_path):
    weights = read_lora(_flux_file(tmp_path, {"ss_base_model_version": "sd_v1"}))
    assert weights.backbone.name == "flux"
    assert any("declares sd15" in w and "flux" in w for w in weights.conflicts)
    assert not read_lora(_flux_file(tmp_path, {"ss_base_model_version": "flux1"})).conflicts


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"ss_network_dim": "0"}, "impossible"),
        ({"ss_network_dim": "100000"}, "impossible"),
        ({"ss_network_dim": "16"}, "but the layers have rank 4"),
        ({"ss_dataset_dirs": json.dumps({"a": {"img_count": 0}})}, "0 training images"),
        (
            {
                "ss_dataset_dirs": json.dumps({"a": {"n_repeats": 10, "img_count": 50}}),
                "ss_num_train_images": "20",
            },
            "distinct images but only 20",
        ),
    ],
)
def test_impossible_declared_rank_and_image_counts_are_flagged(tmp_path, meta, match):
    weights = read_lora(write_kohya(tmp_path / "k.safetensors", rank=4, metadata=meta))
    assert any(match in w for w in weights.conflicts), weights.conflicts


def _t5_adapter(tmp_path, task_type):
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q", "v"], task_type=task_type))
    peft_model.save_pretrained(str(tmp_path / "t5"))
    return tmp_path / "t5"


@pytest.mark.parametrize("task_type", [None, "FEATURE_EXTRACTION"])
def test_a_t5_peft_adapter_is_reported_as_such(tmp_path, task_type):
    weights = read_lora(_t5_adapter(tmp_path, task_type))
    what = non_image_adapter(weights)
    assert what is not None and ("T5" in what or "language model" in what)
    assert any("not an image model's adapter" in w for w in weights.warnings)
    assert non_image_adapter(read_lora(write_kohya(tmp_path / "k.safetensors"))) is None


def test_a_declared_base_model_the_weights_contradict_is_a_finding_and_lora_scan_exits_1(tmp_path, capsys):
    from contract_helpers import valid_envelope

    from lora_wise.cli.tools import run
    from scanner.cli import cli

    path = _flux_file(tmp_path, {"ss_base_model_version": "sd_v1"})
    assert run(cli, [str(path), "--json"]) == 1
    report = valid_envelope(capsys.readouterr().out)["reports"][0]
    assert any("declares sd15" in f for f in report["findings"]) and report["exit_code"] == 1
    (tmp_path / "honest").mkdir()
    honest = _flux_file(tmp_path / "honest", {"ss_base_model_version": "flux1"})
    assert run(cli, ["inspect", str(honest), "--json"]) == 0


def _tiny_file(tmp_path, meta):
    """A tiny-sd-shaped UNet LoRA (cross-attention input width 32) with the given metadata."""
    rng = np.random.default_rng(3)
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    tensors = {f"{name}.lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32),
               f"{name}.lora_B.weight": rng.standard_normal((32, 4)).astype(np.float32)}  # fmt: skip
    path = tmp_path / "tiny.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "meta",
    [{"lora_wise": json.dumps({"backbone": "tiny-sd-v2"})}, {"ss_base_model_version": "tiny_sd_v2"}],
)
def test_a_same_shaped_variant_named_by_metadata_refines_the_shape_verdict(tmp_path, meta):
    weights = read_lora(_tiny_file(tmp_path, meta))
    assert weights.backbone.name == "tiny-sd-v2"  # shapes say tiny-sd; only metadata tells v2 apart
    assert not weights.conflicts
    assert any("tiny-sd-v2 has tiny-sd's shapes" in clue for clue in weights.backbone.evidence)


def test_without_metadata_the_variant_cannot_be_told_and_another_family_still_conflicts(tmp_path):
    assert read_lora(_tiny_file(tmp_path, {})).backbone.name == "tiny-sd"
    weights = read_lora(_tiny_file(tmp_path, {"ss_base_model_version": "sd_v1"}))
    assert weights.backbone.name == "tiny-sd"
    assert any("declares sd15" in w for w in weights.conflicts)
