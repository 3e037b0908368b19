"""The paper's protocol, its ablations, the table sources and the ``evaluate`` command."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from estimator_helpers import synthetic_table, write_factory_folder

from lora_wise import evaluation as ev
from lora_wise.cli.evaluate import evaluate as evaluate_command
from lora_wise.errors import InvalidLoraFile, LoraWiseError


@pytest.fixture(scope="module")
def medium():
    return synthetic_table(n_micro=50, seed=7)


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    out = tmp_path_factory.mktemp("factory")
    write_factory_folder(out, concepts=4, sizes=(1, 10, 20), steps=(100, 200), rank=4)
    return out


def test_splits_are_the_papers_random_seed_42_draws():
    names = [f"c{i:02d}" for i in range(50)]
    splits = ev.micro_splits(names, 15, 35, repeats=10)
    random.seed(42)  # what the paper's code did: the global generator, sample per repeat
    for train, test in splits:
        assert train == sorted(random.sample(sorted(names), 15))
        assert len(test) == 35 and not set(train) & set(test)
    assert len({tuple(t) for t, _ in splits}) == 10
    assert ev.micro_splits(names, 15, 35) == splits


def test_split_counts_scale_when_micro_datasets_are_fewer():
    assert ev.split_counts(50) == (15, 35, None)
    assert ev.split_counts(80)[:2] == (15, 35)
    n_train, n_test, note = ev.split_counts(12)
    assert (n_train, n_test) == (4, 8) and "12 micro-datasets" in note
    assert ev.split_counts(12, n_train=1)[:2] == (1, 11)
    with pytest.raises(LoraWiseError):
        ev.split_counts(1)
    with pytest.raises(LoraWiseError):
        ev.split_counts(5, n_train=5)


def test_metrics_by_hand():
    m = ev.metrics(np.array([1, 10, 30, 50]), np.array([1, 20, 30, 40]))
    assert m["mae"] == pytest.approx(5.0)
    assert m["mape"] == pytest.approx((0 + 50 + 0 + 25) / 4)
    assert m["accuracy"] == pytest.approx(50.0)


def test_protocol_ranks_the_methods_and_is_deterministic(medium):
    results = ev.evaluate(medium, ("frobenius-nn", "dsire", "average-vote"), config="syn")
    again = ev.evaluate(medium, ("frobenius-nn", "dsire", "average-vote"), config="syn")
    assert [r.to_dict() for r in results] == [r.to_dict() for r in again]
    by = {r.method: r for r in results}
    assert 100 / 6 + 20 < by["dsire"].accuracy[0] < 100
    assert by["dsire"].accuracy[1] > 0  # repeats differ: the std is real
    assert by["average-vote"].accuracy[0] < by["dsire"].accuracy[0]
    row = by["dsire"].to_dict()
    assert set(row) >= {"method", "config", "mae", "mape", "accuracy"}
    assert set(row["mae"]) == {"mean", "std"} and row["n_train"] == 15 and row["n_test"] == 35
    assert "predictions" not in row


def test_interval_method_reports_coverage(medium):
    (res,) = ev.evaluate(medium, ("interval",), repeats=3)
    assert 50 <= res.extra["interval_coverage"]["mean"] <= 100
    assert res.mae[0] < 15


def test_kinds_ablation_and_training_set_size_ablation(medium):
    rows = ev.ablate_kinds(medium, repeats=3)
    assert [r.method for r in rows] == ["dsire[a]", "dsire[b]", "dsire[ba]", "dsire[a+b+ba]"]
    curve = ev.ablate_n_train(medium, counts=(1, 15), repeats=3)
    assert [r.extra["n_train_micro_datasets"] for r in curve] == [1, 15]
    assert curve[0].n_test == 35


def test_by_step_runs_the_protocol_at_every_snapshot():
    table = synthetic_table(n_micro=10, seed=8, steps=(300, 1200))
    rows = ev.by_condition(table, "step", ("dsire",), repeats=2)
    assert [r.extra["step"] for r in rows] == [300, 1200]
    assert all("step" in " ".join(r.notes) for r in rows)
    with pytest.raises(LoraWiseError):
        ev.by_condition(table, "colour")


def test_cross_condition_shows_what_applicability_is_for():
    table = synthetic_table(n_micro=20, seed=9, steps=(300, 1200))
    report = ev.cross_condition(table, "step", 1200, 300, repeats=3)
    inside, across = report["in"], report["cross"]
    assert across["accuracy"]["mean"] < inside["accuracy"]["mean"]
    assert across["applicability"]["mean"] < 0.2 < inside["applicability"]["mean"]


def test_held_out_size_interval_beats_the_nearest_known_size(medium):
    report = ev.held_out_size(medium, 30, repeats=3)
    assert report["dsire_mae"]["mean"] >= 5  # DSiRe can only answer 20 or 40 (or worse)
    assert report["interval_mae"]["mean"] < report["dsire_mae"]["mean"]
    assert report["coverage"]["mean"] >= 50


def test_confusion_matrix_and_png(medium, tmp_path):
    (res,) = ev.evaluate(medium, ("dsire",), repeats=2)
    labels, counts = ev.confusion(res)
    assert labels.tolist() == [1, 10, 20, 30, 40, 50]
    assert counts.sum() == 2 * 35 * 6
    assert np.trace(counts) / counts.sum() * 100 == pytest.approx(res.accuracy[0])
    path = ev.plot_confusion(res, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_factory_folder_of_real_peft_loras_becomes_a_table(factory):
    table = ev.load_table(factory)
    assert table.a.shape == (4 * 3 * 2, 128, 4)
    assert sorted(set(table.step.tolist())) == [100, 200]
    assert sorted(set(table.size.tolist())) == [1, 10, 20]
    assert table.layers[0].startswith("unet.down_blocks.0.attentions.0")
    # the helper made B's scale fall with size: the norm ordering must survive the round trip
    per_size = [table.fro[(table.size == n) & (table.step == 200)].mean() for n in (1, 10, 20)]
    assert per_size[0] > per_size[1] > per_size[2]
    assert len(ev.load_table(factory, config="medium-tiny_sd-r4")) == 24
    with pytest.raises(LoraWiseError, match="configs found: medium-tiny_sd-r4"):
        ev.load_table(factory, config="low-sd15-r8")


def test_half_written_snapshots_are_skipped_and_bad_sidecars_refused(factory, tmp_path):
    import shutil

    copy = tmp_path / "f"
    shutil.copytree(factory, copy)
    victim = next(copy.rglob("step-00200.safetensors"))
    victim.unlink()  # a killed run: the sidecar without its LoRA is not read
    assert len(ev.table_from_factory(copy)) == 23
    victim.with_suffix(".json").write_text("{broken")
    shutil.copy(next(copy.rglob("step-00100.safetensors")), victim)
    with pytest.raises(InvalidLoraFile, match="not a factory sidecar"):
        ev.table_from_factory(copy)


def test_load_table_reads_built_datasets_and_factory_folders_alike(factory, tmp_path):
    from lora_wise.dataset.build import build_dataset

    build_dataset(factory, tmp_path / "ds")
    direct = ev.load_table(factory)
    config = str(direct.model_id[0]).split("/")[0]
    built = ev.load_table(tmp_path / "ds", config)
    assert len(built) == len(direct)
    order = np.lexsort((built.step, built.model_id))
    ref = np.lexsort((direct.step, np.array([m.split("@")[0] for m in direct.model_id])))
    np.testing.assert_allclose(built.ba[order], direct.ba[ref], rtol=1e-6)
    with pytest.raises(LoraWiseError, match="cannot read spectra"):
        ev.load_table(tmp_path / "missing.parquet-not")


def test_evaluate_command_json_markdown_and_table(factory, tmp_path):
    runner = CliRunner()
    out = runner.invoke(
        evaluate_command, [str(factory), "--json", "--repeats", "3", "--methods", "frobenius-nn,dsire"]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["method"] for r in rows] == ["frobenius-nn", "dsire"]
    for r in rows:
        assert r["config"] and all(set(r[k]) == {"mean", "std"} for k in ("mae", "mape", "accuracy"))
    md = runner.invoke(evaluate_command, [str(factory), "--markdown", "--repeats", "2", "--step", "100"])
    assert md.exit_code == 0 and md.stdout.startswith("| Method | Config |") and "step 100" in md.stdout
    png = tmp_path / "cm.png"
    rich = runner.invoke(evaluate_command, [str(factory), "--repeats", "2", "--confusion", str(png)])
    assert rich.exit_code == 0 and "dsire" in rich.stdout and png.is_file()


def test_micro_dataset_globs_select_concept_families(factory):
    table = synthetic_table(n_micro=6, seed=3)
    picked = ev.select_micro_datasets(table, ["concept-3-00[01]", "concept-3-005"])
    assert sorted(set(picked.micro_dataset)) == ["concept-3-000", "concept-3-001", "concept-3-005"]
    assert len(picked) == 3 * len(set(table.size))
    with pytest.raises(LoraWiseError, match=r"no micro-dataset matches photo-\* \(have: concept-3-000"):
        ev.select_micro_datasets(table, ["photo-*"])
    runner = CliRunner()
    args = [
        str(factory),
        "--micro-datasets",
        "pool:concept-[01]",
        "--n-train",
        "1",
        "--repeats",
        "2",
        "--json",
    ]
    out = runner.invoke(evaluate_command, args)
    assert out.exit_code == 0, out.output
    assert all(r["n_train"] == 1 and r["n_test"] == 1 for r in json.loads(out.stdout))  # 2 of the 4 concepts
    from lora_wise.cli.app import cli
    from lora_wise.cli.tools import run

    assert (
        run(cli, ["evaluate", str(factory), "--micro-datasets", "pool:photo-*"]) == 2
    )  # one line, no traceback
    assert run(cli, ["norms", str(factory), "--micro-datasets", "pool:concept-0", "--json"]) == 0


def test_evaluate_command_reports_and_usage_errors(factory):
    runner = CliRunner()
    cross = runner.invoke(evaluate_command, [str(factory), "--cross", "200:100", "--repeats", "2", "--json"])
    assert cross.exit_code == 0, cross.output
    assert set(json.loads(cross.stdout)) >= {"in", "cross", "fit", "test"}
    bad = runner.invoke(evaluate_command, [str(factory), "--methods", "oracle"])
    assert bad.exit_code == 2 and "unknown" in bad.output
    bad = runner.invoke(evaluate_command, [str(factory), "--kinds", "a,q"])
    assert bad.exit_code == 2 and "--kinds" in bad.output
    bad = runner.invoke(evaluate_command, [str(factory), "--cross", "soon"])
    assert bad.exit_code == 2 and "FIT:TEST" in bad.output


def test_default_step_is_the_papers_evaluated_checkpoint():
    table = synthetic_table(n_micro=3, seed=10, steps=(1000, 1200, 1400))
    assert ev.default_step(table) == 1200  # medium range: the paper evaluates step 1200 of 1400
    assert ev.default_step(table.subset(table.step != 1200)) == 1400
    high = synthetic_table(n_micro=3, seed=10, sizes=(1, 50, 100, 500, 1000), steps=(900, 1000))
    assert ev.default_step(high) == 1000


def test_cross_rank_applicability_falls_for_the_other_rank():
    from lora_wise.spectra.compute import Spectra
    from lora_wise.spectra.table import SpectraTable

    def rows(table):
        return [
            (
                Spectra(table.layers, table.a[i], table.b[i], table.ba[i], table.fro[i], np.ones(128, bool)),
                {
                    "size": table.size[i],
                    "micro_dataset": table.micro_dataset[i],
                    "step": table.step[i],
                    "rank": table.rank[i],
                    "backbone": "tiny-sd",
                },
            )
            for i in range(len(table))
        ]

    r8, r16 = synthetic_table(n_micro=10, seed=14, rank=8), synthetic_table(n_micro=10, seed=14, rank=16)
    both = SpectraTable.from_spectra(rows(r8) + rows(r16))  # rank 8 zero-padded to width 16
    report = ev.cross_condition(both, "rank", 16, 8, repeats=2)
    assert report["cross"]["applicability"]["mean"] < 0.1 < report["in"]["applicability"]["mean"]


def test_reproduce_tables_script_writes_results_and_plots(factory, tmp_path):
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_tables.py"
    main = runpy.run_path(str(script))["main"]
    out = tmp_path / "docs" / "results.md"
    assert main([str(factory), "--config", "medium-tiny_sd-r4", "--out", str(out), "--repeats", "2"]) == 0
    text = out.read_text()
    for heading in (
        "Frobenius-NN vs DSiRe",
        "Choice of classifier",
        "Matrix kinds",
        "Training steps",
        "Training micro-datasets",
        "Sizes never seen",
        "Cross-condition",
        "Diagnostics",
    ):
        assert heading in text
    assert "| dsire |" in text and "1.48 / 3.97 / 86.1" in text  # ours beside the paper's
    assert (tmp_path / "docs" / "results" / "confusion-medium-tiny_sd-r4.png").is_file()
    assert main([str(factory), "--config", "nope", "--out", str(out)]) == 2


def test_norms_command_shows_the_norm_falling_with_size(factory):
    # write_factory_folder scales B down as the size grows, so every concept's norm falls
    from lora_wise.cli.evaluate import norms

    runner = CliRunner()
    out = runner.invoke(norms, [str(factory), "--json"])
    assert out.exit_code == 0, out.output
    trend = json.loads(out.stdout)
    assert trend["step"] == 200 and [r["size"] for r in trend["sizes"]] == [1, 10, 20]
    rel = [r["relative_to_smallest"] for r in trend["sizes"]]
    assert rel[0] == pytest.approx(1.0) and rel[0] > rel[1] > rel[2]
    assert (
        trend["concepts"] == 4
        and trend["concepts_falling"] == 4
        and trend["spearman_median"] == pytest.approx(-1)
    )
    assert trend["concept_known_accuracy"] == 1.0  # every concept falls by the same factors
    shown = runner.invoke(norms, [str(factory), "--step", "100"])
    assert shown.exit_code == 0 and "by dataset size, step 100" in shown.stdout

    from lora_wise.cli.app import cli
    from lora_wise.cli.tools import run

    assert run(cli, ["norms", str(factory / "nope")]) == 2  # a one-line error, no traceback


def test_concept_known_accuracy_drops_when_concepts_disagree_on_the_size_order(factory):
    import dataclasses

    from lora_wise.evaluation import load_table, norm_trend

    table = load_table(factory, "medium-tiny_sd-r4")
    swapped = table.size.copy()
    flip = np.isin(table.micro_dataset, np.unique(table.micro_dataset)[:2]) & (table.size > 1)
    swapped[flip] = 30 - table.size[flip]  # 10 <-> 20 in two of the four concepts
    trend = norm_trend(dataclasses.replace(table, size=swapped))
    assert trend["concept_known_accuracy"] == 0.0  # each concept is outvoted 2 to 1 by the others


@pytest.mark.parametrize("source", ["/nonexistent-lora-wise", "nonexistent-lora-wise/", "./nowhere"])
def test_a_missing_path_is_not_taken_for_a_hub_repo_id(source):
    from lora_wise.dataset.load import is_repo_id

    assert not is_repo_id(source) and is_repo_id("MoSalama98/LoRA-WiSE")
    with pytest.raises(LoraWiseError, match="cannot read spectra from"):
        ev.load_table(source)  # offline and at once, not a failed Hub download


def test_split_by_class_never_puts_one_class_on_both_sides(medium):
    """Two micro-datasets of one class (one subject in two styles) would help each other across a split."""
    micros = sorted(np.unique(medium.micro_dataset).tolist())
    groups = {m: f"class-{i // 2}" for i, m in enumerate(micros)}  # 25 pairs
    splits = ev.protocol_splits(medium, groups=groups)
    assert (splits.n_train, splits.n_test) == (8, 17) and "25 classes" in splits.note
    for in_train, in_test in splits.masks:
        train = {groups[m] for m in medium.micro_dataset[in_train].tolist()}
        test = {groups[m] for m in medium.micro_dataset[in_test].tolist()}
        assert len(train) == 8 and len(test) == 17 and not train & test
        assert not (in_train & in_test).any()
    (res,) = ev.evaluate(medium, ("dsire",), groups=groups)
    assert res.n_train == 8 and any("split by class" in n for n in res.notes)
    plain = ev.protocol_splits(medium)
    assert plain.n_train == 15 and plain.note is None


def test_class_nouns_come_from_the_concept_tables_without_images():
    from lora_wise.factory.micro_datasets import class_noun

    assert class_noun("pool:noto-flag-1") == class_noun("pool:openmoji-flag-2") == "flag"
    assert class_noun("pool:emoji-animal") == "animal"
    assert class_noun("pool:digit-3-ink") == "digit"
    with pytest.raises(LoraWiseError):
        class_noun("pool:no-such-concept")


def test_split_by_class_needs_known_classes(factory, capsys):
    """The fixture's micro-datasets name no real concept: one clear line, not a traceback."""
    from lora_wise.cli.app import cli
    from lora_wise.cli.tools import run

    code = run(cli, ["evaluate", str(factory), "--split-by", "class", "--repeats", "2"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "concept-0" in err and len(err.splitlines()) == 1


def test_split_by_class_calibrates_the_interval_by_class():
    """Twin concepts (one class drawn twice, as v2 pairs Noto and OpenMoji): held out one concept at a
    time, its twin is still in the fit and the residuals look tiny; held out by class they do not."""
    import dataclasses

    from lora_wise.evaluation import _predict
    from lora_wise.spectra.table import SpectraTable

    base = synthetic_table(n_micro=12, seed=31, concept_noise=0.3)
    twin = dataclasses.replace(base, micro_dataset=np.array([m + "-twin" for m in base.micro_dataset]))
    table = SpectraTable.concat([base, twin])
    classes = {m: m.removesuffix("-twin") for m in np.unique(table.micro_dataset).tolist()}
    in_train = np.isin([classes[m] for m in table.micro_dataset], sorted(set(classes.values()))[:8])
    train, test = table.subset(in_train), table.subset(~in_train)
    _, by_concept = _predict("interval", None, train, test)
    _, by_class = _predict("interval", None, train, test, classes)
    assert by_class["coverage"] > by_concept["coverage"]
