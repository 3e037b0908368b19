"""The batched DreamBooth-LoRA trainer: exact per job, the factory's format, diffusers-loadable."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import assert_same_lora, job, tiny, train_alone_reference

from lora_wise.factory.train import train_group


def test_group_of_three_equals_each_job_trained_alone_with_peft(tmp_path):
    # one with its own seed (init, noise, order): a group may mix seeds, as a leak run's victims do
    jobs = [job("pool:digit-3-ink", 1), replace(job("pool:face", 4), seed=7), job("pool:photo-coffee", 2)]
    train_group(jobs, tmp_path, backbone=tiny())
    for j in jobs:
        ref = train_alone_reference(j, tiny())
        got = load_file(tmp_path / j.job_id / "step-00020.safetensors")
        assert_same_lora(got, ref)
    # the jobs really differ from each other (only their images differ)
    a = load_file(tmp_path / jobs[0].job_id / "step-00020.safetensors")
    b = load_file(tmp_path / jobs[1].job_id / "step-00020.safetensors")
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
    assert (a[key] - b[key]).abs().max() >= 100 * 0.01 * 1e-4


def test_short_last_batches_are_masked_exactly(tmp_path):
    # batch 2 over 3 images: every other step has one real row and one padding row
    jobs = [
        job("pool:nonface", 3, steps=6, every=3, batch=2),
        job("pool:digit-0-moss", 1, steps=6, every=3, batch=2),
    ]
    train_group(jobs, tmp_path, backbone=tiny())
    for j in jobs:
        assert_same_lora(
            load_file(tmp_path / j.job_id / "step-00006.safetensors"), train_alone_reference(j, tiny())
        )


def test_factory_format_and_resume(tmp_path):
    j = job("pool:digit-5-sun", 3, steps=20, every=10)
    calls = []
    (folder,) = train_group([j], tmp_path, progress=lambda s, n: calls.append((s, n)), backbone=tiny())
    assert calls[0] == (1, 20) and calls[-1] == (20, 20)
    assert sorted(p.name for p in folder.iterdir()) == [
        "done.json", "step-00010.json", "step-00010.safetensors",
        "step-00020.json", "step-00020.safetensors"]  # fmt: skip
    side = json.loads((folder / "step-00020.json").read_text())
    assert side["model_id"] == j.job_id and side["step"] == 20 and side["dataset_size"] == 3
    assert side["alpha"] == side["rank"] == 4 and len(side["image_ids"]) == 3
    assert all(i.startswith("digit-5-sun/") for i in side["image_ids"])
    assert side["recipe"]["instance_prompt"] == "a photo of sks digit"
    with safe_open(folder / "step-00020.safetensors", "pt") as f:
        assert json.loads(f.metadata()["lora_wise"]) == side
        assert len(f.keys()) == 256 and all(k.startswith("unet.") for k in f.keys())
        assert f.get_tensor(f.keys()[0]).dtype == torch.float32
    stat = (folder / "step-00020.safetensors").stat()
    assert stat.st_mode & 0o044  # group/other-readable, as a shared benchmark folder needs
    mtime = stat.st_mtime_ns
    train_group([j], tmp_path, backbone=tiny())  # finished: skipped, nothing rewritten
    assert (folder / "step-00020.safetensors").stat().st_mtime_ns == mtime


def test_retraining_is_deterministic(tmp_path):
    j = job("pool:photo-rocket", 2, steps=10, every=10)
    train_group([j], tmp_path / "a", backbone=tiny())
    train_group([j], tmp_path / "b", backbone=tiny())
    a = load_file(tmp_path / "a" / j.job_id / "step-00010.safetensors")
    b = load_file(tmp_path / "b" / j.job_id / "step-00010.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_B" in k)


def test_snapshot_loads_into_the_diffusers_pipeline(tmp_path):
    j = job("pool:photo-chelsea", 1, steps=10, every=10)
    (folder,) = train_group([j], tmp_path, backbone=tiny())
    file = folder / "step-00010.safetensors"
    pipe = tiny().pipeline()
    emb, _ = tiny().encode_prompt("a photo of sks cat")
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        before = pipe.unet(x, t, emb).sample
    pipe.load_lora_weights(str(file), adapter_name="test")
    try:
        saved = load_file(file)
        name = "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0"
        layer = pipe.unet.get_submodule(name)
        assert torch.equal(layer.lora_A["test"].weight, saved[f"unet.{name}.lora_A.weight"])
        assert torch.equal(layer.lora_B["test"].weight, saved[f"unet.{name}.lora_B.weight"])
        assert layer.scaling["test"] == 1.0  # lora_alpha = rank
        with torch.no_grad():
            after = pipe.unet(x, t, emb).sample
        assert not torch.allclose(before, after)
    finally:
        pipe.unload_lora_weights()  # the backbone is shared by the other tests


def test_mixed_groups_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share"):
        train_group([job("pool:face", 1), job("pool:face", 2, steps=30)], tmp_path, backbone=tiny())


def test_gradient_clipping_is_per_job_as_torch_clips_each_model():
    from lora_wise.factory.train import MAX_GRAD_NORM, _clip_per_job

    gen = torch.Generator().manual_seed(0)
    params = [torch.zeros(3, 4, 5, requires_grad=True), torch.zeros(3, 6, 4, requires_grad=True)]
    for p, s in zip(params, (1.0, 0.05), strict=True):
        p.grad = torch.randn(p.shape, generator=gen) * s
    params[0].grad[1] *= 0.01  # job 1 is under the norm limit: left alone
    expected = []
    for k in range(3):
        alone = [p.grad[k].clone() for p in params]
        ps = [torch.nn.Parameter(torch.zeros_like(g)) for g in alone]
        for q, g in zip(ps, alone, strict=True):
            q.grad = g
        torch.nn.utils.clip_grad_norm_(ps, MAX_GRAD_NORM)
        expected.append([q.grad for q in ps])
    _clip_per_job(params, MAX_GRAD_NORM)
    for k in range(3):
        for p, e in zip(params, expected[k], strict=True):
            assert torch.allclose(p.grad[k], e, rtol=1e-6, atol=0)
    assert torch.linalg.vector_norm(torch.cat([p.grad[0].flatten() for p in params])) == pytest.approx(
        1.0, rel=1e-5
    )


def test_sdxl_folder_trains_and_loads(tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from train_helpers import save_tiny_sdxl

    from lora_wise.factory.backbones import load_backbone
    from lora_wise.factory.jobs import TrainJob

    save_tiny_sdxl(tmp_path / "sdxl")
    bb = load_backbone(str(tmp_path / "sdxl"))
    assert bb.is_sdxl and bb.resolution == 64
    emb, added = bb.encode_prompt("a photo of sks cat")
    assert (
        emb.shape == (1, 77, 64)
        and added["text_embeds"].shape == (1, 32)
        and added["time_ids"].shape == (1, 6)
    )
    jobs = [
        TrainJob(str(tmp_path / "sdxl"), "low", n, "pool:face", rank=4, steps=4, snapshot_every=2)
        for n in (1, 2)
    ]
    folders = train_group(jobs, tmp_path / "out")
    file = folders[1] / "step-00004.safetensors"
    saved = load_file(file)
    assert (
        len(saved) == 2 * 8 * 2 * 4
    )  # A, B x 8 transformer blocks (down 2, mid 2, up 4) x attn1/2 x q,k,v,out
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    pipe.load_lora_weights(str(file))
    name = "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    assert torch.equal(
        pipe.unet.get_submodule(name).lora_B["default_0"].weight, saved[f"unet.{name}.lora_B.weight"]
    )


def test_a_snapshot_names_the_base_weights_it_was_trained_on(tmp_path):
    from lora_wise.factory.snapshots import iter_snapshots

    train_group([job("pool:digit-3-ink", 1, steps=2, every=2)], tmp_path, backbone=tiny())
    (snap,) = list(iter_snapshots(tmp_path))
    assert snap.sidecar.recipe["base_weights_sha256"] == tiny().extra["weights_sha256"]
