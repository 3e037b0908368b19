"""Bad input: one-line typed errors, nothing deserialised, nothing else ever escapes."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reader_helpers import raw_file, save, tiny_valid_file

from lora_wise import InvalidLoraFile, NoLoraWeightsError, UnsafeFormatError, compute_spectra, read_lora
from lora_wise.lora.safetensors_io import MAX_HEADER_BYTES, read_header

NAME = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _expect(path, error=InvalidLoraFile, match=None):
    with pytest.raises(error, match=match) as info:
        read_lora(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    return message


def _write(tmp_path, data: bytes, name="x.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


class _Bomb:
    """Unpickling this would create a marker file: proof that the reader never unpickles."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- pickles ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt", ".pth"])
def test_pickle_suffixes_refused_by_name_even_with_safetensors_content(tmp_path, suffix):
    path = _write(tmp_path, tiny_valid_file(), f"lora{suffix}")
    _expect(path, UnsafeFormatError, "pickle")


def test_pickle_content_refused_by_magic_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = _write(tmp_path, pickle.dumps(_Bomb(marker), protocol=4), "innocent.safetensors")
    _expect(path, UnsafeFormatError)
    assert not marker.exists()


def test_zip_content_refused_by_magic(tmp_path):
    path = tmp_path / "archive.safetensors"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    _expect(path, UnsafeFormatError)


def test_folder_with_only_a_pickle_is_refused(tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFormatError):
        read_lora(tmp_path)


def test_valid_file_whose_first_byte_is_0x80_is_not_taken_for_a_pickle(tmp_path):
    # header length 0x280 = 640: the file starts with 80 02, like a protocol-2 pickle
    data = tiny_valid_file()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n].rstrip() + b" " * (0x280 - n)
    path = _write(tmp_path, struct.pack("<Q", 0x280) + header + data[8 + n :])
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert list(read_lora(path).layers) == [NAME]


# --- malformed containers ---------------------------------------------------------------


def _header(dtype="F32", shape=(2, 3), offsets=(0, 24), extra=None):
    header = {f"{NAME}.lora_A.weight": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}
    header.update(extra or {})
    return header


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "truncated"),
        (b"\x10\x00\x00", "truncated"),
        (struct.pack("<Q", 1000) + b"{}", "larger than the file"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "cap"),
        (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid JSON"),
        (raw_file({"__metadata__": {"a": 1}}), "__metadata__"),
        (raw_file(_header(dtype="Q8")), "dtype"),
        (raw_file(_header(shape=(2, -3))), "shape"),
        (raw_file(_header(shape=(2, True))), "shape"),
        (raw_file(_header(offsets=(0, 24)), b"\x00" * 16), "past the end"),
        (raw_file(_header(offsets=(0, 20)), b"\x00" * 20), "needs 24 bytes"),
        (raw_file(_header(dtype="F16"), b"\x00" * 24), "needs 12 bytes"),
        (raw_file(_header(), b"\x00" * 30), "trailing bytes"),
        (raw_file(_header(offsets=(8, 32)), b"\x00" * 32), "gap"),
        (
            raw_file(
                _header(extra={"b": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}), b"\x00" * 24
            ),
            "overlap",
        ),
        (raw_file(_header(offsets=(24, 0)), b"\x00" * 24), "end before"),
        (raw_file({"x": [1, 2]}), "not an object"),
        (raw_file({"a" * 5000: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}), "characters"),
        (struct.pack("<Q", 4000) + b"[" * 2000 + b"]" * 2000, "not valid JSON"),
    ],
)
def test_malformed_container(tmp_path, data, match):
    _expect(_write(tmp_path, data), InvalidLoraFile, match)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_values_rejected(tmp_path, bad):
    down = np.ones((2, 3), np.float32)
    down[1, 2] = bad
    path = save(
        tmp_path / "x.safetensors", {f"{NAME}.lora_A.weight": down, f"{NAME}.lora_B.weight": np.ones((4, 2))}
    )
    _expect(path, InvalidLoraFile, "NaN or Inf")


def test_rank_mismatch(tmp_path):
    path = save(
        tmp_path / "x.safetensors",
        {f"{NAME}.lora_A.weight": np.ones((2, 3)), f"{NAME}.lora_B.weight": np.ones((4, 3))},
    )
    _expect(path, InvalidLoraFile, "rank mismatch")


@pytest.mark.parametrize("present", ["lora_A", "lora_B"])
def test_unpaired_a_or_b(tmp_path, present):
    path = save(tmp_path / "x.safetensors", {f"{NAME}.{present}.weight": np.ones((2, 2))})
    _expect(path, InvalidLoraFile, "no matching")


def test_zero_lora_layers(tmp_path):
    path = save(tmp_path / "x.safetensors", {"model.layer.weight": np.ones((2, 2))})
    _expect(path, NoLoraWeightsError, "no LoRA layers")


def test_empty_container(tmp_path):
    _expect(_write(tmp_path, raw_file({})), NoLoraWeightsError)


def test_missing_path_and_folders(tmp_path):
    with pytest.raises(InvalidLoraFile, match="no such file"):
        read_lora(tmp_path / "absent.safetensors")
    with pytest.raises(NoLoraWeightsError):
        read_lora(tmp_path)
    _write(tmp_path, tiny_valid_file(), "a.safetensors")
    _write(tmp_path, tiny_valid_file(), "b.safetensors")
    with pytest.raises(InvalidLoraFile, match="pass one file"):
        read_lora(tmp_path)


def test_bad_adapter_config(tmp_path):
    _write(tmp_path, tiny_valid_file(), "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(InvalidLoraFile, match="adapter_config.json"):
        read_lora(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": "lots"}))
    with pytest.raises(InvalidLoraFile, match="config"):
        read_lora(tmp_path)


def test_huge_lokr_gets_exact_spectra_without_allocating_its_dense_update(tmp_path):
    """ΔW = kron(64×64, 100000×100000 of rank 1) would be 3·10¹³ elements; its σ are σ(w1)·‖w2a‖‖w2b‖."""
    import tracemalloc

    kohya = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    w1 = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    path = save(
        tmp_path / "x.safetensors",
        {
            f"{kohya}.lokr_w1": w1,
            f"{kohya}.lokr_w2_a": np.full((100000, 1), 0.5, np.float32),
            f"{kohya}.lokr_w2_b": np.full((1, 100000), 2.0, np.float32),
        },
    )
    tracemalloc.start()
    spectra = compute_spectra(read_lora(path), width=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"
    expected = (
        np.linalg.svd(w1.astype(np.float64), compute_uv=False) * (0.5 * 2.0 * 100000) / 1
    )  # alpha = dim = 1
    np.testing.assert_allclose(spectra.ba[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "shapes, match",
    [
        # w1 and w2 would broadcast to (4096, 4096) under numpy's `*`; LyCORIS never broadcasts
        ({"hada_w1_a": (4096, 1), "hada_w1_b": (1, 1), "hada_w2_a": (1, 1), "hada_w2_b": (1, 4096)}, "w1 is"),
        # equal shapes, but the dense update (inner 64·64 ≥ min side) would be 3·10¹⁰ elements
        (
            {
                "hada_w1_a": (180000, 64),
                "hada_w1_b": (64, 180000),
                "hada_w2_a": (1, 64),
                "hada_w2_b": (64, 1),
            },
            "w1 is",
        ),
        (
            {
                "hada_w1_a": (2**14, 128),
                "hada_w1_b": (128, 2**14),
                "hada_w2_a": (2**14, 128),
                "hada_w2_b": (128, 2**14),
            },
            "cap",
        ),
        (
            {"hada_w1_a": (8, 2), "hada_w1_b": (3, 8), "hada_w2_a": (8, 2), "hada_w2_b": (2, 8)},
            "do not multiply",
        ),
    ],
)
def test_loha_factors_that_broadcast_or_explode_are_refused_before_allocating(tmp_path, shapes, match):
    kohya = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{kohya}.{role}": np.zeros(shape, np.float16) for role, shape in shapes.items()}
    _expect(save(tmp_path / "x.safetensors", tensors), InvalidLoraFile, match)


def test_header_is_checked_before_safetensors_sees_the_file(tmp_path):
    # read_header alone, on a file whose data region lies about its size
    path = _write(tmp_path, raw_file(_header(), b"\x00" * 8))
    with pytest.raises(InvalidLoraFile):
        read_header(path)


# --- property tests: only the documented error types may come out -----------------------

ALLOWED = (InvalidLoraFile, NoLoraWeightsError)
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _only_documented_errors(path):
    try:
        read_lora(path)
    except ALLOWED as exc:
        assert "\n" not in str(exc)


@_SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes(tmp_path, data):
    _only_documented_errors(_write(tmp_path, data))


@_SETTINGS
@given(
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_mutated_valid_files(tmp_path, flips, cut):
    data = bytearray(tiny_valid_file())
    for position, value in flips:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _only_documented_errors(_write(tmp_path, bytes(data)))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@_SETTINGS
@given(
    key=st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", f"{NAME}.lora_B.weight"]),
    value=_json_values,
)
def test_mutated_headers(tmp_path, key, value):
    data = tiny_valid_file()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    if key in ("__metadata__", f"{NAME}.lora_B.weight"):
        header[key] = value
    else:
        header[f"{NAME}.lora_A.weight"][key] = value
    _only_documented_errors(_write(tmp_path, raw_file(header, data[8 + n :])))


@_SETTINGS
@given(
    names=st.lists(
        st.sampled_from(
            [
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                "unet.mid_block.attentions.0.proj_out",
                "lora_te2_text_model_encoder_layers_0_mlp_fc1",
                "unet:0",
                "text_encoder:3",
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
                "lora_unet_double_blocks_0_img_attn_qkv",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    suffixes=st.lists(
        st.sampled_from(
            [
                ".lora_down.weight",
                ".lora_up.weight",
                ".alpha",
                ".dora_scale",
                ".hada_w1_a",
                ".hada_w2_b",
                ".lokr_w1",
                ".lokr_w2_a",
                ".lora_mid.weight",
                ".lora_A.weight",
                ":up",
                ":down",
                "_lora_down.weight",
            ]
        ),
        min_size=1,
        max_size=4,
    ),
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=4), min_size=1, max_size=4),
)
def test_random_key_and_shape_soup(tmp_path, names, suffixes, shapes):
    tensors = {}
    for i, suffix in enumerate(suffixes):
        tensors[names[i % len(names)] + suffix] = np.ones(shapes[i % len(shapes)], np.float32)
    _only_documented_errors(save(tmp_path / "x.safetensors", tensors))


@_SETTINGS
@given(
    prefix=st.sampled_from(
        ["lora_unet_", "lora_te_", "lora_te2_", "lora_unet_unet_", "unet.", "base_model.model.", ""]
    ),
    body=st.lists(
        st.sampled_from(
            [
                "input",
                "output",
                "middle",
                "blocks",
                "block",
                "0",
                "1",
                "4",
                "99",
                "attn2",
                "to",
                "k",
                "emb",
                "layers",
                "out",
                "in",
                "transformer",
                "double",
                "op",
                "skip",
                "connection",
                "",
                "x",
            ]
        ),
        min_size=1,
        max_size=9,
    ),
    sep=st.sampled_from(["_", "."]),
    role=st.sampled_from([".lora_down.weight", ".lora_A.weight", "_lora.down.weight", ".hada_w1_a"]),
)
def test_random_module_names_through_the_name_converters(tmp_path, prefix, body, sep, role):
    module = prefix + sep.join(body)
    tensors = {module + role: np.ones((2, 3), np.float32)}
    tensors[module + role.replace("down", "up").replace("_A", "_B").replace("w1_a", "w1_b")] = np.ones(
        (4, 2), np.float32
    )
    _only_documented_errors(save(tmp_path / "x.safetensors", tensors))


def test_os_errors_become_one_line_input_errors(tmp_path):
    with pytest.raises(InvalidLoraFile, match="cannot be read"):
        read_lora(tmp_path / ("a" * 300 + ".safetensors"))  # ENAMETOOLONG
