"""The factory: plans skip finished jobs, groups train, failures stay local, a killed run resumes cleanly.

Until ``lora_wise.factory.train`` is used here, the trainer is ``factory_helpers.fake_train_group``, a real
stand-in that writes the factory's on-disk format (safetensors + sidecar JSON, done.json last).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import factory_helpers
import pytest
import yaml
from safetensors import safe_open

from lora_wise.cli.generate import generate
from lora_wise.cli.tools import run
from lora_wise.errors import FactoryError
from lora_wise.factory.grid import expand_grid
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.runner import group_jobs, is_done, make_plan, run_plan

FAKE = "factory_helpers:fake_train_group"
TESTS = Path(__file__).parent


def tiny_grid(micros=("pool:a", "pool:b"), sizes=(1, 2), steps=10, every=5, ranges=("low",)) -> dict:
    return {"backbones": ["tiny-sd"], "ranks": [4], "micro_datasets": list(micros), "sizes": list(sizes),
            "steps": steps, "snapshot_every": every, "ranges": list(ranges)}  # fmt: skip


def check_outputs(out: Path, jobs: list[TrainJob]) -> None:
    """Every job complete: exactly its snapshots and done.json, each file whole and consistent."""
    for job in jobs:
        folder = out / job.job_id
        steps = list(range(job.snapshot_every, job.steps + 1, job.snapshot_every))
        expected = {f"step-{s:05d}.{ext}" for s in steps for ext in ("safetensors", "json")} | {"done.json"}
        assert {p.name for p in folder.iterdir()} == expected, job.job_id
        for step in steps:
            sidecar = json.loads((folder / f"step-{step:05d}.json").read_text())
            assert sidecar["model_id"] == job.job_id and sidecar["step"] == step
            with safe_open(str(folder / f"step-{step:05d}.safetensors"), "pt") as fh:
                assert json.loads(fh.metadata()["lora_wise"]) == sidecar
                assert len(list(fh.keys())) == 2 * len(factory_helpers.LAYERS)
        json.loads((folder / "done.json").read_text())


def test_groups_share_what_the_batched_pass_needs():
    jobs = expand_grid(tiny_grid(micros=[f"pool:c{i}" for i in range(5)], sizes=(1, 2, 3)))
    jobs += expand_grid(tiny_grid(steps=20) | {"ranks": [8]})
    groups = group_jobs(jobs, group_size=4)
    assert sorted(j.job_id for g in groups for j in g) == sorted(j.job_id for j in jobs)
    assert all(len(g) <= 4 and len({(j.rank, j.steps) for j in g}) == 1 for g in groups)
    assert [len(g) for g in groups] == [4, 4, 4, 3, 4]
    # seeds do not split a group: each job has its own generators in the batched pass
    seeded = [replace(j, seed=i) for i, j in enumerate(jobs[:4])]
    assert group_jobs(seeded, group_size=4) == [seeded]
    with pytest.raises(FactoryError):
        group_jobs(jobs, 0)


def test_plan_skips_finished_jobs_and_limits(tmp_path):
    jobs = expand_grid(tiny_grid(sizes=(1, 2, 3)))
    (tmp_path / jobs[1].job_id).mkdir(parents=True)
    (tmp_path / jobs[1].job_id / "done.json").write_text("{}")
    (tmp_path / jobs[2].job_id).mkdir(parents=True)  # started, not finished
    plan = make_plan(jobs, tmp_path, group_size=2)
    assert [j.job_id for j in plan.done] == [jobs[1].job_id]
    assert jobs[1] not in plan.todo and jobs[2] in plan.todo and len(plan.todo) == 5
    assert make_plan(jobs, tmp_path, limit=2).todo == [jobs[0], jobs[2]]
    data = plan.as_dict()
    assert data["done"] == 1 and data["to_run"] == 5 and data["model_steps"] == 50
    assert data["configs"] == {"low-tiny_sd-r4": {"jobs": 6, "done": 1, "to_run": 5}}


def test_shards_of_a_plan_partition_the_grid_whatever_is_done(tmp_path):
    jobs = expand_grid(tiny_grid(micros=[f"pool:c{i}" for i in range(10)], sizes=(1, 2, 3)))
    shards = [make_plan(jobs, tmp_path, shard=(i, 3)).jobs for i in range(3)]
    assert sorted(j.job_id for s in shards for j in s) == sorted(j.job_id for j in jobs)
    (tmp_path / shards[0][0].job_id).mkdir(parents=True)
    (tmp_path / shards[0][0].job_id / "done.json").write_text("{}")
    assert make_plan(jobs, tmp_path, shard=(0, 3)).jobs == shards[0]  # finishing a job moves nothing


@pytest.mark.parametrize("executor,workers", [("inprocess", 1), ("pool", 2)])
def test_run_plan_trains_every_job_and_a_failed_group_does_not_stop_the_others(tmp_path, executor, workers):
    jobs = expand_grid(tiny_grid(micros=("pool:a", "pool:broken", "pool:b"), sizes=(1, 2)))
    plan = make_plan(jobs, tmp_path, group_size=2)
    assert len(plan.groups) == 3
    summary = run_plan(plan, executor=executor, workers=workers, trainer=FAKE)
    good = [j for j in jobs if j.micro_dataset != "pool:broken"]
    check_outputs(tmp_path, good)
    assert sorted(summary.completed) == sorted(j.job_id for j in good)
    assert set(summary.failed) == {j.job_id for j in jobs if j.micro_dataset == "pool:broken"}
    assert all("pool:broken" in e for e in summary.failed.values())
    assert summary.model_steps == 40 and not summary.ok
    # the rerun plans exactly the failed group
    assert make_plan(jobs, tmp_path, group_size=2).todo == [
        j for j in jobs if j.micro_dataset == "pool:broken"
    ]


def test_rerun_removes_temp_files_and_completes_a_started_job(tmp_path):
    jobs = expand_grid(tiny_grid())
    folder = tmp_path / jobs[0].job_id
    folder.mkdir(parents=True)
    factory_helpers.write_snapshot(folder, jobs[0], 5)
    (folder / "step-00010.safetensors.tmp").write_bytes(b"half a fi")
    summary = run_plan(make_plan(jobs, tmp_path), trainer=FAKE)
    assert summary.ok and len(summary.completed) == 4
    check_outputs(tmp_path, jobs)


def test_unknown_trainer_fails_before_anything_runs(tmp_path):
    plan = make_plan(expand_grid(tiny_grid()), tmp_path)
    with pytest.raises(FactoryError, match="cannot load the trainer"):
        run_plan(plan, trainer="lora_wise.nope:train_group")


def write_grid(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny_grid(**kw)))
    return path


def test_cli_dry_run_json_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path)
    out = tmp_path / "out"
    code = run(generate, [str(grid), "--out", str(out), "--dry-run", "--json", "--group-size", "3"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["to_run"] == 4 and [len(g) for g in plan["groups"]] == [2, 2]  # at most 3, evened
    assert not out.exists()


def test_cli_runs_then_reruns_with_nothing_to_do(tmp_path, capsys):
    grid = write_grid(tmp_path)
    out = tmp_path / "out"
    assert run(generate, [str(grid), "--out", str(out), "--trainer", FAKE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 4
    assert run(generate, [str(grid), "--out", str(out), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to_run"] == 0


def test_cli_usage_errors(tmp_path):
    grid = write_grid(tmp_path)
    assert run(generate, [str(grid), "--out", str(tmp_path / "o"), "--shard", "5/2", "--dry-run"]) == 2
    assert run(generate, [str(grid), "--dry-run"]) == 4  # --out missing
    assert run(generate, [str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2


GENERATE = (
    "import sys; from lora_wise.cli.generate import generate; "
    "from lora_wise.cli.tools import main_for; main_for(generate, 'generate')"
)


def test_a_killed_run_resumes_with_nothing_lost_duplicated_or_half_written(tmp_path):
    grid = write_grid(tmp_path, micros=("pool:a", "pool:b", "pool:c"), sizes=(1, 2), steps=20, every=5)
    out = tmp_path / "out"
    calls = tmp_path / "calls.log"
    env = os.environ | {"PYTHONPATH": str(TESTS), "FAKE_TRAIN_SLEEP": "0.15", "FAKE_TRAIN_CALLS": str(calls)}
    args = [
        sys.executable,
        "-c",
        GENERATE,
        str(grid),
        "--out",
        str(out),
        "--trainer",
        FAKE,
        "--group-size",
        "2",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(out.glob("*/*/*/done.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    jobs = expand_grid(tiny_grid(micros=("pool:a", "pool:b", "pool:c"), sizes=(1, 2), steps=20, every=5))
    finished = [j for j in jobs if is_done(out, j)]
    assert 2 <= len(finished) < len(jobs), "the kill must land midway"
    before = {p: p.stat().st_mtime_ns for j in finished for p in (out / j.job_id).iterdir()}

    rerun = subprocess.run(args, env=env | {"FAKE_TRAIN_SLEEP": "0"}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    check_outputs(out, jobs)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished jobs were not retrained
    trained_twice = [j for line in calls.read_text().splitlines() for j in json.loads(line)]
    assert sorted(set(trained_twice)) == sorted(j.job_id for j in jobs)
    assert not any(j.job_id in trained_twice[trained_twice.index(j.job_id) + 1 :] for j in finished)


def test_ray_local_runs_two_tiny_jobs(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray's workers start from the driver's environment: let them import the stand-in trainer.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    jobs = expand_grid(tiny_grid(micros=("pool:a",), sizes=(1, 2)))
    plan = make_plan(jobs, tmp_path, group_size=1)
    summary = run_plan(plan, executor="ray", workers=2, ray_address="local", trainer=FAKE)
    assert summary.ok and sorted(summary.completed) == sorted(j.job_id for j in jobs)
    check_outputs(tmp_path, jobs)
    assert not ray.is_initialized()


def tree_state(out: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_killing_a_pool_run_kills_its_workers_and_the_rerun_completes(tmp_path):
    grid = write_grid(tmp_path, micros=("pool:a", "pool:b"), sizes=(1, 2), steps=30, every=5)
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": str(TESTS), "FAKE_TRAIN_SLEEP": "0.2"}
    args = [sys.executable, "-c", GENERATE, str(grid), "--out", str(out), "--trainer", FAKE,
            "--group-size", "1", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(out.glob("*/*/*/step-00010.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the workers notice
    state = tree_state(out)
    time.sleep(1.0)  # an orphaned worker would write a snapshot every 0.2 s
    assert tree_state(out) == state, "workers went on writing after the runner was killed"

    rerun = subprocess.run(args, env=env | {"FAKE_TRAIN_SLEEP": "0"}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    check_outputs(out, expand_grid(tiny_grid(micros=("pool:a", "pool:b"), sizes=(1, 2), steps=30, every=5)))


# --- with the real trainer (lora_wise.factory.train.train_group on tiny-sd) -------------------------------


def tiny_sd_ready() -> bool:
    from lora_wise.factory.backbones.tiny_sd import data_dir

    return all((data_dir() / f"{n}.safetensors").is_file() for n in ("unet", "vae", "text_encoder"))


def real_trainer(test):
    skip = pytest.mark.skipif(not tiny_sd_ready(), reason="tiny-sd weights not built yet")
    return pytest.mark.slow(skip(test))


REAL_GRID = dict(micros=("pool:digit-3-ink",), sizes=(1, 2), steps=10, every=5)


def check_real_outputs(out: Path, jobs: list[TrainJob]) -> None:
    """Exactly the snapshots and done.json; every snapshot a 128-layer rank-4 LoRA readable by lora-wise."""
    from lora_wise import compute_spectra, read_lora

    for job in jobs:
        folder = out / job.job_id
        expected = {f"step-{s:05d}.{ext}" for s in (5, 10) for ext in ("safetensors", "json")} | {"done.json"}
        assert {p.name for p in folder.iterdir()} == expected, job.job_id
        for step in (5, 10):
            sidecar = json.loads((folder / f"step-{step:05d}.json").read_text())
            assert (sidecar["model_id"], sidecar["step"], sidecar["dataset_size"]) == (
                job.job_id,
                step,
                job.dataset_size,
            )
            assert len(sidecar["image_ids"]) == job.dataset_size
            spectra = compute_spectra(read_lora(folder / f"step-{step:05d}.safetensors"))
            assert len(spectra.layers) == 128 and spectra.width == 4
            assert (spectra.fro > 0).all()  # B moved away from its zero init


@real_trainer
def test_generate_end_to_end_with_the_real_trainer(tmp_path, capsys):
    grid = write_grid(tmp_path, **REAL_GRID)
    out = tmp_path / "out"
    assert run(generate, [str(grid), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == 2 and summary["failed"] == {} and summary["model_steps"] == 20
    check_real_outputs(out, expand_grid(tiny_grid(**REAL_GRID)))


def final_tensors(out: Path, job: TrainJob) -> dict:
    from safetensors.torch import load_file

    return load_file(out / job.job_id / f"step-{job.steps:05d}.safetensors")


@real_trainer
def test_a_killed_real_run_resumes_to_the_same_models_as_an_uninterrupted_one(tmp_path):
    grid = write_grid(tmp_path, **REAL_GRID)
    jobs = expand_grid(tiny_grid(**REAL_GRID))
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = [sys.executable, "-c", GENERATE, str(grid), "--group-size", "1"]
    proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*/*/*/step-00005.json")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not all(is_done(out, j) for j in jobs), "the kill must land midway"

    rerun = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    check_real_outputs(out, jobs)
    assert run(generate, [str(grid), "--out", str(clean), "--group-size", "1"]) == 0
    for job in jobs:  # nothing of the killed run leaked into the result
        got, want = final_tensors(out, job), final_tensors(clean, job)
        assert got.keys() == want.keys()
        assert all(torch_allclose(got[k], want[k]) for k in want)


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-7))


@real_trainer
def test_ray_local_trains_two_tiny_jobs_with_the_real_trainer(tmp_path):
    ray = pytest.importorskip("ray")
    jobs = expand_grid(tiny_grid(**REAL_GRID))
    plan = make_plan(jobs, tmp_path, group_size=1)  # two groups: two Ray tasks
    summary = run_plan(plan, executor="ray", workers=2, ray_address="local")
    assert summary.ok and sorted(summary.completed) == sorted(j.job_id for j in jobs), summary.failed
    check_real_outputs(tmp_path, jobs)
    assert not ray.is_initialized()


def test_a_second_runner_on_the_same_folder_is_refused_while_the_first_lives(tmp_path):
    from lora_wise.factory.runner import run_lock

    plan = make_plan(expand_grid(tiny_grid()), tmp_path)
    with run_lock(tmp_path, None):
        with pytest.raises(FactoryError, match="already running"):
            run_plan(plan, trainer=FAKE)
        with run_lock(tmp_path, (0, 2)):  # another shard may share the folder
            pass
    assert run_plan(plan, trainer=FAKE).ok  # released with its holder


def test_groups_shrink_so_that_every_worker_gets_one_in_every_round(tmp_path):
    jobs = expand_grid(tiny_grid(micros=[f"pool:c{i}" for i in range(5)], sizes=(1, 2, 3)))  # 15 jobs
    assert [len(g) for g in make_plan(jobs, tmp_path, group_size=16).groups] == [15]
    assert [len(g) for g in make_plan(jobs, tmp_path, group_size=16, workers=2).groups] == [8, 7]
    assert [len(g) for g in make_plan(jobs, tmp_path, group_size=4, workers=2).groups] == [4, 4, 4, 3]
    # 6 + 6 + 3 would leave one worker idle while the 3 trains: two full rounds of 4 instead
    assert [len(g) for g in make_plan(jobs, tmp_path, group_size=6, workers=2).groups] == [4, 4, 4, 3]
    assert [len(g) for g in make_plan(jobs, tmp_path, group_size=4, workers=3).groups] == [3, 3, 3, 2, 2, 2]
