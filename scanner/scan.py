"""``scan(target)``: fetch a LoRA, read it, compute its spectra, run the reference bank, report.

One ``ScanReport`` per LoRA file. Problems with a file (unsafe format, malformed bytes, no LoRA
layers, a failed download) become a report with a status and a reason, never an exception, so
that a crawl over thousands of targets goes on; only a target that cannot even be parsed raises
``TargetError`` (a usage error).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from lora_wise import LoraWeights, compute_spectra, read_lora
from lora_wise._text import shown
from lora_wise.dataset.upstream import no_bank_advice
from lora_wise.errors import LoraWiseError, one_line
from lora_wise.estimation.bank import estimate as estimate_size
from lora_wise.lora.checks import non_image_adapter
from lora_wise.spectra.compute import Spectra

from .download import DEFAULT_MAX_SIZE
from .errors import FetchError, TargetError
from .report import ScanReport, estimate_label
from .sources import FetchedFile, fetched
from .status import Status, status_of

#: Below this applicability (a conformal p-value: ~1 % of LoRAs like the references fall under
#: it) no number is given; nor when the LoRA is farther than every reference (see Estimate).
MIN_APPLICABILITY = 0.01


def scan_all(
    target: str,
    *,
    file: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    cache_dir: str | Path | None = None,
    bank_dir: str | Path | None = None,
    progress: bool = True,
    force_estimate: bool = False,
) -> list[ScanReport]:
    """Scan every LoRA candidate a target names (a Hub repo may hold several)."""
    try:
        with fetched(target, file=file, max_size=max_size, cache_dir=cache_dir, progress=progress) as files:
            reports = []
            for f in files:
                with working(f"scanning {f.name}: reading, spectra, reference bank", progress):
                    reports.append(scan_file(f, target, bank_dir=bank_dir, force_estimate=force_estimate))
            return reports
    except TargetError:
        raise
    except FetchError as exc:
        return [
            ScanReport(target=target, status=status_of(exc), error=one_line(exc), source={"kind": "fetch"})
        ]


def working(text: str, show: bool) -> AbstractContextManager[Any]:
    """A spinner on stderr while a file is scanned (seconds when a bank loads), as the download
    before it has its bar; nothing when stderr is not a terminal."""
    if not show:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(shown(text))


def scan(target: str, **options: Any) -> ScanReport:
    """The report of the target's first LoRA candidate (see ``scan_all`` for every candidate)."""
    return scan_all(target, **options)[0]


def scan_file(
    fetched_file: FetchedFile,
    target: str,
    *,
    bank_dir: str | Path | None = None,
    force_estimate: bool = False,
) -> ScanReport:
    """Read one fetched file and estimate its dataset size; failures become the report's status."""
    source = {
        "kind": fetched_file.source,
        "id": fetched_file.source_id,
        "url": fetched_file.url,
        "file": fetched_file.name,
        "size": fetched_file.size,
        "sha256": fetched_file.sha256,
        "verified": fetched_file.verified,
        "info": fetched_file.info,
        "notes": fetched_file.notes,
    }
    report = ScanReport(target=target, source=source)
    try:
        weights = read_lora(_readable_path(fetched_file))
    except LoraWiseError as exc:
        report.status, report.error = status_of(exc), one_line(exc)
        if report.status is Status.UNSAFE:
            report.error = f"unsafe format, not scanned: {report.error}"
        return report
    _describe(report, weights)
    spectra = compute_spectra(weights)
    _estimate(report, weights, spectra, bank_dir, force_estimate)
    return report


def _readable_path(f: FetchedFile) -> Path:
    """A PEFT adapter is read as its folder, so that adapter_config.json (alpha, rank_pattern) counts."""
    if "adapter_config.json" in f.companions and f.companions["adapter_config.json"].parent == f.path.parent:
        return f.path.parent
    return f.path


def _describe(report: ScanReport, weights: LoraWeights) -> None:
    report.format = weights.format
    report.backbone = weights.backbone.name
    report.backbone_evidence = list(weights.backbone.evidence)
    report.rank = weights.rank
    report.layers = weights.layer_count
    report.components = weights.components
    report.dtype = weights.dtype
    report.declared = weights.declared.as_dict() if weights.declared else None
    report.warnings.extend(weights.warnings)
    report.findings.extend(weights.conflicts)
    image_model = not non_image_adapter(weights)  # a T5/LLM adapter gets its own warning from the reader
    if "unet" not in report.components and "transformer" not in report.components and image_model:
        report.warnings.append("text-encoder-only LoRA: dataset-size estimates are made from UNet layers")


def _estimate(
    report: ScanReport, weights: LoraWeights, spectra: Spectra, bank_dir: str | Path | None, force: bool
) -> None:
    estimate, why = estimate_size(weights, directory=bank_dir, spectra=spectra)
    if estimate is None:
        report.estimate_absent_reason = why
        if "no reference bank" in why and weights.backbone.name not in ("unknown", ""):
            advice = no_bank_advice(weights.backbone.name, weights.rank)
            report.warnings.append(f"no reference bank for {weights.backbone.name} r{weights.rank}: {advice}")
        return
    report.bank = estimate.bank.as_dict()
    if (estimate.applicability < MIN_APPLICABILITY or estimate.beyond_all_references) and not force:
        report.estimate_absent_reason = (
            f"the LoRA is unlike every reference model of {estimate.bank.name} (applicability "
            f"{estimate.applicability:.3f}, {estimate.references} references): other recipe, step count or "
            "data; --force-estimate shows the number anyway"
        )
        return
    report.estimate = estimate
    _compare_declared(report, weights)


def _compare_declared(report: ScanReport, weights: LoraWeights) -> None:
    declared = weights.declared.unique_images if weights.declared else None
    est = report.estimate
    if declared is None or est is None:
        return
    if not est.low <= declared <= est.high:
        report.warnings.append(
            f"declared {declared} images, estimate {estimate_label(est)}: "
            "the recipe differs from the bank's, or the declaration is wrong"
        )
