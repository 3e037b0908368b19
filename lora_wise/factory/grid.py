"""A benchmark grid: a YAML spec that expands into the list of LoRA-WiSE training jobs.

A grid is ranges × backbones × ranks × micro-datasets × the range's dataset sizes. Everything not
written in the spec comes from the paper's recipe (``lora_wise.factory.jobs.RANGES`` and ``SCHEDULES``:
batch 1 and 1400 steps for low/medium, batch 8 and 1000 steps for high; snapshots every 100 steps).

    name: mini-lora-wise
    backbones: [tiny-sd]
    ranks: [8]
    micro_datasets: {pool: 50}      # or "pool:*", a list of specs, or {glob: ..., kind: ..., count: ...}
    ranges: [low, medium]           # or a mapping range -> keys that override the top level
    steps: 1400                     # optional: steps, snapshot_every, batch_size, learning_rate,
    snapshot_every: 100             #           resolution, seed, sizes, target_modules,
    augment: flip                   #           and the defences: augment, dp_epsilon,
    dp_epsilon: 10                  #           dp_delta, dp_clip (docs/factory.md, "Defences")

Micro-dataset specs are strings the trainer resolves (``pool:<concept>``, ``folder:<path>``,
``imagenet:<path>``, ``concept101:<path>``); the grid only lists them.
"""

from __future__ import annotations

import glob as globlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lora_wise.errors import GridError
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.micro_datasets import matches
from lora_wise.paper import RANGES, SCHEDULES, TARGET_MODULES

#: Keys a grid (top level or one range) may set; anything else is a typo and is refused.
JOB_KEYS = {"steps", "snapshot_every", "batch_size", "learning_rate", "resolution", "seed", "target_modules",
            "augment", "dp_epsilon", "dp_delta", "dp_clip"}  # fmt: skip
AXIS_KEYS = {"backbones", "ranks", "micro_datasets", "sizes"}
TOP_KEYS = JOB_KEYS | AXIS_KEYS | {"name", "description", "ranges"}
DEFAULT_SNAPSHOT_EVERY = 100


def load_grid(source: str | Path, pool_concepts: list[str] | None = None) -> list[TrainJob]:
    """Read a grid YAML (a path, or the name of a shipped preset such as ``mini``) and expand it."""
    path = resolve_grid_path(source)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    return expand_grid(spec, pool_concepts=pool_concepts)


def resolve_grid_path(source: str | Path) -> Path:
    """A file path as is; a bare name (``mini``, ``sd15-low``) is looked up among the shipped presets."""
    path = Path(source)
    if path.is_file():
        return path
    preset = resources.files("lora_wise") / "data" / "grids" / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and preset.is_file():
        return Path(str(preset))
    raise GridError(f"grid {source!r} not found: give a YAML file or one of the presets {preset_names()}")


def preset_names() -> list[str]:
    folder = resources.files("lora_wise") / "data" / "grids"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def expand_grid(spec: Any, pool_concepts: list[str] | None = None) -> list[TrainJob]:
    """Expand a parsed grid spec into jobs, in a stable order (range, backbone, rank, micro, size)."""
    if not isinstance(spec, dict):
        raise GridError("a grid is a YAML mapping with at least 'backbones', 'ranges' and 'micro_datasets'")
    _check_keys(spec, TOP_KEYS, "grid")
    ranges = spec.get("ranges")
    if isinstance(ranges, list):
        ranges = {name: {} for name in ranges}
    if not isinstance(ranges, dict) or not ranges:
        raise GridError("'ranges' must list range names (low, medium, high) or map them to overrides")
    jobs: list[TrainJob] = []
    for range_name, overrides in ranges.items():
        if range_name not in RANGES:
            raise GridError(f"unknown range {range_name!r}: expected one of {sorted(RANGES)}")
        overrides = overrides or {}
        _check_keys(overrides, JOB_KEYS | AXIS_KEYS, f"range {range_name!r}")
        merged = {k: v for k, v in spec.items() if k in JOB_KEYS | AXIS_KEYS} | overrides
        jobs.extend(_expand_range(range_name, merged, pool_concepts))
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise GridError("the grid lists the same job twice (a micro-dataset, rank or size is repeated)")
    return jobs


def _expand_range(range_name: str, spec: dict, pool_concepts: list[str] | None) -> list[TrainJob]:
    batch, last_step, _evaluated = SCHEDULES[range_name]
    params = {
        "steps": int(spec.get("steps", last_step)),
        "snapshot_every": int(spec.get("snapshot_every", DEFAULT_SNAPSHOT_EVERY)),
        "batch_size": int(spec.get("batch_size", batch)),
        "learning_rate": float(spec.get("learning_rate", 1e-4)),
        "seed": int(spec.get("seed", 0)),
        "resolution": spec.get("resolution"),
        "target_modules": tuple(spec.get("target_modules", TARGET_MODULES)),
        # TrainJob checks and converts the defences' values (YAML's .inf is a float already)
        **{key: spec[key] for key in ("augment", "dp_epsilon", "dp_delta", "dp_clip") if key in spec},
    }
    if params["steps"] < 1 or not 1 <= params["snapshot_every"] <= params["steps"]:
        raise GridError(f"range {range_name!r}: need steps >= 1 and 1 <= snapshot_every <= steps")
    backbones = _str_list(spec.get("backbones"), "backbones")
    ranks = [int(r) for r in _as_list(spec.get("ranks", [8]), "ranks")]
    sizes = [int(n) for n in _as_list(spec.get("sizes", list(RANGES[range_name])), "sizes")]
    micros = expand_micro_datasets(spec.get("micro_datasets"), pool_concepts)
    try:
        return [
            TrainJob(bb, range_name, n, micro, rank=rank, **params)
            for bb in backbones
            for rank in ranks
            for micro in micros
            for n in sizes
        ]
    except (TypeError, ValueError) as exc:  # a defence's value (TrainJob.__post_init__)
        raise GridError(f"range {range_name!r}: {exc}") from None


def expand_micro_datasets(spec: Any, pool_concepts: list[str] | None = None) -> list[str]:
    """Turn a micro-dataset spec into the list of micro-dataset strings the trainer understands.

    - a list of strings: taken as is, except globs over the pool (``pool:photo-*``), which become
      every matching pool concept in pool order (none matching is an error);
    - ``"pool:*"``: every concept of the offline pool; ``{pool: N}``: its first N concepts;
    - ``{glob: "${IMAGENET_ROOT}/n*", kind: imagenet, count: 50}``: matching folders, sorted,
      as ``imagenet:<folder>`` (environment variables are expanded, so presets stay portable).
    """
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return [m for item in spec for m in _expand_item(item, pool_concepts)]
    if isinstance(spec, dict) and set(spec) == {"pool"}:
        concepts = pool_concepts_or_load(pool_concepts)
        count = int(spec["pool"])
        if count > len(concepts):
            raise GridError(f"asked for {count} pool concepts, the pool has {len(concepts)}")
        return [_pool_spec(c) for c in concepts[:count]]
    if isinstance(spec, dict) and "glob" in spec:
        _check_keys(spec, {"glob", "kind", "count"}, "micro_datasets")
        return _glob_micros(str(spec["glob"]), str(spec.get("kind", "folder")), spec.get("count"))
    raise GridError(
        "'micro_datasets' must be a list of specs, 'pool:*', {pool: N} or {glob: PATTERN, kind: K, count: N}"
    )


def _expand_item(item: str, pool_concepts: list[str] | None) -> list[str]:
    if not (item.startswith("pool:") and any(ch in item for ch in "*?[")):
        return [item]
    found = [c for c in pool_concepts_or_load(pool_concepts) if matches(_pool_spec(c), [item])]
    if not found:
        raise GridError(
            f"no pool concept matches {item!r} (the pool's concepts: lora_wise.factory.pool.concepts())"
        )
    return [_pool_spec(c) for c in found]


def _pool_spec(concept: str) -> str:
    return concept if concept.startswith("pool:") else f"pool:{concept}"


def _glob_micros(pattern: str, kind: str, count: int | None) -> list[str]:
    expanded = os.path.expandvars(os.path.expanduser(pattern))
    folders = sorted(p for p in globlib.glob(expanded) if os.path.isdir(p))
    if not folders:
        hint = " (set the environment variable it names)" if "$" in expanded else ""
        raise GridError(f"no micro-dataset folder matches {pattern!r}{hint}")
    if count is not None:
        if int(count) > len(folders):
            raise GridError(f"asked for {count} micro-datasets, {pattern!r} matches only {len(folders)}")
        folders = folders[: int(count)]
    return [f"{kind}:{os.path.abspath(p)}" for p in folders]


def pool_concepts_or_load(pool_concepts: list[str] | None) -> list[str]:
    """The offline pool's concept names, from the argument or from ``lora_wise.factory.pool``."""
    if pool_concepts is not None:
        return list(pool_concepts)
    from lora_wise.factory import pool  # the pool's images load lazily; only its names are needed here

    return list(pool.concepts())


def _check_keys(mapping: Any, allowed: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise GridError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _as_list(value: Any, key: str) -> list:
    if value is None:
        raise GridError(f"the grid needs {key!r}")
    return value if isinstance(value, list) else [value]


def _str_list(value: Any, key: str) -> list[str]:
    return [str(v) for v in _as_list(value, key)]
