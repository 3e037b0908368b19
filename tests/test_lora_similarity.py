"""scripts/lora_similarity.py: LoRA cosines from r×r products equal the dense ΔW computation."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from estimator_helpers import write_factory_folder

from lora_wise import read_lora

SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "lora_similarity.py"))


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    out = tmp_path_factory.mktemp("factory")
    write_factory_folder(out, concepts=3, sizes=(1, 10, 20), steps=(100,), rank=4)
    return out


def dense_inner(x, y) -> float:
    return sum(float(np.sum((lx.scale * lx.up @ lx.down).astype(np.float64) * (y.layers[n].scale * y.layers[n].up @ y.layers[n].down)))
               for n, lx in x.layers.items())  # fmt: skip


def test_inner_product_from_rank_factors_equals_the_dense_one(factory):
    files = sorted(factory.rglob("step-00100.safetensors"))
    x, y = read_lora(files[0]), read_lora(files[-1])
    assert SCRIPT["inner"](x, y) == pytest.approx(dense_inner(x, y), rel=1e-6)
    assert SCRIPT["inner"](x, x) == pytest.approx(dense_inner(x, x), rel=1e-6)


def test_report_per_concept_and_overall(factory, capsys):
    assert SCRIPT["main"]([str(factory), "--step", "100", "--json", "--micro-datasets", "pool:concept-[01]"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["models"] == 6 and [r["micro_dataset"] for r in result["concepts"]] == ["pool:concept-0", "pool:concept-1"]
    for r in result["concepts"]:
        assert r["sizes"] == [1, 10, 20] and r["cosine_to_largest"][-1] == pytest.approx(1.0)
        assert r["norm_to_smallest"][0] == pytest.approx(1.0) and r["norm_to_smallest"][-1] < 1  # B shrinks with size
    assert -1 <= result["same_size_other_concept"] <= 1 and -1 <= result["same_concept_other_size"] <= 1
    assert SCRIPT["main"]([str(factory), "--step", "900"]) == 2  # nothing at that step: one line, exit 2
