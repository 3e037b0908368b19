"""``lora-wise leak``: train the reconstruction attack on a run's shadows and measure it on its victims."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from lora_wise.cli.tools import CONTEXT_SETTINGS, EXIT_CODES_HELP, print_json

EPILOG = (
    "\b\nA run folder is made by scripts/leak_pilot.py (identities, their views, victim and shadow LoRAs):\n"
    "  python scripts/leak_pilot.py runs/leak-pilot --identities 50 --steps 400 --lr 1e-3\n"
    "  lora-wise leak train runs/leak-pilot\n"
    "  lora-wise leak evaluate runs/leak-pilot\n" + EXIT_CODES_HELP
)


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
def leak() -> None:
    """The second leak: reconstructing a DreamBooth-LoRA's subject from its weights (arXiv 2409.08482)."""


@leak.command(epilog=EPILOG)
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--iterations", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option(
    "--prompt-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Weight of the MSE to the shadow's true prompt embedding beside the denoising loss.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the saved attacks' headers as JSON.")
def train(
    root: str, iterations: int, batch: int, lr: float, prompt_weight: float, seed: int, as_json: bool
) -> None:
    """Train the attack (and its no-step ablation) on ROOT's shadows: ROOT/attack*.safetensors."""
    from lora_wise.leak.attack import AttackTraining
    from lora_wise.leak.encoder import load_encoder
    from lora_wise.leak.run import train_run

    cfg = AttackTraining(iterations=iterations, batch=batch, lr=lr, prompt_weight=prompt_weight, seed=seed)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=as_json, transient=True) as bar:
        tasks: dict[str, int] = {}

        def tick(name: str, i: int, n: int, loss: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=n, loss=loss)
            bar.update(tasks[name], completed=i, loss=loss)

        paths = train_run(root, cfg, progress=tick)
    headers = {name: {"path": str(p), **load_encoder(p)[1]["training"]} for name, p in paths.items()}
    if as_json:
        print_json(headers)
        return
    for name, h in headers.items():
        Console().print(
            f"{name}: {h['path']} ({h['shadows']} shadows, {h['pairs']} snapshots, {h['seconds']} s, "
            f"denoise {h['final_denoise_loss']:.4f}, prompt MSE {h['final_prompt_mse']:.4f})"
        )


@leak.command(epilog=EPILOG)
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--k", "k", type=click.IntRange(min=1), default=8, show_default=True, help="Images per victim and arm."
)
@click.option(
    "--n", "n", type=click.IntRange(min=2), default=10, show_default=True, help="Candidates per trial."
)
@click.option("--permutations", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--loss-diagnostic",
    is_flag=True,
    help="Also rank candidates by how well each victim's UNet denoises their real views "
    "(does the LoRA hold the identity at all?): ROOT/loss_identification.json.",
)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Classifier-free guidance of every generating arm against the empty prompt (1: none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print evaluation.json.")
def evaluate(
    root: str,
    k: int,
    n: int,
    permutations: int,
    seed: int,
    loss_diagnostic: bool,
    guidance: float,
    as_json: bool,
) -> None:
    """Identify every victim of ROOT from what each arm generates (attack, baselines, oracle)."""
    from lora_wise.leak.run import evaluate_run, loss_identification

    result = evaluate_run(root, k=k, n=n, permutations=permutations, seed=seed, guidance=guidance)
    if loss_diagnostic:
        result["loss_identification"] = loss_identification(root, seed=seed, permutations=permutations)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"{result['victims']} victims, N = {result['n']} candidates, K = {k} images")
    for col in ("arm", "top-1", "95 %", "top-5", "chance", "perm. p"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm, r in result["arms"].items():
        lo, hi = r["top1_ci"]
        table.add_row(
            arm,
            f"{r['top1']:.2f}",
            f"{lo:.2f}-{hi:.2f}",
            f"{r['top5']:.2f}",
            f"{r['chance']:.2f}",
            f"{r['p_permutation']:.4f}",
        )
    Console().print(table)
    u = result["utility"]
    Console().print(
        f"utility: denoising loss on their own views {u['victim_loss']:.4f} (base {u['base_loss']:.4f}), "
        f"gain {u['gain']:.3f}; fidelity (oracle top-1) {u['fidelity']['top1']:.2f}"
    )


COMMANDS = (leak,)
