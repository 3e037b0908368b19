"""Fuzzing what a hostile file controls: headers, PEFT configs, kohya metadata.

For every generated input, ``read_lora`` + ``compute_spectra`` (and the inspect summary)
either succeed or raise a ``LoraWiseError`` -- never another exception -- within the
hypothesis deadline, under a memory ceiling, and without writing anything.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from lora_wise import compute_spectra, read_lora
from lora_wise.errors import LoraWiseError
from scanner.inspect import describe

FAST = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)),
    deadline=3000,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
MEMORY_CEILING = 256 * 2**20  # far above what these small files need, far below what a blow-up asks for
ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}

MODULES = [
    "lora_unet_mid_block_attentions_0_proj_in",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "base_model.model.to_k",
    "lora_unet_double_blocks_0_img_attn_qkv",
    "transformer.single_blocks.0.linear1",
]
ROLES = [
    "lora_down.weight",
    "lora_up.weight",
    "lora_A.weight",
    "lora_B.weight",
    "alpha",
    "lora_mid.weight",
    "hada_w1_a",
    "hada_w1_b",
    "hada_w2_a",
    "hada_w2_b",
    "hada_t1",
    "lokr_w1",
    "lokr_w1_a",
    "lokr_w1_b",
    "lokr_w2",
    "lokr_w2_a",
    "lokr_w2_b",
    "lokr_t2",
    "dora_scale",
    "weight",
]


def _run(path, watch=None) -> None:
    """The property: success or a LoraWiseError, bounded memory, nothing written in ``watch``."""
    watch = watch or os.path.dirname(path)
    before = sorted(os.listdir(watch))
    tracemalloc.start()
    try:
        weights = read_lora(path)
        compute_spectra(weights)
        json.dumps(describe(weights, raw=True))
    except LoraWiseError as exc:
        assert "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_CEILING, f"{peak / 2**20:.0f} MiB"
    assert sorted(os.listdir(watch)) == before


tensor_entries = st.dictionaries(
    st.builds(lambda m, r: f"{m}.{r}", st.sampled_from(MODULES), st.sampled_from(ROLES)),
    st.tuples(st.sampled_from(sorted(ITEMSIZE)), st.lists(st.integers(0, 40), min_size=0, max_size=4)),
    min_size=1,
    max_size=8,
)


@FAST
@given(
    entries=tensor_entries,
    seed=st.integers(0, 2**16),
    meta=st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=4),
)
def test_fuzzed_headers_with_real_data(tmp_path_factory, entries, seed, meta):
    """Random LoRA-ish names, dtypes and shapes, with data of exactly the declared size."""
    rng = np.random.default_rng(seed)
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape) in entries.items():
        size = math.prod(shape) * ITEMSIZE[dtype]
        blob = (
            rng.standard_normal(size // 4 + 1).astype("<f4").tobytes()[:size]
            if dtype[0] in "FB"
            else rng.bytes(size)
        )
        if dtype.startswith("F8") or dtype == "BF16" or dtype == "F16":
            blob = bytes(b & 0x3F for b in blob)  # keep exponents small: finite values
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        blobs.append(blob)
        offset += size
    header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("h") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    _run(path)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
pattern_keys = st.text(alphabet="a._()+*?|[]{}^$\\0123456789q_to", max_size=24)
peft_configs = st.fixed_dictionaries(
    {},
    optional={
        "r": json_values,
        "lora_alpha": json_values,
        "use_rslora": json_values,
        "use_dora": json_values,
        "alpha_pattern": st.dictionaries(pattern_keys, json_values, max_size=4) | json_values,
        "rank_pattern": st.dictionaries(pattern_keys, json_values, max_size=4) | json_values,
        "target_modules": json_values,
        "task_type": json_values,
        "base_model_name_or_path": json_values,
    },
)


def _adapter(folder, rank=2):
    rng = np.random.default_rng(0)
    name = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {
            f"{name}.lora_A.weight": rng.standard_normal((rank, 8)).astype(np.float32),
            f"{name}.lora_B.weight": rng.standard_normal((6, rank)).astype(np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )


@FAST
@given(config=peft_configs)
def test_fuzzed_peft_configs(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("peft")
    _adapter(folder)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    _run(folder, watch=folder)


KOHYA_KEYS = [
    "ss_datasets",
    "ss_dataset_dirs",
    "ss_tag_frequency",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_num_train_images",
    "ss_bucket_info",
    "ss_base_model_version",
    "modelspec.architecture",
    "lora_adapter_metadata",
    "lora_wise",
    "training_info",
    "ss_steps",
    "ss_clip_skip",
    "software",
]


@FAST
@given(
    meta=st.dictionaries(
        st.sampled_from(KOHYA_KEYS), json_values.map(json.dumps) | st.text(max_size=30), max_size=6
    )
)
def test_fuzzed_kohya_and_diffusers_metadata(tmp_path_factory, meta):
    rng = np.random.default_rng(1)
    base = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path_factory.mktemp("k") / "k.safetensors"
    save_file(
        {
            f"{base}.lora_down.weight": rng.standard_normal((2, 32)).astype(np.float32),
            f"{base}.lora_up.weight": rng.standard_normal((32, 2)).astype(np.float32),
        },
        str(path),
        metadata=meta,
    )
    _run(path)
