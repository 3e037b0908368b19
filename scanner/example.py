"""The bundled example: a tiny-sd-v2 LoRA of the mini LoRA-WiSE v2, held out of the packaged bank,
whose true dataset size is known. ``lora-scan`` with no target scans it, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_wise.errors import LoraWiseError

from .report import ScanReport
from .scan import scan_file
from .sources import FetchedFile

EXAMPLE = Path(__file__).parent / "data" / "example.safetensors"


def scan_example(**options: Any) -> ScanReport:
    if not EXAMPLE.is_file():
        raise LoraWiseError(f"the bundled example LoRA is missing ({EXAMPLE}): reinstall lora-wise")
    fetched = FetchedFile(EXAMPLE, "local", str(EXAMPLE), EXAMPLE.name, EXAMPLE.stat().st_size)
    report = scan_file(fetched, "bundled example", **options)
    sidecar = json.loads(EXAMPLE.with_suffix(".json").read_text())
    report.truth = int(sidecar["dataset_size"])
    report.source["info"] = {"micro_dataset": sidecar["micro_dataset"], "step": sidecar["step"]}
    return report
