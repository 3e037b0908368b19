"""A leak run folder end to end: shadows -> attack weights; victims -> identification tables and utility.

<root>/identities.json  recipe.json  identities/<key>/  loras/   (scripts/leak_pilot.py)
<root>/attack.safetensors, attack-nostep.safetensors            (train_run: lora-wise leak train)
<root>/evaluation.json, leak-grid.png                            (evaluate_run: lora-wise leak evaluate)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_wise.errors import LeakError
from lora_wise.factory.backbones import DiffusionBackbone, load_backbone
from lora_wise.factory.jobs import TrainJob
from lora_wise.factory.snapshots import lora_path
from lora_wise.leak import embedding as em
from lora_wise.leak.apply import Lora, bank_applied
from lora_wise.leak.attack import AttackTraining, Shadow, generate, train_attack
from lora_wise.leak.encoder import LoraEncoder, load_encoder, save_encoder
from lora_wise.leak.identities import (
    Identity,
    build_identities,
    fingerprint,
    load_identities,
    save_identities,
    view_images,
)
from lora_wise.leak.victims import (
    Recipe,
    identity_jobs,
    load_snapshot,
    lora_folder,
    steps_of,
    train_identities,
)

ATTACKS = {"attack": "attack.safetensors", "attack-nostep": "attack-nostep.safetensors"}
ORACLE = "oracle (true prompt)"
UTILITY_TIMESTEPS = 4


@dataclass
class LeakRun:
    root: Path
    identities: list[Identity]
    recipe: Recipe
    jobs: dict[str, TrainJob]

    def split(self, name: str) -> list[Identity]:
        return [i for i in self.identities if i.split == name]

    @property
    def scale(self) -> float:
        return 1.0  # lora_alpha = rank (the factory's recipe)

    def final(self, ident: Identity) -> Path:
        return lora_path(lora_folder(self.root, self.jobs[ident.key]), self.recipe.steps)


def create_run(root: Path, identities: int, recipe: Recipe, seed: int = 0, workers: int = 1) -> LeakRun:
    """Draw the identities, write their views, train every victim and shadow not trained yet (in
    ``workers`` processes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    idents = build_identities(identities, seed=seed, vendors=recipe.vendors)
    if (root / "identities.json").is_file() and load_identities(root / "identities.json") != idents:
        raise LeakError(f"{root} holds another run's identities: use a new folder")
    if (root / "recipe.json").is_file():
        check_same_recipe(Recipe(**json.loads((root / "recipe.json").read_text())), recipe, root)
    save_identities(idents, root / "identities.json")
    (root / "recipe.json").write_text(json.dumps(recipe.__dict__, indent=1))
    run = open_run(root)
    train_identities(run.jobs, root, recipe, workers)
    return run


def check_same_recipe(saved: Recipe, recipe: Recipe, root: Path) -> None:
    """A run resumes only under the recipe it started with: its finished LoRAs are skipped by job id,
    which does not name the steps, rate or seed, so another recipe would be recorded over LoRAs it did
    not train."""
    differ = [
        f"{k} {v!r} (asked {recipe.__dict__[k]!r})"
        for k, v in saved.__dict__.items()
        if recipe.__dict__[k] != v
    ]
    if differ:
        raise LeakError(f"{root} was started with another recipe: {', '.join(differ)}; use a new folder")


def open_run(root: Path) -> LeakRun:
    root = Path(root)
    if not (root / "identities.json").is_file():
        raise LeakError(f"{root} is not a leak run (no identities.json): run scripts/leak_pilot.py first")
    identities = load_identities(root / "identities.json")
    recipe = Recipe(**json.loads((root / "recipe.json").read_text()))
    return LeakRun(root, identities, recipe, identity_jobs(identities, root, recipe))


def shadows_of(run: LeakRun, bb: DiffusionBackbone) -> list[Shadow]:
    out = []
    for ident in run.split("shadow"):
        job = run.jobs[ident.key]
        snaps = [(s, load_snapshot(run.root, job, s)) for s in steps_of(run.root, job)]
        if not snaps:
            continue
        pixels = torch.from_numpy(view_images(ident)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mean, std = bb.encode_images(pixels)
        embeds, _ = bb.encode_prompt(ident.prompt)
        out.append(Shadow(ident.key, snaps, mean, std, embeds[0]))
    return out


def train_run(
    root: Path, train: AttackTraining, progress: Callable[[str, int, int, float], None] | None = None
) -> dict[str, Path]:
    """Train the attack and its no-step ablation on the run's shadows; save both; return their paths."""
    run = open_run(root)
    bb = load_backbone(run.recipe.backbone)
    shadows = shadows_of(run, bb)
    if not shadows:
        raise LeakError(f"{root}: no shadow LoRA trained yet")
    out = {}
    for name, use_step in (("attack", True), ("attack-nostep", False)):
        cfg = AttackTraining(**{**train.__dict__, "use_step": use_step})
        model, summary = train_attack(
            bb,
            shadows,
            run.scale,
            cfg,
            None if progress is None else (lambda i, n, loss, nm=name: progress(nm, i, n, loss)),
        )
        info = {
            "backbone": run.recipe.backbone,
            "recipe": run.recipe.__dict__,
            "training": summary,
            "identities": fingerprint(run.identities),
        }
        out[name] = save_encoder(model, Path(root) / ATTACKS[name], info)
    return out


def predict(model: LoraEncoder, loras: list, steps: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(loras, torch.tensor(steps))


def spectral_nearest(victims: list[Path], shadows: list[Path]) -> list[int]:
    """For each victim, the shadow whose spectra (σ of scale·B·A, every layer) are nearest in L2 (DSiRe's)."""
    from lora_wise.lora.reader import read_lora
    from lora_wise.spectra.compute import compute_spectra

    def vec(p: Path) -> np.ndarray:
        return compute_spectra(read_lora(p)).ba.ravel()

    sh = np.stack([vec(p) for p in shadows])
    return [int(np.argmin(((sh - vec(p)) ** 2).sum(1))) for p in victims]


def evaluate_run(
    root: Path, k: int = 8, n: int = 10, permutations: int = 2000, seed: int = 0, guidance: float = 1.0
) -> dict:
    """Identification of every victim from what each arm generates (``guidance``: classifier-free, against
    the empty prompt), and the victims' utility (their LoRAs' denoising gain over the base on their own
    views); writes evaluation.json and the grid."""
    run = open_run(root)
    bb = load_backbone(run.recipe.backbone)
    victims, shadows = run.split("victim"), run.split("shadow")
    loras = [load_snapshot(run.root, run.jobs[v.key], run.recipe.steps) for v in victims]
    steps = [run.recipe.steps] * len(victims)
    conds = {name: predict(load_encoder(Path(root) / f)[0], loras, steps) for name, f in ATTACKS.items()}
    prompt = {p: bb.encode_prompt(p)[0][0] for p in ("", victims[0].class_prompt)}
    arms = {  # arm -> (bank index per victim: 0 base, j+1 victim j; conditioning per victim)
        "attack": (1, conds["attack"]),
        "attack, no step embedding": (1, conds["attack-nostep"]),
        "empty prompt": (1, [prompt[""]] * len(victims)),
        "class prompt, no trigger": (1, [prompt[victims[0].class_prompt]] * len(victims)),
        "base model, class prompt": (0, [prompt[victims[0].class_prompt]] * len(victims)),
        "base model, attack conditioning": (0, conds["attack"]),
        ORACLE: (1, [bb.encode_prompt(v.prompt)[0][0] for v in victims]),
    }
    images = {arm: generate_arm(bb, loras, run.scale, *how, k, seed, guidance) for arm, how in arms.items()}
    real = [view_images(v) for v in victims]
    galleries = [em.embed(r) for r in real]
    near = spectral_nearest([run.final(v) for v in victims], [run.final(s) for s in shadows])
    queries = {arm: [em.embed(x) for x in imgs] for arm, imgs in images.items()}
    queries["nearest shadow by spectra (its images)"] = [em.embed(view_images(shadows[j])) for j in near]
    table = {arm: score(q, galleries, n, permutations, seed) for arm, q in queries.items()}
    result = {
        "victims": len(victims),
        "shadows": len(shadows),
        "k": k,
        "n": min(n, len(victims)),
        "guidance": guidance,
        "recipe": run.recipe.__dict__,
        "arms": table,
        "embedding_validation": _validation(real, n, seed),
        # a collapsed encoder predicts one conditioning for every victim: its spread across victims
        # (std per entry, averaged) against the true prompts' says so
        "conditioning_spread": {
            name: float(torch.stack(list(c)).std(0).mean())
            for name, c in (("attack", conds["attack"]), ("true prompt", arms[ORACLE][1]))
        },
        "utility": utility(bb, victims, loras, run.scale, torch.stack(arms[ORACLE][1]), seed)
        | {"fidelity": {"arm": ORACLE, "top1": table[ORACLE]["top1"]}},
        "defence_record": defence_record(run.final(victims[0])),
    }
    (Path(root) / "evaluation.json").write_text(json.dumps(result, indent=1))
    write_grid(
        Path(root) / "leak-grid.png", real, images["attack"], images["base model, attack conditioning"]
    )
    return result


def generate_arm(
    bb: DiffusionBackbone, loras: list[Lora], scale: float, own: int, cond, k: int, seed: int, guidance: float
) -> np.ndarray:
    """One arm's K pictures per identity j, (J, K, H, W, 3): through LoRA j (``own`` 1) or the base model
    (``own`` 0), under conditioning ``cond[j]``."""
    index = torch.tensor([(j + 1) * own for j in range(len(loras)) for _ in range(k)])
    c = torch.stack([cond[j] for j in range(len(loras)) for _ in range(k)])
    images = generate(bb, loras, scale, index, c, seed=seed, guidance=guidance)
    return images.reshape(len(loras), k, *images.shape[1:])


def score(
    queries: list[np.ndarray], galleries: list[np.ndarray], n: int, permutations: int, seed: int
) -> dict:
    """Top-1/top-5 among n candidates (the victim and n-1 other victims), Wilson 95 %, permutation p."""
    ident = em.identify(queries, galleries, n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    observed = ident.top(1)
    null = []
    for _ in range(permutations):  # victim weights (their generations) shuffled against identities
        perm = rng.permutation(len(queries))
        null.append(em.identify([queries[i] for i in perm], galleries, n, seed=seed).top(1))
    null = np.array(null)
    trials = len(ident.ranks)
    return {
        "top1": observed,
        "top1_ci": em.wilson(observed, trials),
        "top5": ident.top(5),
        "top5_ci": em.wilson(ident.top(5), trials),
        "chance": ident.chance,
        "trials": trials,
        "null_mean_top1": float(null.mean()),
        "p_permutation": float((1 + (null >= observed).sum()) / (1 + len(null))),
    }


def _validation(real: list[np.ndarray], n: int, seed: int) -> dict:
    v = em.validate_embedding(real, n=n, seed=seed)
    return {"top1": v.top(1), "top5": v.top(5), "chance": v.chance, "trials": len(v.ranks)}


def write_grid(
    path: Path, real: list[np.ndarray], recovered: np.ndarray, base: np.ndarray, per_row: int = 4
) -> Path:
    """One row per victim: a real view | the attack's recovery (per_row) | base model, same conditioning."""
    from PIL import Image

    rows = []
    for r, rec, b in zip(real, recovered, base, strict=True):
        gap = np.full((64, 8, 3), 255, np.uint8)
        rows.append(np.concatenate([r[0], gap, *rec[:per_row], gap, *b[:per_row]], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def utility(
    bb: DiffusionBackbone,
    victims: list[Identity],
    loras: list[Lora],
    scale: float,
    conds: torch.Tensor,
    seed: int,
) -> dict:
    """Each victim's LoRA's denoising loss on its own views under its true prompt (``conds``), against the
    base model's on the same views, noise and timesteps; gain = 1 - victim / base, per victim."""
    views = noisy_views(bb, victims, UTILITY_TIMESTEPS, seed)
    own = own_view_losses(bb, views, loras, scale, conds)
    base = own_view_losses(bb, views, [None] * len(victims), scale, conds)
    gain = 1.0 - own / base
    return {
        "timesteps": UTILITY_TIMESTEPS,
        "views": views.rows // UTILITY_TIMESTEPS,
        "seed": seed,
        "victim_loss": float(own.mean()),
        "base_loss": float(base.mean()),
        "gain": float(gain.mean()),
        "per_victim": [
            {"key": v.key, "victim_loss": float(o), "base_loss": float(b), "gain": float(g)}
            for v, o, b, g in zip(victims, own, base, gain, strict=True)
        ],
    }


def defence_record(lora: Path) -> dict:
    """The defence entries (``augment``, ``dp``: ε, δ, σ, C, q, steps, accountant) of a LoRA's sidecar."""
    recipe = json.loads(lora.with_suffix(".json").read_text())["recipe"]
    return {k: recipe[k] for k in ("augment", "dp") if k in recipe}


@dataclass
class NoisyViews:
    """Identities' real views noised at fixed timesteps with fixed noise; rows identity-major."""

    noisy: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    identities: int

    @property
    def rows(self) -> int:  # per identity: its views x timesteps
        return len(self.noisy) // self.identities


@torch.no_grad()
def noisy_views(bb: DiffusionBackbone, idents: list[Identity], timesteps: int, seed: int) -> NoisyViews:
    """Every view's latent at ``timesteps`` evenly spaced timesteps; one draw, seeded by ``seed``, of a
    sample of its VAE posterior (what the LoRAs were trained on: diffusers' ``latent_dist.sample()``) and
    of the noise. Not the posterior mean: tiny-sd-v2's posterior std is a fifth of its latents' spread,
    and a LoRA trained on samples denoises the means worse than the base model does."""
    pixels = [torch.from_numpy(view_images(v)).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for v in idents]
    gen = torch.Generator().manual_seed(seed)
    posterior = [bb.encode_images(p) for p in pixels]
    latents = torch.cat([m + s * torch.randn(m.shape, generator=gen) for m, s in posterior])
    latents = latents * bb.scaling_factor  # (I*views, C, h, w)
    ts = torch.linspace(50, 950, timesteps).long()
    z = latents.repeat_interleave(timesteps, 0)
    t = ts.repeat(len(latents))
    eps = torch.randn(z.shape, generator=gen)
    return NoisyViews(bb.scheduler.add_noise(z, eps, t), t, eps, len(idents))


@torch.no_grad()
def own_view_losses(
    bb: DiffusionBackbone, views: NoisyViews, loras: list[Lora | None], scale: float, conds: torch.Tensor
) -> np.ndarray:
    """Per identity i of ``views``: the mean epsilon-MSE on its own rows of the UNet with ``loras[i]``
    (None: the base model, no LoRA applied at all) under conditioning ``conds[i]`` (I, 77, D)."""
    bank = [lo for lo in loras if lo is not None]
    if not bank:
        return _view_losses(bb, views, conds)
    has = torch.tensor([lo is not None for lo in loras])
    with bank_applied(bb.unet, bank, scale) as state:  # bank entry 0 is the base model
        return _view_losses(bb, views, conds, state, torch.cumsum(has, 0) * has)


def _view_losses(
    bb: DiffusionBackbone,
    views: NoisyViews,
    conds: torch.Tensor,
    state: dict | None = None,
    index: torch.Tensor | None = None,
) -> np.ndarray:
    """Identity i's rows under ``conds[i]`` and, inside ``bank_applied``, bank entry ``index[i]``."""
    if state is not None:
        state["index"] = index.repeat_interleave(views.rows)
    cond = conds.repeat_interleave(views.rows, 0)
    err = (bb.unet(views.noisy, views.t, cond).sample - views.eps).pow(2).flatten(1).mean(1)
    return err.reshape(views.identities, views.rows).mean(1).numpy().astype(np.float64)


@torch.no_grad()
def loss_identification(root: Path, timesteps: int = 8, seed: int = 0, permutations: int = 2000) -> dict:
    """Diagnostic, not an attack: does a victim's UNet denoise its OWN views better than other victims'?

    For victim v and candidate c: the mean epsilon-MSE of v's fine-tuned UNet on c's real views (fixed
    noise and ``timesteps`` evenly spaced timesteps, the same for every pair) under v's true prompt and
    under the empty prompt. Ranking candidates by the lowest loss tells whether the weights hold the
    identity at all, whatever the generation makes of it. Writes ``loss_identification.json``.
    """
    run = open_run(root)
    bb = load_backbone(run.recipe.backbone)
    victims = run.split("victim")
    loras = [load_snapshot(run.root, run.jobs[v.key], run.recipe.steps) for v in victims]
    views = noisy_views(bb, victims, timesteps, seed)
    count = len(victims)
    out = {}
    for arm, prompts in (("true prompt", [v.prompt for v in victims]), ("empty prompt", [""] * count)):
        loss = np.zeros((count, count))
        with bank_applied(bb.unet, loras, run.scale) as state:
            for j, p in enumerate(prompts):  # victim j's UNet on every candidate's views
                cond = bb.encode_prompt(p)[0].expand(count, -1, -1)
                loss[j] = _view_losses(bb, views, cond, state, torch.full((count,), j + 1))
        out[arm] = _rank_by_loss(loss, permutations, seed)
    result = {"victims": count, "timesteps": timesteps, "arms": out}
    (Path(root) / "loss_identification.json").write_text(json.dumps(result, indent=1))
    return result


def _rank_by_loss(loss: np.ndarray, permutations: int, seed: int) -> dict:
    """Top-1 when each victim picks the candidate its UNet denoises best; permutation null over rows.

    The loss level differs by candidate (some views are easier for every UNet), so candidates are also
    ranked by the loss relative to their mean over all victims' UNets ("relative").
    """
    n = len(loss)
    rng = np.random.default_rng(seed + 1)
    out = {
        "chance": 1.0 / n,
        "own_minus_other_loss": float(np.diag(loss).mean() - loss[~np.eye(n, dtype=bool)].mean()),
    }
    for name, m in (("absolute", loss), ("relative", loss - loss.mean(0, keepdims=True))):
        observed = _top1_min(m)
        null = np.array([_top1_min(m[rng.permutation(n)]) for _ in range(permutations)])
        out[name] = {
            "top1": observed,
            "top1_ci": em.wilson(observed, n),
            "p_permutation": float((1 + (null >= observed).sum()) / (1 + permutations)),
        }
    return out


def _top1_min(m: np.ndarray) -> float:
    return float((m.argmin(1) == np.arange(len(m))).mean())
