"""The factory's defences: flip augmentation and DP-SGD, per job in the batched trainer."""

from __future__ import annotations

import dataclasses
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook
from train_helpers import assert_same_lora, job, tiny, train_alone_reference

from lora_wise.errors import FactoryError, GridError
from lora_wise.factory import defences
from lora_wise.factory.grid import expand_grid
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.runner import group_jobs, make_plan
from lora_wise.factory.train import train_group

MINI = Path(__file__).resolve().parents[1] / "benchmark" / "mini-lora-wise"
KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"


def _lora(root: Path, j: TrainJob, step: int) -> dict[str, torch.Tensor]:
    return load_file(root / j.job_id / f"step-{step:05d}.safetensors")


def _sidecar(root: Path, j: TrainJob, step: int) -> dict:
    return json.loads((root / j.job_id / f"step-{step:05d}.json").read_text())


def test_a_flip_job_in_a_mixed_group_equals_the_reference_that_mirrors_pixels(tmp_path):
    plain = job("pool:face", 4)
    flip = dataclasses.replace(plain, augment="flip")
    dp = dataclasses.replace(job("pool:digit-3-ink", 2), dp_epsilon=10.0)
    train_group([flip, plain, dp], tmp_path, backbone=tiny())
    # the reference mirrors the drawn pixels before the VAE: a latent flip would fail this
    assert_same_lora(_lora(tmp_path, flip, 20), train_alone_reference(flip, tiny()))
    assert_same_lora(_lora(tmp_path, plain, 20), train_alone_reference(plain, tiny()))
    assert (_lora(tmp_path, flip, 20)[KEY] - _lora(tmp_path, plain, 20)[KEY]).abs().max() >= 1e-4
    side = _sidecar(tmp_path, flip, 20)
    assert side["job"]["augment"] == "flip" and side["recipe"]["augment"]["p"] == 0.5
    assert side["model_id"] == "low-tiny_sd-r4-flip/pool-face/n0004"
    assert {"augment", "dp"}.isdisjoint(_sidecar(tmp_path, plain, 20)["recipe"])


def test_dp_at_infinite_epsilon_is_plain_training_bit_for_bit(tmp_path):
    plain = job("pool:photo-rocket", 2, steps=10, every=10)
    inf = dataclasses.replace(plain, dp_epsilon=math.inf)
    train_group([plain], tmp_path / "a", backbone=tiny())
    train_group([inf], tmp_path / "b", backbone=tiny())
    a, b = _lora(tmp_path / "a", plain, 10), _lora(tmp_path / "b", inf, 10)
    assert all(torch.equal(a[k], b[k]) for k in a)
    dp = _sidecar(tmp_path / "b", inf, 10)["recipe"]["dp"]
    assert dp["epsilon"] == dp["epsilon_at_this_step"] == "inf" and dp["noise_multiplier"] == 0
    assert inf.job_id == "low-tiny_sd-r4-dpinf/pool-photo-rocket/n0002"


def test_a_dp_jobs_gradient_carries_the_accounted_noise(tmp_path):
    """What AdamW receives: job 0's clipped gradient plus N(0, (σC)²) per coordinate; job 1 untouched."""
    dp = dataclasses.replace(job("pool:face", 1, steps=2, every=2), dp_epsilon=1.0, dp_clip=0.5)
    plain = job("pool:digit-0-moss", 1, steps=2, every=2)
    seen = []

    def record(opt, args, kwargs):
        params = [p for g in opt.param_groups for p in g["params"]]
        seen.append([torch.cat([p.grad[k].flatten() for p in params]) for k in range(2)])

    handle = register_optimizer_step_pre_hook(record)
    try:
        train_group([dp, plain], tmp_path, backbone=tiny())
    finally:
        handle.remove()
    sigma = defences.noise_multiplier(dp)
    assert sigma > 1  # one image over 2 steps at ε = 1: q = 1
    for noised, clean in seen:
        # the clipped signal has norm <= C over ~5e4 coordinates: far below the noise's std
        assert noised.std().item() == pytest.approx(sigma * 0.5, rel=0.02)
        assert abs(noised.mean().item()) < 0.02 * sigma * 0.5
        assert torch.linalg.vector_norm(clean).item() <= 1.0 + 1e-5
    dp_side = _sidecar(tmp_path, dp, 2)["recipe"]
    assert dp_side["max_grad_norm"] == 0.5 and dp_side["dp"]["noise_multiplier"] == sigma
    assert dp_side["dp"]["sample_rate"] == 1.0 and dp_side["dp"]["epsilon_at_this_step"] <= 1.0
    assert "Poisson" in dp_side["dp"]["sampling"] and dp_side["dp"]["accountant"].startswith("opacus")


def test_add_dp_noise_scales_per_job_and_draws_the_same_noise_alone():
    params = [torch.zeros(3, 40, 50, requires_grad=True), torch.zeros(3, 70, 30, requires_grad=True)]
    for p in params:
        p.grad = torch.zeros_like(p)
    gens = [None, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    defences.add_dp_noise(params, torch.tensor([0.0, 2.0, 0.5]), gens, batch_size=1)
    flat = [torch.cat([p.grad[k].flatten() for p in params]) for k in range(3)]
    assert torch.count_nonzero(flat[0]) == 0
    assert flat[1].std().item() == pytest.approx(2.0, rel=0.03)
    assert flat[2].std().item() == pytest.approx(0.5, rel=0.03)
    alone = [torch.zeros(1, 40, 50, requires_grad=True), torch.zeros(1, 70, 30, requires_grad=True)]
    for p in alone:
        p.grad = torch.zeros_like(p)
    defences.add_dp_noise(alone, torch.tensor([2.0]), [torch.Generator().manual_seed(1)], batch_size=1)
    assert all(torch.equal(a.grad[0], p.grad[1]) for a, p in zip(alone, params, strict=True))


@pytest.mark.parametrize("q", [1 / 5, 1 / 50])
def test_opacus_sigma_falls_as_epsilon_grows_and_meets_the_target(q):
    sigmas = [defences.sigma_for(eps, 1e-5, q, 1400) for eps in (1.0, 10.0)]
    assert sigmas[0] > sigmas[1] > 0
    for eps, sigma in zip((1.0, 10.0), sigmas, strict=True):
        spent = defences.epsilon_spent(sigma, q, 1400, 1e-5)
        assert 0.98 * eps <= spent <= eps
        assert defences.epsilon_spent(sigma, q, 700, 1e-5) < spent  # half the steps spend less
    n = round(1 / q)
    assert defences.noise_multiplier(TrainJob("tiny-sd", "low", n, "pool:face", dp_epsilon=1)) == sigmas[0]


def test_undefended_names_ids_and_sidecars_are_todays():
    from lora_wise import load_benchmark

    plain = TrainJob("tiny-sd", "medium", 50, "pool:digit-0-ink")
    assert plain.job_id == "medium-tiny_sd-r8/pool-digit-0-ink/n0050"
    assert plain.job_id in set(load_benchmark(MINI, "medium-tiny_sd-r8").model_id)  # the committed model
    assert not {"augment", "dp_epsilon", "dp_delta", "dp_clip"} & set(plain.to_dict())
    old = {k: v for k, v in plain.to_dict().items() if k != "alpha"}  # a sidecar's job from before
    assert TrainJob.from_dict(old) == plain
    names = {
        dataclasses.replace(plain, augment="flip").config_name,
        dataclasses.replace(plain, dp_epsilon=10).config_name,
        dataclasses.replace(plain, augment="flip", dp_epsilon=1).config_name,
        dataclasses.replace(plain, dp_epsilon=1, dp_clip=0.5).config_name,
        plain.config_name,
    }
    assert names == {"medium-tiny_sd-r8-flip", "medium-tiny_sd-r8-dp10", "medium-tiny_sd-r8-flip-dp1",
                     "medium-tiny_sd-r8-dp1c0.5", "medium-tiny_sd-r8"}  # fmt: skip
    dp = dataclasses.replace(plain, augment="flip", dp_epsilon=math.inf)
    assert TrainJob.from_dict(json.loads(json.dumps(dp.to_dict()))) == dp


def test_grid_defence_keys_parse_and_plans_group_each_defence_apart():
    spec = yaml.safe_load("""
        backbones: [tiny-sd]
        micro_datasets: [pool:face]
        augment: flip
        ranges: {low: {dp_epsilon: 10, dp_clip: 0.5, sizes: [1, 2]}, medium: {sizes: [10]}}
    """)
    jobs = expand_grid(spec)
    assert [j.config_name for j in jobs] == ["low-tiny_sd-r8-flip-dp10c0.5"] * 2 + ["medium-tiny_sd-r8-flip"]
    assert jobs[0].dp_epsilon == 10.0 and jobs[0].dp_delta == 1e-5
    plain = [dataclasses.replace(j, augment=None, dp_epsilon=None, dp_clip=1.0) for j in jobs[:2]]
    assert len(group_jobs(jobs[:2] + plain)) == 2
    base = {"backbones": ["tiny-sd"], "micro_datasets": ["pool:face"], "ranges": ["low"]}
    for bad, message in (({"augment": "rotate"}, "unknown augment"), ({"dp_clip": 2}, "need dp_epsilon"),
                         ({"dp_epsilon": -1}, "dp_epsilon > 0")):  # fmt: skip
        with pytest.raises(GridError, match=message):
            expand_grid({**base, **bad})


def test_dp_with_batches_of_two_is_refused(tmp_path):
    j = dataclasses.replace(job("pool:face", 3, batch=2), dp_epsilon=10)
    with pytest.raises(FactoryError, match="DP-SGD needs batch_size 1"):
        train_group([j], tmp_path, backbone=tiny())
    with pytest.raises(FactoryError, match="per-sample gradients"):
        make_plan([j], tmp_path)


def test_planning_a_dp_job_without_opacus_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # as if not installed
    make_plan([dataclasses.replace(job("pool:face", 3), dp_epsilon=math.inf)], tmp_path)  # no noise: no need
    with pytest.raises(FactoryError, match=r"pip install 'lora-wise\[dp\]'"):
        make_plan([dataclasses.replace(job("pool:face", 3), dp_epsilon=10)], tmp_path)


def test_leak_recipes_take_a_defence_and_keep_the_default():
    from lora_wise.leak.victims import Recipe

    plain = Recipe().job("folder:/x", 5)
    assert plain == Recipe(defence="none").job("folder:/x", 5) and plain.config_name == "leak-tiny_sd-r8"
    both = Recipe(defence="flip,dp:10").job("folder:/x", 5)
    assert (both.augment, both.dp_epsilon, both.config_name) == ("flip", 10.0, "leak-tiny_sd-r8-flip-dp10")
    assert Recipe(defence="dp:inf").job("folder:/x", 5).dp_epsilon == math.inf
    for bad in ("rotate", "dp:0", "dp:ten"):
        with pytest.raises(ValueError):
            Recipe(defence=bad)
    pilot = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "leak_pilot.py"))
    with pytest.raises(SystemExit):
        pilot["main"](["out", "--defence", "dp:-1"])
