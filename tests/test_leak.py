"""The attack end to end on the committed emoji fixture: real tiny-sd factory LoRAs, offline."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import tiny

from lora_wise.cli.app import cli as lora_wise_cli
from lora_wise.cli.tools import run as cli_run
from lora_wise.errors import InvalidLoraFile
from lora_wise.factory import emoji_sources as es
from lora_wise.leak import embedding as em
from lora_wise.leak.apply import bank_applied
from lora_wise.leak.attack import AttackTraining
from lora_wise.leak.encoder import load_encoder
from lora_wise.leak.run import (
    ORACLE,
    create_run,
    evaluate_run,
    noisy_views,
    open_run,
    own_view_losses,
    train_run,
)
from lora_wise.leak.victims import Recipe, load_lora
from scanner.cli import cli as scan_cli

FIXTURES = Path(__file__).parent / "data" / "emoji"
RECIPE = Recipe(steps=4, snapshot_every=2, learning_rate=1e-2, group_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LORA_WISE_CACHE", str(cache))
    es.source_images.cache_clear()
    for name, s in es.SOURCES.items():
        es.materialise(name, FIXTURES / f"{s.package}-{s.version}-mini.tgz")
    tiny()  # one-thread tiny-sd, shared with the trainer tests
    root = tmp_path_factory.mktemp("leak")
    create_run(root, 8, RECIPE)
    yield open_run(root)
    es.source_images.cache_clear()
    mp.undo()


def test_run_trains_victims_and_shadows_with_their_own_token(run):
    assert [i.split for i in run.identities].count("victim") == 2
    side = json.loads(run.final(run.identities[0]).with_suffix(".json").read_text())
    assert side["recipe"]["instance_prompt"] == run.identities[0].prompt
    assert sorted(side["recipe"]["target_modules"]) == ["to_q", "to_v"]


def test_a_run_resumes_only_under_the_recipe_it_started_with(run):
    """Finished LoRAs are skipped by job id, which names neither rate nor seed: another recipe in the
    same folder would be recorded over LoRAs it did not train, so it is refused, the folder untouched."""
    from lora_wise.errors import LeakError

    saved = (run.root / "recipe.json").read_text()
    with pytest.raises(LeakError, match=r"another recipe: learning_rate 0\.01 \(asked 0\.02\); use a new"):
        create_run(run.root, 8, replace(RECIPE, learning_rate=2e-2))
    with pytest.raises(LeakError, match="victim_seeds False"):
        create_run(run.root, 8, replace(RECIPE, victim_seeds=True))
    assert (run.root / "recipe.json").read_text() == saved
    assert create_run(run.root, 8, RECIPE).recipe == run.recipe  # the same recipe resumes (nothing to train)


def test_victim_seeds_are_each_victims_own_and_the_shadows_keep_the_runs(run):
    from lora_wise.leak.victims import identity_jobs

    assert {job.seed for job in run.jobs.values()} == {RECIPE.seed}  # docs/leak.md's runs: one seed
    own = identity_jobs(run.identities, run.root, replace(RECIPE, victim_seeds=True))
    victims = [i.key for i in run.split("victim")]
    seeds = [own[k].seed for k in victims]
    assert len(set(seeds)) == len(seeds) and RECIPE.seed not in seeds
    # the shadows' jobs are the shared-seed run's, so both runs share their shadows and attack
    assert all(own[i.key] == run.jobs[i.key] for i in run.split("shadow"))
    # a hash of the key: the same in a run holding fewer identities, another under another run seed
    part = identity_jobs(run.split("victim")[::-1], run.root, replace(RECIPE, victim_seeds=True))
    assert all(part[k].seed == own[k].seed for k in victims)
    other = identity_jobs(run.identities, run.root, replace(RECIPE, victim_seeds=True, seed=1))
    assert all(other[k].seed != own[k].seed for k in victims)


def test_bank_rows_match_diffusers_loading_each_lora(run):
    files = [run.final(i) for i in run.identities[:2]]
    loras = [load_lora(f) for f in files]
    bb = tiny()
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, emb = torch.tensor([500] * 3), bb.encode_prompt("a photo of emoji")[0].expand(3, -1, -1)
    with torch.no_grad(), bank_applied(bb.unet, loras, 1.0) as state:
        state["index"] = torch.tensor([0, 1, 2])
        rows = bb.unet(x, t, emb).sample
    pipe = bb.pipeline()
    with torch.no_grad():
        assert torch.allclose(rows[0], pipe.unet(x[:1], t[:1], emb[:1]).sample[0], atol=1e-5)
    for j, f in enumerate(files):
        pipe.load_lora_weights(str(f), adapter_name=f"t{j}")
        try:
            with torch.no_grad():
                want = pipe.unet(x[j + 1 : j + 2], t[:1], emb[:1]).sample[0]
            assert torch.allclose(rows[j + 1], want, atol=1e-4)
            assert not torch.allclose(rows[j + 1], rows[0], atol=1e-4)
        finally:
            pipe.unload_lora_weights()


def test_train_and_evaluate_write_attack_tables_and_grid(run, capsys):
    assert (
        cli_run(
            lora_wise_cli, ["leak", "train", str(run.root), "--iterations", "3", "--batch", "4", "--json"]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    paths = {name: Path(h["path"]) for name, h in trained.items()}
    model, header = load_encoder(paths["attack"])
    assert header["backbone"] == "tiny-sd" and header["training"]["shadows"] == 6
    assert header["config"]["use_step"] and not load_encoder(paths["attack-nostep"])[1]["config"]["use_step"]
    a, b = (load_lora(run.final(i)) for i in run.identities[:2])
    with torch.no_grad():
        ca, cb = model([a, b], torch.tensor([4, 4]))
        assert ca.shape == (77, 32)
        assert not torch.allclose(ca, cb)  # the conditioning depends on the weights
        assert not torch.allclose(model([a], torch.tensor([2])), model([a], torch.tensor([4])))
    assert (
        cli_run(
            lora_wise_cli,
            [
                "leak",
                "evaluate",
                str(run.root),
                "--k",
                "2",
                "--permutations",
                "20",
                "--loss-diagnostic",
                "--json",
            ],
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and result["victims"] == 2 and result["guidance"] == 1.0
    spread = result["conditioning_spread"]
    assert spread["true prompt"] > 0 and spread["attack"] > 0  # two victims, two distinct conditionings
    assert (
        "oracle (true prompt)" in result["arms"]
        and "nearest shadow by spectra (its images)" in result["arms"]
    )
    for arm in result["arms"].values():
        assert 0.0 <= arm["top1"] <= 1.0 and arm["chance"] == 0.5
        assert arm["top1_ci"][0] <= arm["top1"] <= arm["top1_ci"][1]
        assert 1 / 21 <= arm["p_permutation"] <= 1.0
    assert Image.open(run.root / "leak-grid.png").size == (64 * (1 + 2 + 2) + 16, 64 * 2)  # k = 2
    assert json.loads((run.root / "evaluation.json").read_text())["k"] == 2
    diag = result["loss_identification"]["arms"]
    for arm in ("true prompt", "empty prompt"):
        for kind in ("absolute", "relative"):
            assert 0.0 <= diag[arm][kind]["top1"] <= 1.0 and 1 / 21 <= diag[arm][kind]["p_permutation"] <= 1.0

    # the human form prints the same (seeded) figures: the arms' table and the utility line
    evaluate = ["leak", "evaluate", str(run.root), "--k", "2", "--permutations", "20"]
    assert cli_run(lora_wise_cli, evaluate) == 0
    text = " ".join(capsys.readouterr().out.split())
    u = result["utility"]
    assert "2 victims, N = 2 candidates, K = 2 images" in text and "oracle (true prompt)" in text
    assert (
        f"utility: denoising loss on their own views {u['victim_loss']:.4f} (base {u['base_loss']:.4f})"
        in text
    )
    assert (
        f"gain {u['gain']:.3f}; fidelity (oracle top-1) {result['arms']['oracle (true prompt)']['top1']:.2f}"
        in text
    )


def test_lora_scan_leak_grid_and_candidates(run, capsys, tmp_path):
    if not (run.root / "attack.safetensors").is_file():
        train_run(run.root, AttackTraining(iterations=2, batch=4))
    victim = run.split("victim")[0]
    args = [
        "leak",
        str(run.final(victim)),
        "--attack",
        str(run.root / "attack.safetensors"),
        "--candidates",
        str(run.root / "identities"),
        "--out",
        str(tmp_path / "g.png"),
        "--k",
        "3",
        "--json",
    ]
    assert cli_run(scan_cli, args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == RECIPE.steps  # read from the file's own header
    assert Image.open(tmp_path / "g.png").size == (64 * 6 + 8, 64)
    ranked = report["candidates"]
    assert sorted(r["candidate"] for r in ranked) == sorted(i.key for i in run.identities)
    assert [r["rank"] for r in ranked] == list(range(1, 9))
    assert all(a["similarity"] >= b["similarity"] for a, b in zip(ranked, ranked[1:], strict=False))
    bogus = tmp_path / "not-a-lora.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    assert cli_run(scan_cli, ["leak", str(bogus), "--attack", str(run.root / "attack.safetensors")]) == 2
    assert cli_run(scan_cli, ["leak", str(run.final(victim)), "--attack", str(run.final(victim))]) == 2
    assert "not a lora-wise leak attack" in " ".join(capsys.readouterr().err.split())


def test_attack_loader_refuses_a_lora_file(run):
    with pytest.raises(InvalidLoraFile, match="not a lora-wise leak attack"):
        load_encoder(run.final(run.identities[0]))


def test_embedding_identifies_real_views_and_intervals_cover():
    rng = np.random.default_rng(0)
    views = [
        np.clip(rng.integers(0, 255, (1, 1, 1, 3)) + rng.normal(0, 5, (5, 64, 64, 3)), 0, 255).astype(
            np.uint8
        )
        for _ in range(10)
    ]
    assert em.validate_embedding(views, n=10, trials=3).top(1) == 1.0  # ten distinct colours
    lo, hi = em.wilson(0.3, 30)
    assert lo < 0.3 < hi and em.wilson(0.0, 10)[0] == 0.0


def test_guidance_is_classifier_free_through_each_rows_own_unet(run):
    from lora_wise.leak.attack import generate

    bb, loras = tiny(), [load_lora(run.final(i)) for i in run.identities[:2]]
    index = torch.tensor([1, 2, 0])  # two victims' UNets and the base model
    c = bb.encode_prompt(run.identities[0].prompt)[0][0]
    cond = c.expand(3, -1, -1)
    plain = generate(bb, loras, run.scale, index, cond, steps=3).astype(int)
    # against the conditioning itself, eps(u) + g (eps(c) - eps(u)) is eps(c): the same pictures
    same = generate(bb, loras, run.scale, index, cond, steps=3, guidance=5.0, uncond=c).astype(int)
    assert np.abs(same - plain).max() <= 1  # uint8 rounding of float-equal latents
    guided = generate(bb, loras, run.scale, index, cond, steps=3, guidance=5.0).astype(int)  # vs empty
    assert np.abs(guided - plain).mean() > 1
    assert generate(bb, loras, run.scale, index, cond, steps=3, guidance=1.0).tolist() == plain.tolist()


def test_leak_ceiling_scores_the_oracle_and_its_baselines(run, capsys):
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "leak_ceiling.py"))
    png = run.root / "ceiling.png"
    r = script["ceiling"](run.root, identities=8, k=1, n=4, guidance=1.0, permutations=10, png=png)
    assert Image.open(png).size == (64 * 2 + 8, 64 * 8)  # a real view | K = 1 picture, 8 identities
    assert r["identities"] == 8 and set(r["arms"]) == {
        "true prompt (oracle)",
        "class prompt, no trigger",
        "base model, true prompt",
    }
    assert all(0 <= a["top1"] <= a["top5"] <= 1 and a["chance"] == 0.25 for a in r["arms"].values())
    assert -1 < r["utility_gain"] < 1
    with pytest.raises(SystemExit, match="fewer than N = 10"):
        script["ceiling"](run.root, identities=8, k=1, n=10, guidance=1.0, permutations=10)


@pytest.mark.parametrize("backbone", ["tiny-sd", "tiny-sd-v2"])
def test_packaged_attack_fits_its_backbones_to_q_to_v(backbone):
    from lora_wise.factory.train import target_module_names
    from lora_wise.leak.scan import packaged_attack

    model, header = load_encoder(packaged_attack(backbone))
    assert header["backbone"] == backbone and header["config"]["use_step"]
    assert list(model.cfg.layers) == sorted(
        target_module_names(tiny().unet, ("to_q", "to_v"))
    )  # v2: v1's shapes
    assert packaged_attack(backbone).stat().st_size < 1_000_000


def _evaluated(run) -> dict:
    """The fixture run's evaluation.json (trained and evaluated here if no earlier test did)."""
    if not (run.root / "evaluation.json").is_file():
        if not (run.root / "attack.safetensors").is_file():
            train_run(run.root, AttackTraining(iterations=2, batch=4))
        evaluate_run(run.root, k=2, permutations=10)
    return json.loads((run.root / "evaluation.json").read_text())


def _report_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "leak_report", Path(__file__).parents[1] / "scripts/leak_report.py"
    )
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_report_fills_the_marked_section_only(run, tmp_path):
    _evaluated(run)
    report = _report_module()
    doc = tmp_path / "leak.md"
    doc.write_text(f"# head\n{report.BEGIN}\nold\n{report.END}\ntail\n")
    assert report.main([str(run.root), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# head\n") and text.endswith("tail\n") and "old" not in text
    assert "| oracle (true prompt) |" in text and "Against the issue's targets" in text
    assert "Utility: each victim's LoRA denoises its own 5 real views" in text
    assert not (tmp_path / "leak").exists()  # one run: no defence plot
    (tmp_path / "bare.md").write_text("no markers")
    assert report.main([str(run.root), "--doc", str(tmp_path / "bare.md")]) == 2


def test_utility_is_the_victims_denoising_gain_over_the_same_base(run):
    ev = _evaluated(run)
    u, victims = ev["utility"], run.split("victim")
    per = u["per_victim"]
    assert [v["key"] for v in per] == [v.key for v in victims] and u["views"] == 5
    for v in per:
        assert all(np.isfinite([v["victim_loss"], v["base_loss"], v["gain"]])) and v["base_loss"] > 0
        assert v["gain"] == pytest.approx(1 - v["victim_loss"] / v["base_loss"], rel=1e-9)
        assert v["victim_loss"] != v["base_loss"]  # the LoRA moves the loss
    for key in ("victim_loss", "base_loss", "gain"):
        assert u[key] == pytest.approx(np.mean([v[key] for v in per]))
    # views drawn from the VAE posterior, as the LoRAs were trained: fine-tuning on them helps on them
    # (scored on the posterior means instead, tiny-sd-v2's trained LoRAs lost 2-20 % to the base)
    assert all(v["gain"] > 0 for v in per), per
    assert u["fidelity"] == {"arm": ORACLE, "top1": ev["arms"][ORACLE]["top1"]}
    assert ev["defence_record"] == {}  # undefended
    # the base loss again, independently: each victim's views with the OTHER victim's LoRA in the bank
    # (its own rows at bank entry 0) must give the base loss the evaluation got with no LoRA at all
    bb = tiny()
    loras = [load_lora(run.final(v)) for v in victims]
    conds = torch.cat([bb.encode_prompt(v.prompt)[0] for v in victims])
    views = noisy_views(bb, victims, u["timesteps"], u["seed"])
    first = own_view_losses(bb, views, [loras[0], None], run.scale, conds)
    second = own_view_losses(bb, views, [None, loras[1]], run.scale, conds)
    assert second[0] == pytest.approx(per[0]["base_loss"], rel=1e-5)
    assert first[1] == pytest.approx(per[1]["base_loss"], rel=1e-5)
    assert first[0] == pytest.approx(per[0]["victim_loss"], rel=1e-5)
    assert second[1] == pytest.approx(per[1]["victim_loss"], rel=1e-5)


def test_report_of_several_runs_aggregates_seeds_by_defence_and_plots(run, tmp_path):
    from scipy.stats import t

    from lora_wise.factory.defences import dp_record

    ev = _evaluated(run)
    flip = tmp_path / "flip-s1"  # a real run under the flip defence, another seed
    create_run(flip, 8, replace(RECIPE, seed=1, defence="flip"), seed=1, workers=2)  # two processes
    assert len(list((flip / "loras").rglob("done.json"))) == 8
    train_run(flip, AttackTraining(iterations=2, batch=4))
    evaluate_run(flip, k=ev["k"], permutations=10)
    assert json.loads((flip / "evaluation.json").read_text())["defence_record"]["augment"]["name"] == "flip"

    def report_input(name: str, recipe: dict, top1: float, p: float, gain: float, record: dict) -> Path:
        """A report-input fixture: the real run's evaluation.json, copied and edited (no LoRAs behind it)."""
        out = tmp_path / name
        out.mkdir()
        fake = json.loads(json.dumps(ev)) | {"recipe": ev["recipe"] | recipe, "defence_record": record}
        fake["arms"]["attack"] |= {"top1": top1, "p_permutation": p}
        fake["utility"]["gain"] = gain
        (out / "evaluation.json").write_text(json.dumps(fake))
        (out / "recipe.json").write_text(json.dumps(fake["recipe"]))
        return out

    dp = {"dp": dp_record(replace(RECIPE, defence="dp:10").job("folder:x", 5), RECIPE.steps)}
    extra = [
        report_input("none-s1", {"seed": 1}, 0.4, 0.3, 0.05, {}),
        report_input("none-s2", {"seed": 2}, 0.6, 0.02, 0.07, {}),
        report_input("dp10-s0", {"defence": "dp:10"}, 0.5, 0.5, 0.01, dp),
        report_input("vseeds-s0", {"victim_seeds": True}, 0.1, 0.9, 0.06, {}),  # seed 0 again, own group
    ]
    older = json.loads((extra[0] / "evaluation.json").read_text())  # evaluated before the spread was
    del older["conditioning_spread"]
    del older["recipe"]["victim_seeds"]  # and before the recipe had the field: its default, comparable
    (extra[0] / "evaluation.json").write_text(json.dumps(older))
    report = _report_module()
    doc = tmp_path / "leak.md"
    doc.write_text(f"# head\n{report.BEGIN}\n{report.END}\n")
    roots = [str(p) for p in (extra[2], flip, run.root, extra[3], *extra[:2])]
    assert report.main(roots + ["--doc", str(doc)]) == 0
    text = doc.read_text()
    # none: the hand-computed mean and Student-t interval over the three seeds' top-1, clipped to [0, 1]
    top1 = np.array([ev["arms"]["attack"]["top1"], 0.4, 0.6])
    half = t.ppf(0.975, 2) * top1.std(ddof=1) / np.sqrt(3)
    lo, hi = max(0.0, top1.mean() - half), min(1.0, top1.mean() + half)
    p_max, top5 = max(ev["arms"]["attack"]["p_permutation"], 0.3), ev["arms"]["attack"]["top5"]
    none_part = text[text.index("Defence `none`, 3") : text.index("Defence `none`, own victim seeds")]
    assert f"| attack | {top1.mean():.2f} | {lo:.2f}-{hi:.2f} | {top5:.2f} | {p_max:.4f} |" in none_part
    # per seed: each run's own figures, the spread where it was recorded
    spread, a0 = ev["conditioning_spread"], ev["arms"]["attack"]
    oracle, valid = ev["arms"][ORACLE]["top1"], ev["embedding_validation"]["top1"]
    assert (
        f"| 0 | {a0['top1']:.2f} ({a0['p_permutation']:.4f}) | {oracle:.2f} | {valid:.2f} "
        f"| {spread['attack']:.4f} / {spread['true prompt']:.4f} |"
    ) in none_part
    assert f"| 1 | 0.40 (0.3000) | {oracle:.2f} | {valid:.2f} | not recorded |" in none_part
    gains = np.array([ev["utility"]["gain"], 0.05, 0.07])
    g_half = t.ppf(0.975, 2) * gains.std(ddof=1) / np.sqrt(3)
    row = f"| `none` | 3 | {top1.mean():.2f} ({lo:.2f}-{hi:.2f}) | {oracle:.2f} | {gains.mean():.3f} "
    assert row + f"({gains.mean() - g_half:.3f} to {gains.mean() + g_half:.3f}) | no DP |" in text
    # grouped by the recipe's defence, none first, then flip, then DP, each before its own-victim-seeds
    # runs (apart: they differ in how the victims were seeded, not in seed alone); one seed: Wilson
    assert (
        text.index("Defence `none`, 3 seeds (0, 1, 2):")
        < text.index("Defence `none`, own victim seeds, 1 seed (0); one seed")
        < text.index("Defence `flip`, 1 seed (1); one seed")
    )
    assert text.index("| `none`, own victim seeds | 1 | 0.10 (") < text.index("| `flip` | 1 |")
    assert text.index("| `flip` | 1 |") < text.index("| `dp:10` | 1 | 0.50 (")
    sigma = dp["dp"]["noise_multiplier"]
    assert f"ε = 10, δ = 1e-05, σ = {sigma:.2f}, C = 1, q = 0.20, {RECIPE.steps} steps (opacus" in text
    assert "Undefended runs (`none`):" in text and f"largest p of 3 seeds = {p_max:.4f}" in text
    # and the seeds' p combined by Fisher's method, computed here by hand: -2 sum ln p ~ chi2(2 seeds)
    from scipy.stats import chi2

    ps = np.array([ev["arms"]["attack"]["p_permutation"], 0.3, 0.02])
    fisher = chi2.sf(-2 * np.log(ps).sum(), 2 * len(ps))
    assert fisher > 1e-4 and f"combined by Fisher's method {fisher:.4f}" in text
    assert f"| {p_max:.4f} | {fisher:.4f} |" in none_part
    assert "![leak against utility, per defence](leak/defences.png)" in text
    assert Image.open(tmp_path / "leak" / "defences.png").format == "PNG"
    summary = report.summarise(
        [json.loads((r / "evaluation.json").read_text()) for r in (run.root, *extra[:2])]
    )
    assert summary["attack"].top1 == pytest.approx(top1.mean()) and summary["attack"].ci == pytest.approx(
        (lo, hi)
    )
    # runs of another recipe are refused, not averaged in
    other = report_input("other", {"seed": 3, "steps": 8}, 0.5, 0.5, 0.0, {})
    assert report.main([str(run.root), str(other), "--doc", str(doc)]) == 2


def test_lora_scan_leak_refuses_a_lora_of_another_base_with_the_same_shapes(capsys, tmp_path):
    """The bundled example is a tiny-sd-v2 LoRA: tiny-sd's shapes, another base. The tiny-sd attack
    would run on it and draw with the wrong UNet; the scan says so in one line instead."""
    from lora_wise.leak.scan import packaged_attack

    example = Path(__file__).resolve().parents[1] / "scanner" / "data" / "example.safetensors"
    out = ["--out", str(tmp_path / "g.png")]
    assert cli_run(scan_cli, ["leak", str(example), "--attack", str(packaged_attack("tiny-sd")), *out]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "a tiny-sd-v2 LoRA, but the attack was trained on tiny-sd LoRAs" in err
    assert not (tmp_path / "g.png").exists()
    # by default it gets the packaged attack of its own backbone
    assert cli_run(scan_cli, ["leak", str(example), *out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"] == "tiny-sd-v2" and (tmp_path / "g.png").is_file()


def test_a_backbone_without_a_packaged_attack_is_one_line():
    from lora_wise.errors import LeakError
    from lora_wise.leak.scan import packaged_attack

    with pytest.raises(LeakError, match="no packaged attack for backbone 'sd15'"):
        packaged_attack("sd15")
