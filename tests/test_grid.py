"""Grid specs expand into the paper's jobs; bad specs fail with one clear GridError."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from lora_wise.errors import GridError
from lora_wise.factory.grid import expand_grid, load_grid, preset_names
from lora_wise.factory.pool_emoji import V2_CONCEPT_NAMES
from lora_wise.paper import RANGES, SCHEDULES

CONCEPTS = [f"concept-{i:02d}" for i in range(60)]


def test_mini_preset_is_the_600_model_mini_lora_wise():
    jobs = load_grid("mini", pool_concepts=CONCEPTS)
    assert len(jobs) == 600
    assert {j.backbone for j in jobs} == {"tiny-sd"} and {j.rank for j in jobs} == {8}
    assert {(j.steps, j.snapshot_every, j.batch_size, j.learning_rate, j.seed) for j in jobs} == {
        (1400, 100, 1, 1e-4, 0)
    }
    per_range = Counter(j.range_name for j in jobs)
    assert per_range == {"low": 300, "medium": 300}
    for name in ("low", "medium"):
        sizes = Counter(j.dataset_size for j in jobs if j.range_name == name)
        assert sizes == dict.fromkeys(RANGES[name], 50)
    micros = {j.micro_dataset for j in jobs}
    assert micros == {f"pool:{c}" for c in CONCEPTS[:50]}
    assert len({j.job_id for j in jobs}) == 600


def test_high_range_takes_the_papers_batch_and_steps_and_overrides_win(tmp_path):
    spec = {"backbones": ["sd15"], "ranks": [32], "micro_datasets": ["imagenet:n01"], "ranges": ["high"]}
    jobs = expand_grid(spec)
    batch, steps, _ = SCHEDULES["high"]
    assert (
        {(j.batch_size, j.steps, j.snapshot_every) for j in jobs} == {(batch, steps, 100)} == {(8, 1000, 100)}
    )
    assert [j.dataset_size for j in jobs] == [1, 50, 100, 500, 1000]
    spec["ranges"] = {"high": {"steps": 10, "snapshot_every": 5, "sizes": [1, 50]}}
    jobs = expand_grid(spec)
    assert [(j.dataset_size, j.steps, j.snapshot_every, j.batch_size) for j in jobs] == [
        (1, 10, 5, 8),
        (50, 10, 5, 8),
    ]


def test_axes_multiply_in_a_stable_order():
    spec = {
        "backbones": ["tiny-sd", "sd15"],
        "ranks": [8, 16],
        "micro_datasets": ["pool:a", "pool:b", "pool:c"],
        "ranges": ["low", "medium"],
    }
    jobs = expand_grid(spec)
    assert len(jobs) == 2 * 2 * 2 * 3 * 6
    assert expand_grid(spec) == jobs
    assert jobs[0].job_id == "low-tiny_sd-r8/pool-a/n0001"


def test_pool_star_and_pool_count(tmp_path):
    base = {"backbones": "tiny-sd", "ranges": ["low"], "sizes": [1]}
    star = expand_grid(base | {"micro_datasets": "pool:*"}, pool_concepts=CONCEPTS[:3])
    assert [j.micro_dataset for j in star] == ["pool:concept-00", "pool:concept-01", "pool:concept-02"]
    with pytest.raises(GridError, match="asked for 5 pool concepts, the pool has 3"):
        expand_grid(base | {"micro_datasets": {"pool": 5}}, pool_concepts=CONCEPTS[:3])


def test_pool_globs_expand_to_the_matching_concepts_in_pool_order():
    base = {"backbones": "tiny-sd", "ranges": ["low"], "sizes": [1]}
    names = ["photo-moon", "digit-1-ink", "photo-brick", "face"]
    jobs = expand_grid(
        base | {"micro_datasets": ["pool:photo-*", "pool:face", "folder:/data/cat"]}, pool_concepts=names
    )
    assert [j.micro_dataset for j in jobs] == [
        "pool:photo-moon",
        "pool:photo-brick",
        "pool:face",
        "folder:/data/cat",
    ]
    with pytest.raises(GridError, match=r"no pool concept matches 'pool:fase\*'"):
        expand_grid(base | {"micro_datasets": ["pool:fase*"]}, pool_concepts=names)


def test_glob_micro_datasets_expand_environment_variables(tmp_path, monkeypatch):
    for wnid in ("n02", "n01", "n03"):
        (tmp_path / wnid).mkdir()
    (tmp_path / "n04.txt").write_text("not a folder")
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path))
    spec = {
        "backbones": ["sd15"],
        "ranges": ["medium"],
        "micro_datasets": {"glob": "${IMAGENET_ROOT}/n*", "kind": "imagenet", "count": 2},
    }
    jobs = expand_grid(spec)
    assert sorted({j.micro_dataset for j in jobs}) == [f"imagenet:{tmp_path}/n01", f"imagenet:{tmp_path}/n02"]
    monkeypatch.delenv("IMAGENET_ROOT")
    with pytest.raises(GridError, match="set the environment variable"):
        expand_grid(spec)


@pytest.mark.parametrize("name", ["sd15-low", "sd15-medium", "sd2-medium", "sd15-high"])
def test_paper_presets_match_table_1(name, tmp_path, monkeypatch):
    for i in range(50):
        (tmp_path / f"n{i:08d}").mkdir()
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path))
    monkeypatch.setenv("CONCEPT101_ROOT", str(tmp_path))
    jobs = load_grid(name)
    per_rank = Counter(j.rank for j in jobs)
    expected = {
        "sd15-low": {8: 300, 16: 300, 32: 300},
        "sd15-medium": {16: 300, 32: 300, 64: 300},
        "sd2-medium": {32: 300},
        "sd15-high": {32: 250},
    }[name]
    assert per_rank == expected


def test_presets_are_listed():
    assert {"mini", "mini-diversity", "sd15-low", "sd15-medium", "sd2-medium", "sd15-high"} <= set(
        preset_names()
    )
    assert {"mini-v2", "mini-v2-ranks", "mini-v2-flip", "mini-v2-dp10"} <= set(preset_names())


def test_v2_presets_list_the_50_v2_concepts_in_order():
    v2 = [f"pool:{n}" for n in V2_CONCEPT_NAMES]
    jobs = load_grid("mini-v2")
    assert len(jobs) == 600 and Counter(j.range_name for j in jobs) == {"low": 300, "medium": 300}
    assert list(dict.fromkeys(j.micro_dataset for j in jobs)) == v2
    assert {(j.backbone, j.rank, j.steps, j.snapshot_every, j.learning_rate) for j in jobs} == {
        ("tiny-sd-v2", 8, 1400, 100, 3e-4)
    }
    ranks = load_grid("mini-v2-ranks")
    assert len(ranks) == 240 and {j.range_name for j in ranks} == {"medium"}
    assert Counter(j.rank for j in ranks) == {4: 120, 16: 120}
    assert list(dict.fromkeys(j.micro_dataset for j in ranks)) == v2[:20]


@pytest.mark.parametrize(
    "grid,defence,concepts",
    [("mini-v2-flip", {"augment": "flip"}, 20), ("mini-v2-dp10", {"dp_epsilon": 10}, 10)],
)
def test_v2_defence_presets_are_the_rank_8_medium_range_defended(grid, defence, concepts):
    """Each defence arm trains what mini-v2 trains on the rank arm's first concepts, plus its defence
    only, so that its config (``-flip``, ``-dp10``) compares with the undefended one concept for concept."""
    jobs = load_grid(grid)
    undefended = {(j.micro_dataset, j.dataset_size) for j in load_grid("mini-v2") if j.range_name == "medium"}
    assert len(jobs) == 6 * concepts and {(j.micro_dataset, j.dataset_size) for j in jobs} <= undefended
    first = [f"pool:{n}" for n in V2_CONCEPT_NAMES[:concepts]]
    assert list(dict.fromkeys(j.micro_dataset for j in jobs)) == first
    assert {(j.backbone, j.rank, j.learning_rate, j.steps) for j in jobs} == {("tiny-sd-v2", 8, 3e-4, 1200)}
    assert all(getattr(j, key) == value for j in jobs for key, value in defence.items())
    assert {j.config_name for j in jobs} == {f"medium-tiny_sd_v2-r8-{grid.removeprefix('mini-v2-')}"}


def test_diversity_preset_is_the_medium_range_on_four_kinds_of_concept():
    jobs = load_grid("mini-diversity")
    assert len(jobs) == 24 and {j.dataset_size for j in jobs} == {1, 10, 20, 30, 40, 50}
    assert {j.micro_dataset for j in jobs} == {
        "pool:face",
        "pool:nonface",
        "pool:digit-3-ink",
        "pool:digit-7-sun",
    }
    assert {(j.backbone, j.rank, j.steps, j.learning_rate) for j in jobs} == {("tiny-sd", 8, 1400, 1e-4)}


@pytest.mark.parametrize(
    "spec,message",
    [
        ([1, 2], "a grid is a YAML mapping"),
        ({"backbones": ["x"], "micro_datasets": ["a"], "ranges": ["huge"]}, "unknown range 'huge'"),
        ({"backbones": ["x"], "micro_datasets": ["a"], "ranges": ["low"], "setps": 3}, "unknown key"),
        ({"micro_datasets": ["a"], "ranges": ["low"]}, "needs 'backbones'"),
        ({"backbones": ["x"], "micro_datasets": ["a", "a"], "ranges": ["low"]}, "same job twice"),
        (
            {"backbones": ["x"], "micro_datasets": {"imagenet": 3}, "ranges": ["low"]},
            "'micro_datasets' must be",
        ),
        (
            {"backbones": ["x"], "micro_datasets": ["a"], "ranges": {"low": {"snapshot_every": 0}}},
            "snapshot_every",
        ),
    ],
)
def test_bad_specs_fail_with_a_grid_error(spec, message):
    with pytest.raises(GridError, match=message):
        expand_grid(spec)


def test_load_grid_reads_a_file_and_refuses_bad_yaml(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump({"backbones": ["tiny-sd"], "micro_datasets": ["pool:a"], "ranges": ["low"]})
    )
    assert len(load_grid(path)) == 6
    path.write_text("backbones: [tiny-sd\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(path)
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "missing.yaml")


def test_mini_preset_uses_the_real_offline_pool():
    from lora_wise.factory import pool

    jobs = load_grid("mini")
    assert {j.micro_dataset for j in jobs} == {f"pool:{c}" for c in list(pool.concepts())[:50]}
