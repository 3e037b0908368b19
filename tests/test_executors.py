"""The executors: every path runs real tasks (real processes, a real local Ray instance)."""

from __future__ import annotations

import os

import executors_helpers as h
import pytest

from lora_wise.errors import ExecutorError
from lora_wise.executors import parse_shard, run_tasks, select_shard, shard_of


def test_inprocess_returns_results_in_task_order_and_reports_each():
    seen = []
    results = run_tasks(h.square, [3, 1, 2], progress=seen.append)
    assert [r.value for r in results] == [9, 1, 4]
    assert sorted(r.index for r in seen) == [0, 1, 2]


@pytest.mark.parametrize("executor,workers", [("inprocess", 1), ("pool", 2)])
def test_a_failing_task_is_reported_and_the_others_complete(executor, workers):
    results = run_tasks(h.fail_on_three, [1, 2, 3, 4, 5], executor=executor, workers=workers)
    assert [r.ok for r in results] == [True, True, False, True, True]
    bad = results[2]
    assert bad.error == "ValueError: three is not allowed"  # one line
    assert "Traceback" in bad.details
    assert [r.value for r in results if r.ok] == [1, 2, 4, 5]


def test_pool_workers_are_other_processes_with_one_torch_thread():
    results = run_tasks(h.worker_facts, list(range(4)), executor="pool", workers=2)
    facts = [r.value for r in results]
    assert all(f["threads"] == 1 and f["omp"] == "1" for f in facts)
    assert os.getpid() not in {f["pid"] for f in facts}


def test_pool_survives_a_worker_process_that_dies():
    seen = []
    results = run_tasks(h.die_on_two, [0, 1, 2, 3, 4, 5], executor="pool", workers=2, progress=seen.append)
    assert [r.ok for r in results] == [True, True, False, True, True, True]
    assert "died" in results[2].error
    assert sorted(r.index for r in seen) == list(range(6))  # each task reported exactly once


def test_shards_partition_the_tasks_stably():
    keys = [f"low-tiny_sd-r8/pool-c{i}/n{n:04d}" for i in range(50) for n in range(1, 7)]
    shards = [select_shard(keys, (i, 4), key=str) for i in range(4)]
    assert sorted(sum(shards, [])) == sorted(keys)  # disjoint and complete
    assert all(40 <= len(s) <= 110 for s in shards)  # roughly balanced
    # stable: a key's shard does not depend on what else is in the list
    assert select_shard(keys[::-1][:100], (1, 4), key=str) == [k for k in keys[::-1][:100] if k in shards[1]]
    assert shard_of(keys[0], 4) == shard_of(keys[0], 4)


def test_run_tasks_with_a_shard_runs_only_that_shard():
    tasks = list(range(20))
    got = [r.value for r in run_tasks(h.square, tasks, shard=(1, 3))]
    assert got == [t * t for t in tasks if shard_of(str(t), 3) == 1]


@pytest.mark.parametrize("text", ["3", "4/4", "-1/2", "a/b", "1/0"])
def test_bad_shard_texts_are_refused(text):
    with pytest.raises(ExecutorError):
        parse_shard(text)


def test_unknown_executor_is_refused():
    with pytest.raises(ExecutorError, match="unknown executor"):
        run_tasks(h.square, [1], executor="threads")


def test_ray_local_instance_runs_tasks_and_reports_failures():
    ray = pytest.importorskip("ray")
    # The helpers module lives in tests/, which Ray's workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(h)
    results = run_tasks(h.fail_on_three, [2, 3], executor="ray", ray_address="local", workers=2)
    assert [r.ok for r in results] == [True, False]
    assert results[0].value == 2 and results[1].error.startswith("ValueError")
    assert not ray.is_initialized()  # the instance we started is shut down
