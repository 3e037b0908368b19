"""``ScanReport``: one scanned LoRA. Every output (terminal panel, JSON, crawl tables) renders this one
object.

Everything in a report that came from outside (names, metadata, server messages, the target) is
put on the terminal through ``shown``: no markup, no escape sequences, one line each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from lora_wise._text import shown
from lora_wise.estimation.bank import Estimate

from .status import Status, exit_code


def estimate_label(est: Estimate) -> str:
    return f"about {est.estimate:.0f} ({est.low:.0f}-{est.high:.0f})"


@dataclass
class ScanReport:
    target: str
    status: Status = Status.OK  # ok | unsafe | error | no-lora | skipped
    error: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # kind, url, file, size, sha256, verified, info
    format: str | None = None
    backbone: str | None = None
    backbone_evidence: list[str] = field(default_factory=list)
    rank: int | None = None
    layers: int | None = None
    components: dict[str, int] = field(default_factory=dict)
    dtype: str | None = None
    declared: dict[str, Any] | None = None
    estimate: Estimate | None = None
    estimate_absent_reason: str | None = None
    bank: dict[str, Any] | None = None
    truth: int | None = None  # known true size (the bundled example, benchmark models)
    warnings: list[str] = field(default_factory=list)

    findings: list[str] = field(default_factory=list)  # what makes a readable file exit 1 (conflicts)

    @property
    def exit_code(self) -> int:
        return exit_code(self.status, findings=bool(self.findings))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["exit_code"] = self.exit_code
        if self.estimate is not None:
            data["estimate"]["votes"] = {str(k): v for k, v in self.estimate.votes.items()}
            data["estimate"]["label"] = estimate_label(self.estimate)
        return data


def _summary_table(report: ScanReport) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    src = report.source
    table.add_row("source", f"{shown(src.get('kind', '?'))}: {shown(src.get('url') or report.target)}")
    if src.get("file"):
        verified = " [green](sha256 verified)[/]" if src.get("verified") else ""
        table.add_row("file", f"{shown(src['file'])}{verified}")
    if report.status != Status.OK:
        table.add_row("status", f"[red]{report.status}[/]: {shown(report.error)}")
        return table
    evidence = shown("; ".join(report.backbone_evidence[:3]))
    table.add_row("format", shown(report.format))
    table.add_row("backbone", shown(report.backbone) + (f" [dim]({evidence})[/]" if evidence else ""))
    table.add_row("rank / layers", f"{report.rank} / {report.layers} low-rank layers")
    table.add_row("components", shown(", ".join(f"{k}: {v}" for k, v in report.components.items())))
    table.add_row("dtype", shown(report.dtype))
    return table


def _declared_table(declared: dict[str, Any] | None) -> Table | str:
    if not declared:
        return "[dim]The file declares no training metadata.[/]"
    table = Table(title="Declared by the file", title_justify="left", show_header=False, box=None)
    table.add_column(style="cyan")
    table.add_column()
    for key in (
        "unique_images",
        "num_train_images",
        "repeats",
        "steps",
        "epochs",
        "batch_size",
        "learning_rate",
        "network_dim",
        "network_alpha",
        "base_model",
        "base_model_version",
    ):
        if declared.get(key) not in (None, {}, ""):
            table.add_row(key.replace("_", " "), shown(declared[key]))
    return table


def _estimate_block(report: ScanReport) -> Table | str:
    if report.estimate is None:
        return f"[yellow]No estimate:[/] {shown(report.estimate_absent_reason or 'not computed')}"
    est = report.estimate
    table = Table(
        title="Estimated fine-tuning dataset size", title_justify="left", show_header=False, box=None
    )
    table.add_column(style="bold green")
    table.add_column()
    table.add_row("estimate", f"[bold]{estimate_label(est)}[/] images")
    table.add_row("majority vote", f"{est.size}")
    total = sum(est.votes.values()) or 1
    bars = "  ".join(f"{size}: {100 * n / total:.0f}%" for size, n in sorted(est.votes.items()))
    table.add_row("votes", bars)
    if report.truth is not None:
        table.add_row("true size", f"[bold]{report.truth}[/] (known for this example)")
    if report.bank:
        name, models = shown(report.bank.get("name")), report.bank.get("models", "?")
        table.add_row("bank", f"{name} ({models} reference models, "
                      f"{report.bank.get('snapshots', '?')} snapshots)")  # fmt: skip
        if report.bank.get("self_check"):
            table.add_row("bank accuracy", shown(_trust(report.bank["self_check"])))
    table.add_row("reference step", f"{est.step} ({est.step_source})")
    table.add_row("applicability", f"{est.applicability:.2f} (1 = like the reference models, 0 = unlike)")
    return table


def _trust(check: dict[str, Any]) -> str:
    """The bank's self-check in one line: how often it is right on concepts it never saw."""
    text = f"{check['dsire_accuracy']:.0f} % exact, MAE {check['dsire_mae']:.1f} images"
    if check.get("interval_coverage") is not None:
        text += f", interval holds the truth {check['interval_coverage']:.0f} %"
    return (
        text
        + f" (on {check['held_out_concepts']} unseen concepts, {check['repeats']} repeats,"
        + f" step {check['step']})"
    )


def render(report: ScanReport, console: Console) -> None:
    parts: list[Any] = [_summary_table(report)]
    if report.status == Status.OK:
        parts += ["", _declared_table(report.declared), "", _estimate_block(report)]
    parts += [f"[bold red]finding:[/] {shown(f)}" for f in report.findings]
    parts += [f"[yellow]warning:[/] {shown(w)}" for w in report.warnings]
    style = "green" if report.exit_code == 0 else "red"
    console.print(Panel(Group(*parts), title=f"lora-scan: {shown(report.target)}", border_style=style))
