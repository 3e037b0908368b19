"""`lora-scan inspect`: what a LoRA file is, without estimating anything."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lora_wise import LoraWeights, read_lora


def describe(weights: LoraWeights, raw: bool = False) -> dict[str, Any]:
    """The inspect summary as plain data (the JSON contract of ``lora-scan inspect --json``).

    ``raw`` adds ``raw_metadata``: the whole ``__metadata__`` of the header, every key as stored.
    """
    kinds = Counter(layer.kind for layer in weights.layers.values())
    return {
        "source": weights.source,
        "format": weights.format,
        "backbone": weights.backbone.name,
        "backbone_evidence": list(weights.backbone.evidence),
        "rank": weights.rank,
        "layers": weights.layer_count,
        "all_layers": len(weights.layers),
        "layer_kinds": dict(sorted(kinds.items())),
        "components": weights.components,
        "dtype": weights.dtype,
        "declared": weights.declared.as_dict() if weights.declared else None,
        "warnings": list(weights.warnings),
    } | ({"raw_metadata": dict(weights.header_metadata)} if raw else {})


def inspect_path(path: str | Path, raw: bool = False) -> dict[str, Any]:
    return describe(read_lora(path), raw=raw)


def _shown(key: str, value: Any) -> str:
    """One table cell: tag frequencies as counts (the top tags have their own row), dicts as k: v."""
    if key == "tag_frequency":
        return ", ".join(f"{folder}: {len(tags)} tags" for folder, tags in value.items())
    if key == "top_tags":
        return "; ".join(f"{folder}: {', '.join(tags)}" for folder, tags in value.items())
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def render(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"LoRA: {escape(summary['source'])}", show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    evidence = escape("; ".join(summary["backbone_evidence"]))
    table.add_row("format", summary["format"])
    table.add_row("backbone", f"{summary['backbone']}" + (f"  [dim]({evidence})[/]" if evidence else ""))
    table.add_row("rank", str(summary["rank"]))
    table.add_row("layers", str(summary["layers"]))
    table.add_row("layer kinds", ", ".join(f"{k}: {v}" for k, v in summary["layer_kinds"].items()))
    table.add_row("components", ", ".join(f"{k}: {v}" for k, v in summary["components"].items()))
    table.add_row("dtype", summary["dtype"])
    declared = summary["declared"]
    if declared:
        for key, value in declared.items():
            table.add_row(f"declared {key}", escape(_shown(key, value)))
    else:
        table.add_row("declared", "[dim]nothing: the file carries no training metadata[/]")
    console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
