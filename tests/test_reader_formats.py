"""read_lora on real files of every published format: same weights -> same names and spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reader_helpers import (
    cloneofsimo_order,
    kohya_state,
    save,
    state_dicts,
    write_cloneofsimo,
    write_diffusers,
    write_kohya,
    write_locon,
    write_loha,
    write_lokr,
    write_lora_down_up,
    write_mangled,
    write_old_processor,
    write_peft_folder,
)

from lora_wise import compute_spectra, read_lora
from lora_wise.lora.formats.cloneofsimo import unet_order

RANK = 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    return {
        "diffusers": write_diffusers(d / "diffusers", RANK),
        "peft": write_peft_folder(d / "peft", RANK),
        "kohya": write_kohya(d / "kohya.safetensors", RANK),
        "diffusers-old": write_old_processor(d / "old.safetensors", RANK),
        "lora.down": write_lora_down_up(d / "lora_down.safetensors", RANK),
        "mangled": write_mangled(d / "mangled.safetensors", RANK),
        "cloneofsimo": write_cloneofsimo(d / "clone.safetensors", RANK),
    }


@pytest.fixture(scope="module")
def reference(files):
    return read_lora(files["diffusers"])


def _unet_rows(spectra):
    rows = [i for i, name in enumerate(spectra.layers) if name.startswith("unet.")]
    return (
        [spectra.layers[i] for i in rows],
        spectra.a[rows],
        spectra.b[rows],
        spectra.ba[rows],
        spectra.fro[rows],
    )


def test_diffusers_file_gives_canonical_names_and_components(reference):
    assert reference.format == "diffusers"
    assert reference.components == {"text_encoder": 8, "unet": 128}
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in reference.layers
    assert "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0" in reference.layers
    assert "text_encoder.text_model.encoder.layers.1.self_attn.q_proj" in reference.layers
    assert reference.rank == RANK
    assert all(layer.scale == 1.0 and layer.kind == "lora" for layer in reference.layers.values())
    # tiny SD1.5-shaped model: 32-wide cross attention
    assert reference.backbone.name == "tiny-sd"
    assert any("width 32" in clue for clue in reference.backbone.evidence)


@pytest.mark.parametrize(
    "fmt, label",
    [
        ("peft", "peft"),
        ("kohya", "kohya"),
        ("diffusers-old", "diffusers-old"),
        ("lora.down", "diffusers"),
        ("mangled", "mangled"),
        ("cloneofsimo", "cloneofsimo"),
    ],
)
def test_every_format_of_the_same_weights_gives_the_same_spectra(files, reference, fmt, label):
    weights = read_lora(files[fmt])
    assert weights.format == label
    expected = _unet_rows(compute_spectra(reference))
    got = _unet_rows(compute_spectra(weights))
    assert got[0] == expected[0]
    for mine, theirs in zip(got[1:], expected[1:], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-9)


def test_kohya_text_encoder_names_match_diffusers(files, reference):
    kohya = read_lora(files["kohya"])
    assert sorted(kohya.layers) == sorted(reference.layers)
    np.testing.assert_allclose(compute_spectra(kohya).ba, compute_spectra(reference).ba, rtol=1e-6)


def test_spectra_equal_full_svd_of_dense_delta(reference):
    spectra = compute_spectra(reference)
    for row, name in enumerate(spectra.layers):
        layer = reference.layers[name]
        delta = layer.scale * layer.up.astype(np.float64) @ layer.down.astype(np.float64)
        full = np.linalg.svd(delta, compute_uv=False)[: spectra.width]
        np.testing.assert_allclose(spectra.ba[row, : len(full)], full, rtol=1e-6)
        assert spectra.fro[row] == pytest.approx(np.linalg.norm(delta), rel=1e-6)


@pytest.mark.parametrize("dtype, label", [(torch.float16, "F16"), (torch.bfloat16, "BF16")])
def test_half_precision_files_read_as_their_rounded_values(tmp_path, dtype, label):
    weights = read_lora(write_diffusers(tmp_path, RANK, dtype=dtype))
    assert weights.dtype == label
    unet, _ = state_dicts(RANK)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = weights.layers[f"unet.{key}"]
    np.testing.assert_array_equal(layer.down, unet[f"{key}.lora_A.weight"].to(dtype).float().numpy())
    np.testing.assert_array_equal(layer.up, unet[f"{key}.lora_B.weight"].to(dtype).float().numpy())


def test_cloneofsimo_layout_matches_a_real_model_walk():
    # the reader rebuilds lora_diffusion's order from the layout; the helper walks a real UNet
    assert unet_order(False) == cloneofsimo_order(False)
    assert unet_order(True) == cloneofsimo_order(True)


def test_cloneofsimo_skips_token_embeddings_with_a_warning(files):
    weights = read_lora(files["cloneofsimo"])
    assert any("<s1>" in w for w in weights.warnings)


# --- scale rules ------------------------------------------------------------------------


def test_kohya_alpha_scales_and_missing_alpha_means_dim(tmp_path, reference):
    half = read_lora(write_kohya(tmp_path / "half.safetensors", RANK, alpha=RANK / 2))
    none = read_lora(write_kohya(tmp_path / "none.safetensors", RANK, drop_alpha=True))
    name = "unet.up_blocks.2.attentions.1.transformer_blocks.0.attn1.to_v"
    assert half.layers[name].scale == pytest.approx(0.5) and half.layers[name].alpha == pytest.approx(2.0)
    assert none.layers[name].scale == 1.0 and none.layers[name].alpha == RANK
    np.testing.assert_allclose(compute_spectra(half).ba, compute_spectra(reference).ba / 2, rtol=1e-6)


def test_peft_alpha_rslora_and_alpha_pattern(tmp_path):
    plain = read_lora(write_peft_folder(tmp_path / "a", RANK, lora_alpha=8))
    rs = read_lora(write_peft_folder(tmp_path / "b", RANK, lora_alpha=8, use_rslora=True))
    pattern = read_lora(
        write_peft_folder(tmp_path / "c", RANK, lora_alpha=8, alpha_pattern={"attn2.to_k": 2})
    )
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    k2 = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    assert plain.layers[q].scale == pytest.approx(2.0)
    assert rs.layers[q].scale == pytest.approx(8 / np.sqrt(RANK))
    assert pattern.layers[k2].scale == pytest.approx(0.5) and pattern.layers[q].scale == pytest.approx(2.0)
    assert plain.declared is not None and plain.declared.network_alpha == 8
    assert plain.declared.target_modules == sorted(["to_q", "to_k", "to_v", "to_out.0"])


def test_peft_rank_pattern_uses_each_layers_own_rank(tmp_path):
    from peft import get_peft_model
    from reader_helpers import lora_config, randomise_lora, tiny_unet

    config = lora_config(
        RANK, ["to_q", "to_k", "to_v", "to_out.0"], lora_alpha=8, rank_pattern={"attn2.to_k": 2}
    )
    model = get_peft_model(tiny_unet(), config)
    randomise_lora(model, 0)
    model.save_pretrained(tmp_path)
    weights = read_lora(tmp_path)
    k2 = weights.layers["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"]
    q = weights.layers["unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert (k2.rank, k2.scale) == (2, 4.0) and (q.rank, q.scale) == (RANK, 2.0)
    assert weights.rank == RANK


def test_diffusers_adapter_metadata_sets_scale(tmp_path):
    from peft import LoraConfig

    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    path = write_diffusers(tmp_path, RANK, text=False, unet_lora_adapter_metadata=config.to_dict())
    weights = read_lora(path)
    assert {layer.scale for layer in weights.layers.values()} == {2.0}


# --- DoRA, LoCon, LoHa, LoKr ------------------------------------------------------------


def test_peft_dora_keeps_magnitude_and_warns(tmp_path):
    weights = read_lora(write_peft_folder(tmp_path, RANK, use_dora=True))
    assert weights.format == "dora"
    layer = weights.layers["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert layer.kind == "dora" and layer.low_rank and layer.dora_scale.shape == (32,)
    assert any("DoRA" in w for w in weights.warnings)


def test_kohya_dora_scale(tmp_path):
    state = kohya_state(RANK, text=False)
    downs = [k for k in state if k.endswith("lora_down.weight")]
    for key in downs:
        state[key.replace("lora_down.weight", "dora_scale")] = torch.ones(1, state[key].shape[1])
    weights = read_lora(save(tmp_path / "dora.safetensors", state))
    assert weights.format == "dora" and len(weights.layers) == 128
    assert {layer.kind for layer in weights.layers.values()} == {"dora"}


def test_locon_conv_layers_are_flattened(tmp_path):
    path, deltas = write_locon(tmp_path / "locon.safetensors")
    weights = read_lora(path)
    assert weights.format == "locon"
    conv = weights.layers["unet.down_blocks.0.resnets.0.conv1"]
    assert conv.kind == "conv" and conv.down.shape == (4, 32 * 9) and conv.up.shape == (32, 4)
    assert conv.scale == pytest.approx(0.5)
    spectra = compute_spectra(weights)
    names = {
        "lora_unet_down_blocks_0_resnets_0_conv1": "unet.down_blocks.0.resnets.0.conv1",
        "lora_unet_up_blocks_1_resnets_2_conv2": "unet.up_blocks.1.resnets.2.conv2",
        "lora_unet_down_blocks_1_attentions_0_proj_in": "unet.down_blocks.1.attentions.0.proj_in",
    }
    for kohya, canonical in names.items():
        row = spectra.layers.index(canonical)
        full = np.linalg.svd(deltas[kohya], compute_uv=False)[:4]
        np.testing.assert_allclose(spectra.ba[row, :4], full, rtol=1e-6)


SHAPES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (32, 32),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0": (64, 64),
}


@pytest.mark.parametrize("writer, kind", [(write_loha, "loha"), (write_lokr, "lokr")])
def test_loha_lokr_factors_give_the_dense_delta_and_its_spectrum(tmp_path, writer, kind):
    path, deltas = writer(tmp_path / f"{kind}.safetensors", SHAPES)
    weights = read_lora(path)
    assert weights.format == kind
    assert any("LyCORIS factors" in w for w in weights.warnings)
    spectra = compute_spectra(weights)
    assert not spectra.low_rank.any()
    for kohya, delta in deltas.items():
        canonical = {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
            ),
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0": (
                "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"
            ),
        }[kohya]
        layer = weights.layers[canonical]
        assert layer.kind == kind and layer.down is None
        np.testing.assert_allclose(layer.dense() * layer.scale, delta, rtol=1e-5, atol=1e-5)
        row = spectra.layers.index(canonical)
        full = np.linalg.svd(delta, compute_uv=False)[: spectra.width]
        # ΔW is stored float32, so compare against the top singular value's scale
        np.testing.assert_allclose(spectra.ba[row, : len(full)], full, rtol=1e-5, atol=1e-6 * full[0])


# --- SDXL / SD2 / SD1.5 / Flux naming and fingerprints ----------------------------------


def _lowrank(rng, d, k, r=2):
    return rng.standard_normal((r, k)).astype(np.float32), rng.standard_normal((d, r)).astype(np.float32)


def test_sdxl_kohya_sgm_names_and_text_encoders(tmp_path):
    rng = np.random.default_rng(0)
    modules = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
        "lora_unet_input_blocks_7_1_transformer_blocks_1_attn1_to_q": (1280, 1280),
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v": (1280, 2048),
        "lora_unet_output_blocks_5_1_transformer_blocks_0_attn1_to_out_0": (640, 640),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj": (1280, 1280),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": (5120, 1280),
    }
    tensors = {}
    for kohya, (d, k) in modules.items():
        down, up = _lowrank(rng, d, k)
        tensors |= {
            f"{kohya}.lora_down.weight": down,
            f"{kohya}.lora_up.weight": up,
            f"{kohya}.alpha": np.float32(1),
        }
    weights = read_lora(save(tmp_path / "sdxl.safetensors", tensors))
    assert sorted(weights.layers) == sorted(
        [
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            "unet.down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q",
            "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
            "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_out.0",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
            "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj",
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1",
        ]
    )
    assert weights.backbone.name == "sdxl"
    assert weights.layers["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"].scale == 0.5


@pytest.mark.parametrize("width, backbone", [(768, "sd15"), (1024, "sd2"), (2048, "sdxl"), (32, "tiny-sd")])
def test_cross_attention_width_fingerprint(tmp_path, width, backbone):
    rng = np.random.default_rng(1)
    down, up = _lowrank(rng, 320, width)
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    path = save(tmp_path / "x.safetensors", {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
    weights = read_lora(path)
    assert weights.backbone.name == backbone
    assert any(str(width) in clue for clue in weights.backbone.evidence)


def test_flux_kohya_names_kept_under_transformer(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {}
    for kohya, (d, k) in {
        "lora_unet_double_blocks_0_img_attn_qkv": (96, 32),
        "lora_unet_single_blocks_3_linear1": (64, 32),
    }.items():
        down, up = _lowrank(rng, d, k)
        tensors |= {f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up}
    weights = read_lora(save(tmp_path / "flux.safetensors", tensors, {"ss_base_model_version": "flux1"}))
    assert sorted(weights.layers) == [
        "transformer.double_blocks.0.img_attn.qkv",
        "transformer.single_blocks.3.linear1",
    ]
    assert weights.backbone.name == "flux"


def test_dotted_sgm_names_and_t5_only_text_encoder(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {}
    for module, (d, k) in {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k": (640, 2048),
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (64, 64),
    }.items():
        down, up = _lowrank(rng, d, k)
        tensors |= {f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up}
    weights = read_lora(save(tmp_path / "x.safetensors", tensors))
    assert sorted(weights.layers) == [
        "text_encoder_3.encoder.block.0.layer.0.SelfAttention.q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    ]
    assert weights.backbone.name == "sdxl"  # the 2048-wide cross attention; T5 alone decides nothing
    assert any("T5" in clue for clue in weights.backbone.evidence)


def _sdxl_kohya_tensors():
    rng = np.random.default_rng(4)
    modules = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
        "lora_unet_input_blocks_8_1_transformer_blocks_3_attn1_to_v": (1280, 1280),
        "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_out_0": (1280, 1280),
        "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_q": (1280, 1280),
        "lora_unet_output_blocks_8_1_transformer_blocks_1_attn2_to_v": (640, 2048),
        "lora_te1_text_model_encoder_layers_3_self_attn_v_proj": (768, 768),
        "lora_te2_text_model_encoder_layers_5_self_attn_out_proj": (1280, 1280),
    }
    tensors = {}
    for kohya, (d, k) in modules.items():
        down, up = _lowrank(rng, d, k)
        tensors |= {
            f"{kohya}.lora_down.weight": torch.from_numpy(down),
            f"{kohya}.lora_up.weight": torch.from_numpy(up),
        }
    return tensors


def test_kohya_names_agree_with_diffusers_own_lora_state_dict(tmp_path):
    """Cross-check against the whole diffusers loading path (SDXL pipeline, real SDXL unet_config)."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionXLPipeline

    from lora_wise.lora.formats.keys import split_key
    from lora_wise.lora.formats.naming import canonical_dotted

    tensors = _sdxl_kohya_tensors()
    converted, _ = StableDiffusionXLPipeline.lora_state_dict(
        dict(tensors), unet_config=SimpleNamespace(layers_per_block=2)
    )
    theirs = sorted({canonical_dotted(split_key(key)[0]) for key in converted})
    mine = sorted(read_lora(save(tmp_path / "sdxl.safetensors", tensors)).layers)
    assert mine == theirs


def _cp_by_loops(t, wa, wb):
    """Tucker rebuild written out the slow way: ΔW[o, i, k, l] = Σ_a Σ_b t[a, b, k, l] wa[a, o] wb[b, i]."""
    dim, _, kh, kw = t.shape
    out = np.zeros((wa.shape[1], wb.shape[1], kh, kw))
    for a in range(dim):
        for b in range(dim):
            out += t[a, b][None, None] * np.outer(wa[a], wb[b])[:, :, None, None]
    return out


def test_tucker_conv_layers_loha_and_locon_mid(tmp_path):
    rng = np.random.default_rng(5)
    dim, o, i = 2, 6, 5
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    t1, w1a, w1b, t2, w2a, w2b = (
        f(dim, dim, 3, 3),
        f(dim, o),
        f(dim, i),
        f(dim, dim, 3, 3),
        f(dim, o),
        f(dim, i),
    )
    loha = "lora_unet_down_blocks_0_resnets_0_conv1"
    up, mid, down = f(o, dim, 1, 1), f(dim, dim, 3, 3), f(dim, i, 1, 1)
    locon = "lora_unet_down_blocks_0_resnets_1_conv2"
    tensors = {
        f"{loha}.hada_t1": t1,
        f"{loha}.hada_w1_a": w1a,
        f"{loha}.hada_w1_b": w1b,
        f"{loha}.hada_t2": t2,
        f"{loha}.hada_w2_a": w2a,
        f"{loha}.hada_w2_b": w2b,
        f"{loha}.alpha": np.float32(1),
        f"{locon}.lora_up.weight": up,
        f"{locon}.lora_mid.weight": mid,
        f"{locon}.lora_down.weight": down,
    }
    weights = read_lora(save(tmp_path / "tucker.safetensors", tensors))
    expected_loha = (_cp_by_loops(t1, w1a, w1b) * _cp_by_loops(t2, w2a, w2b)).reshape(o, -1) * 0.5
    got = weights.layers["unet.down_blocks.0.resnets.0.conv1"]
    np.testing.assert_allclose(got.dense() * got.scale, expected_loha, rtol=1e-4, atol=1e-5)
    # LoCon Tucker: ΔW[o, i] = Σ up[o, a] mid[a, b, k, l] down[b, i]
    expected_locon = np.zeros((o, i, 3, 3))
    for a in range(dim):
        for b in range(dim):
            expected_locon += (
                np.outer(up[:, a, 0, 0], down[b, :, 0, 0])[:, :, None, None] * mid[a, b][None, None]
            )
    got = weights.layers["unet.down_blocks.0.resnets.1.conv2"]
    assert got.kind == "full" and got.scale == 1.0
    np.testing.assert_allclose(got.dense(), expected_locon.reshape(o, -1), rtol=1e-4, atol=1e-5)
