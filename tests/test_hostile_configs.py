"""Hostile LoRA configs: pattern keys matched in bounded time, impossible numbers refused in one line."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_wise import InvalidLoraFile, compute_spectra, read_lora
from lora_wise.lora.formats.patterns import MAX_PATTERN_CHARS, PatternMatcher

LONG = "a" * 3000  # a module name on which `(a+)+b` backtracks for longer than the universe has existed


def _peft_folder(tmp_path, config: dict, module: str = LONG):
    folder = tmp_path / "adapter"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tensors = {
        f"base_model.model.{module}.lora_A.weight": rng.standard_normal((2, 6)).astype(np.float32),
        f"base_model.model.{module}.lora_B.weight": rng.standard_normal((5, 2)).astype(np.float32),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, **config}))
    return folder


def _diffusers_file(tmp_path, unet_config: dict, module: str = LONG):
    """A diffusers file whose header carries the config as ``lora_adapter_metadata``."""
    rng = np.random.default_rng(1)
    tensors = {
        f"unet.{module}.lora_A.weight": rng.standard_normal((2, 6)).astype(np.float32),
        f"unet.{module}.lora_B.weight": rng.standard_normal((5, 2)).astype(np.float32),
    }
    meta = {"lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in unet_config.items()})}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("pattern", ["(a+)+b", "(a|aa)+b", "(a*)*b", ".*a.*a.*a.*a.*a.*a.*a.*b", "(a|a?)+b"])
@pytest.mark.parametrize("where", ["adapter_config", "lora_adapter_metadata"])
def test_catastrophic_patterns_finish_at_once(tmp_path, pattern, where):
    config = {"alpha_pattern": {pattern: 8}}
    path = (
        _peft_folder(tmp_path, config)
        if where == "adapter_config"
        else _diffusers_file(tmp_path, {"r": 2, "lora_alpha": 2, **config})
    )
    start = time.perf_counter()
    weights = read_lora(path)
    elapsed = time.perf_counter() - start
    (layer,) = weights.layers.values()
    assert layer.alpha == 2.0  # no match: lora_alpha applies, as PEFT would decide
    assert elapsed < 0.5, f"{elapsed:.2f} s"  # a guard against the hang, not a speed target


def test_matching_patterns_still_apply_their_alpha(tmp_path):
    path = _peft_folder(tmp_path, {"alpha_pattern": {"(a+)+": 8}})
    (layer,) = read_lora(path).layers.values()
    assert layer.alpha == 8.0 and layer.scale == 4.0


NAMES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.proj_in",
    "text_model.encoder.layers.10.self_attn.q_proj",
    "to_q",
    "xto_q",
    "a.b",
]
KEYS = [
    "to_q",
    "attn2.to_k",
    "attn1.to_.",
    r"down_blocks\.\d+\..*to_q",
    "(to_q|to_k)",
    r"layers\.1[0-9]\.self_attn\.q_proj",
    "^down.*",
    "blocks.[01]",
    "to_[qk]$",
    "a{2,5}",
    "[^.]+_q",
    r"ttn\d\.to_q",
    "q_proj$",
    "(?:attn1|attn2)\\.to_(?:q|k)",
    "o_q",
    "axb",
    "a.b",
    r"\w+_in",
    r"[\d]+\.proj_in",
    "(mid|up)_block(s)?.*",
    "x?to_q",
]


@pytest.mark.parametrize("key", KEYS)
def test_matcher_agrees_with_peft_on_ordinary_keys(key):
    matcher = PatternMatcher([key])
    for name in NAMES:
        assert matcher.matches(key, name) == bool(re.match(rf"(.*\.)?({key})$", name)), name


def test_first_match_follows_key_order():
    matcher = PatternMatcher(["attn1.*", "to_q"])
    assert matcher.first_match("down_blocks.0.attn1.to_q") == "attn1.*"
    assert matcher.first_match("down_blocks.0.attn2.to_q") == "to_q"
    assert matcher.first_match("proj_in") is None


@pytest.mark.parametrize(
    "key, match",
    [
        (r"(a)\1", "not a pattern"),  # back-reference: no NFA can run it
        ("(?=a)b", "not a pattern"),  # look-ahead
        ("a{5000}", "states"),
        ("x" * (MAX_PATTERN_CHARS + 1), "characters"),
        ("(", "not a pattern"),
    ],
)
def test_unusable_keys_are_one_line_config_errors(tmp_path, key, match):
    with pytest.raises(InvalidLoraFile, match=match) as info:
        read_lora(_peft_folder(tmp_path, {"alpha_pattern": {key: 4}}, module="to_q"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("r", 1e400),
        ("r", float("nan")),
        ("r", -4),
        ("r", 2.5),
        ("r", "four"),
        ("lora_alpha", 1e400),
        ("lora_alpha", float("nan")),
        ("lora_alpha", -1.0),
        ("lora_alpha", True),
        ("alpha_pattern", {"to_q": 1e400}),
        ("rank_pattern", {"to_q": 1e400}),
        ("rank_pattern", {"to_q": -2}),
        ("rank_pattern", {"to_q": float("nan")}),
        ("alpha_pattern", [1, 2]),
    ],
)
@pytest.mark.parametrize("where", ["adapter_config", "lora_adapter_metadata"])
def test_impossible_numbers_are_config_errors_not_nan_spectra(tmp_path, field, value, where):
    config = {field: value}
    if where == "adapter_config":
        path = _peft_folder(tmp_path, config, module="to_q")
    else:
        path = _diffusers_file(tmp_path, {"r": 2, "lora_alpha": 2, **config}, module="to_q")
    with pytest.raises(InvalidLoraFile, match=field) as info:
        compute_spectra(read_lora(path))
    assert "\n" not in str(info.value)
