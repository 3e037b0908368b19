"""Reference banks: fitted size estimators saved as safetensors tensors plus a JSON header.

A bank holds the reference spectra of one backbone and rank, at every snapshot step it was
fitted on (the fitted state of a 1-NN ensemble *is* its reference set; the ridge and
calibration parts refit from it in milliseconds, deterministically), and a header that says
what they are: backbone, rank, recipe, steps, sizes, layer order, width, matrix kinds, format
version, creator. Loading validates everything and raises ``BankError`` with one clear line;
nothing is ever unpickled.

Banks are ``<backbone>-r<rank>.safetensors`` files, found in the user's bank folder
(``$LORA_WISE_BANKS``, default ``~/.cache/lora-wise/banks``: where ``lora-wise fit-bank`` writes)
and then in the packaged ``lora_wise/data/banks/``; a user's bank of the same name wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from lora_wise.errors import BankError
from lora_wise.estimation.estimators import KINDS, Applicability, DSiRe, SizeInterval, voter_features
from lora_wise.lora.safetensors_io import write_safetensors
from lora_wise.lora.weights import DeclaredTraining, LoraWeights
from lora_wise.spectra.compute import Spectra, compute_spectra
from lora_wise.spectra.table import SpectraTable

BANK_VERSION = 1
HEADER_KEY = "lora_wise_bank"
BANKS_DIR = Path(__file__).parent.parent / "data" / "banks"


def user_banks_dir() -> Path:
    """Where ``lora-wise fit-bank`` puts banks and the scanner looks first."""
    return Path(os.environ.get("LORA_WISE_BANKS") or Path.home() / ".cache" / "lora-wise" / "banks")


def bank_dirs(directory: str | Path | None = None) -> list[Path]:
    """The folders searched for banks: ``directory`` alone when given, else the user's, then the packaged."""
    return [Path(directory)] if directory else [user_banks_dir(), BANKS_DIR]
_REQUIRED = ("version", "backbone", "rank", "layers", "width", "kinds", "sizes", "steps", "micro_datasets")


@dataclass
class Estimate:
    """What a bank says about one LoRA: the voted size, a continuous estimate with its
    interval, the votes, and how far the LoRA is from anything the bank knows."""

    size: int  # DSiRe's majority vote (a size the references had)
    estimate: float  # continuous estimate in images
    low: float
    high: float
    coverage: float  # of the interval, on held-out concepts
    votes: dict[int, int]
    applicability: float  # in [0, 1]; near 0: unlike every reference, do not trust the size
    step: int  # the reference snapshot step compared against
    step_source: str  # "declared" (nearest to the declared step) or "best-match"
    missing_fraction: float  # of the bank's layers absent from the LoRA
    bank: str
    references: int = 0  # reference models at ``step``: applicability cannot go below 1/(references+1)

    @property
    def beyond_all_references(self) -> bool:
        """Farther from the bank than every reference model is from the others: do not guess."""
        return self.applicability <= 1.0 / (self.references + 1) + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


@dataclass
class _Fitted:
    dsire: DSiRe
    interval: SizeInterval
    applicability: Applicability


@dataclass
class Bank:
    header: dict[str, Any]
    table: SpectraTable
    _cache: dict[int, _Fitted] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.header['backbone']}-r{self.header['rank']}"

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in np.unique(self.table.step))

    def nearest_step(self, step: int) -> int:
        """The reference snapshot step closest to ``step`` (ties: the later one, more trained)."""
        return min(self.steps, key=lambda s: (abs(s - step), -s))

    def fitted(self, step: int) -> _Fitted:
        """The estimators fitted on the references at exactly ``step`` (cached)."""
        if step not in self._cache:
            sub = self.table.subset(self.table.step == step)
            kinds = tuple(self.header["kinds"])
            params = self.header.get("params", {})
            self._cache[step] = _Fitted(
                DSiRe(kinds=kinds, tie=params.get("tie", "median")).fit(sub),
                SizeInterval(kinds=kinds, base=params.get("base", "ridge"), coverage=params.get("coverage", 0.8)).fit(sub),
                Applicability(kinds=kinds).fit(sub),
            )
        return self._cache[step]

    def estimate(self, target: Spectra | LoraWeights, step: int | None = None) -> Estimate:
        """Estimate one LoRA's dataset size. With ``step`` (declared), compare with the nearest
        reference snapshot; without, with the snapshot step the LoRA resembles most."""
        spectra = compute_spectra(target) if isinstance(target, LoraWeights) else target
        aligned = spectra.align(self.header["layers"], self.header["width"])
        missing = float(np.isnan(aligned.ba).any(axis=1).mean())
        # the voter features once, shared by the three estimators (all fitted on the same kinds)
        X = voter_features(aligned, tuple(self.header["kinds"]), layers=self.header["layers"], width=self.header["width"])
        if step is not None:
            chosen, source = self.nearest_step(step), "declared"
        else:
            scores = {s: float(self.fitted(s).applicability.score_samples(X)[0]) for s in self.steps}
            chosen, source = max(scores, key=lambda s: (scores[s], s)), "best-match"
        fit = self.fitted(chosen)
        # a fine-tuning set holds at least one image, whatever a regression extrapolates to
        est, lo, hi = (np.maximum(v, 1.0) for v in fit.interval.predict_interval(X))
        size, counts = fit.dsire.predict_with_votes(X)
        votes = dict(zip(fit.dsire.classes_.tolist(), counts[0].tolist(), strict=True))
        return Estimate(
            size=int(size[0]),
            estimate=float(est[0]),
            low=float(lo[0]),
            high=float(hi[0]),
            coverage=float(fit.interval.coverage),
            votes=votes,
            applicability=float(fit.applicability.score_samples(X)[0]),
            step=int(chosen),
            step_source=source,
            references=int(np.sum(self.table.step == chosen)),
            missing_fraction=missing,
            bank=self.name,
        )


def fit_bank(
    table: SpectraTable,
    recipe: dict[str, Any] | None = None,
    steps: list[int] | None = None,
    kinds: tuple[str, ...] = ("a", "b", "ba"),
    params: dict[str, Any] | None = None,
    created_by: str = "lora-wise",
) -> Bank:
    """A bank from a table of one backbone and rank (e.g. one config of the mini LoRA-WiSE).

    ``steps`` keeps only those snapshot steps (default: all in the table). Values are rounded
    to float32, the precision they are stored in, so a bank behaves the same before saving
    and after loading.
    """
    if len(table) == 0:
        raise BankError("cannot fit a bank on an empty table")
    for column in ("backbone", "rank"):
        values = np.unique(getattr(table, column))
        if len(values) != 1:
            raise BankError(f"a bank holds one {column}; the table has {values.tolist()}: select one first")
    if steps is not None:
        table = table.subset(np.isin(table.step, steps))
        if len(table) == 0:
            raise BankError(f"no reference snapshot at steps {steps}")
    voter_features(table, kinds)  # validates the kinds
    rounded = {k: getattr(table, k).astype(np.float32).astype(np.float64) for k in ("a", "b", "ba", "fro")}
    table = SpectraTable(
        table.layers, **rounded, **{k: getattr(table, k) for k in ("size", "micro_dataset", "step", "rank", "backbone", "model_id")}
    )
    header = {
        "version": BANK_VERSION,
        "backbone": str(table.backbone[0]),
        "rank": int(table.rank[0]),
        "recipe": recipe or {},
        "steps": sorted(int(s) for s in np.unique(table.step)),
        "sizes": sorted(int(s) for s in np.unique(table.size)),
        "layers": list(table.layers),
        "width": int(table.ba.shape[2]),
        "kinds": list(kinds),
        "micro_datasets": sorted(str(m) for m in np.unique(table.micro_dataset)),
        "params": params or {},
        "created_by": created_by,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Bank(header, table)


def self_check(bank: Bank, repeats: int = 10) -> list[dict[str, Any]]:
    """The paper's protocol on the bank's own table at each of its steps (split by micro-dataset,
    so every answer is about concepts the fit did not see): Frobenius-NN, DSiRe and the interval.
    ``lora-wise fit-bank`` stores it in the header, and ``lora-scan`` quotes it as how far to trust
    the bank's answers."""
    from lora_wise.evaluation import evaluate  # evaluation reads datasets; banks load without it

    checks = []
    for step in bank.header["steps"]:
        sub = bank.table.subset(bank.table.step == step)
        checks += [{"step": step, **r.to_dict()} for r in evaluate(sub, ("frobenius-nn", "dsire", "interval"),
                                                                    repeats=repeats)]  # fmt: skip
    return checks


def quoted_self_check(header: dict[str, Any], step: int) -> dict[str, Any] | None:
    """The header's self-check at ``step`` in a few numbers, or None (an older bank, a check
    skipped with ``--repeats 0``, or a header that does not hold one in the expected shape)."""
    at = {c.get("method"): c for c in header.get("self_check") or [] if isinstance(c, dict) and c.get("step") == step}
    try:
        out = {"step": step, "repeats": int(at["dsire"]["repeats"]), "held_out_concepts": int(at["dsire"]["n_test"]),
               "dsire_accuracy": float(at["dsire"]["accuracy"]["mean"]), "dsire_mae": float(at["dsire"]["mae"]["mean"])}  # fmt: skip
        if "interval" in at:
            out["interval_coverage"] = float(at["interval"]["interval_coverage"]["mean"])
        return out
    except (KeyError, TypeError, ValueError):
        return None


def save_bank(bank: Bank, path: str | Path) -> Path:
    """Write a bank as safetensors (float32 spectra, int64 labels) with the JSON header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = bank.table
    groups = np.searchsorted(np.array(bank.header["micro_datasets"]), t.micro_dataset.astype(str))
    tensors = {k: np.ascontiguousarray(getattr(t, k), dtype=np.float32) for k in ("a", "b", "ba", "fro")}
    tensors |= {"size": t.size.astype(np.int64), "step": t.step.astype(np.int64), "micro_dataset": groups.astype(np.int64)}
    return write_safetensors(path, tensors, metadata={HEADER_KEY: json.dumps(bank.header)})


def load_bank_file(path: str | Path) -> Bank:
    """Read and validate a bank file; ``BankError`` on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise BankError(f"no bank file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad bytes
        raise BankError(f"{path.name} is not a readable safetensors bank: {exc}") from None
    header = _parse_header(path, meta)
    return Bank(header, _table_from_tensors(path, header, tensors))


def _parse_header(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    if HEADER_KEY not in meta:
        raise BankError(f"{path.name} has no '{HEADER_KEY}' header: not a lora-wise bank")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise BankError(f"{path.name}: bank header is not valid JSON ({exc.msg})") from None
    if not isinstance(header, dict):
        raise BankError(f"{path.name}: bank header must be a JSON object")
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise BankError(f"{path.name}: bank header lacks {missing}")
    if header["version"] != BANK_VERSION:
        raise BankError(f"{path.name}: bank format version {header['version']!r}, this lora-wise reads {BANK_VERSION}")
    if not set(header["kinds"]) <= set(KINDS) or not header["kinds"]:
        raise BankError(f"{path.name}: bank kinds {header['kinds']!r} are not a subset of {KINDS}")
    if not (isinstance(header["layers"], list) and header["layers"] and all(isinstance(x, str) for x in header["layers"])):
        raise BankError(f"{path.name}: bank header 'layers' must be a non-empty list of names")
    for key in ("width", "rank"):
        if not isinstance(header[key], int) or header[key] < 1:
            raise BankError(f"{path.name}: bank header '{key}' must be a positive integer")
    return header


def _table_from_tensors(path: Path, header: dict, tensors: dict[str, np.ndarray]) -> SpectraTable:
    need = ("a", "b", "ba", "fro", "size", "step", "micro_dataset")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise BankError(f"{path.name}: bank lacks tensors {missing}")
    n = tensors["size"].shape[0] if tensors["size"].ndim == 1 else -1
    n_layers, width = len(header["layers"]), header["width"]
    shapes = {"a": (n, n_layers, width), "b": (n, n_layers, width), "ba": (n, n_layers, width), "fro": (n, n_layers)}
    shapes |= {"size": (n,), "step": (n,), "micro_dataset": (n,)}
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape or n < 1:
            raise BankError(f"{path.name}: tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape}")
    spectra = {k: tensors[k].astype(np.float64) for k in ("a", "b", "ba", "fro")}
    if any(not np.isfinite(v).all() or (v < 0).any() for v in spectra.values()):
        raise BankError(f"{path.name}: bank spectra must be finite and non-negative")
    groups, names = tensors["micro_dataset"], np.array(header["micro_datasets"], dtype=str)
    if groups.min() < 0 or groups.max() >= len(names):
        raise BankError(f"{path.name}: micro_dataset indices out of range")
    sizes, steps = tensors["size"].astype(np.int64), tensors["step"].astype(np.int64)
    if sorted(set(sizes.tolist())) != header["sizes"] or sorted(set(steps.tolist())) != header["steps"]:
        raise BankError(f"{path.name}: header sizes/steps disagree with the stored labels")
    if (sizes < 1).any():
        raise BankError(f"{path.name}: dataset sizes must be positive")
    return SpectraTable(
        layers=list(header["layers"]),
        **spectra,
        size=sizes,
        micro_dataset=names[groups],
        step=steps,
        rank=np.full(n, header["rank"], dtype=np.int64),
        backbone=np.array([header["backbone"]] * n),
        model_id=np.array([""] * n),
    )


# --------------------------------------------------------------------------- registry


def available_banks(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """Banks (name, backbone, rank, steps, sizes, path) of :func:`bank_dirs`, read from headers only;
    of two banks with one name, the first folder's."""
    out, seen = [], set()
    for path in (p for d in bank_dirs(directory) for p in sorted(d.glob("*.safetensors"))):
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = _parse_header(path, f.metadata() or {})
        except Exception:  # a broken file is not a bank; load_bank_file says why
            continue
        if path.name in seen:
            continue
        seen.add(path.name)
        out.append({"name": f"{header['backbone']}-r{header['rank']}", "backbone": header["backbone"],
                    "rank": header["rank"], "steps": header["steps"], "sizes": header["sizes"], "path": str(path)})
    return out


def load_bank(backbone: str, rank: int | None = None, directory: str | Path | None = None) -> Bank:
    """The packaged bank of ``backbone`` (and ``rank``; default: the lowest rank available)."""
    banks = [b for b in available_banks(directory) if b["backbone"] == backbone]
    if rank is not None:
        banks = [b for b in banks if b["rank"] == rank]
    if not banks:
        have = ", ".join(b["name"] for b in available_banks(directory)) or "none"
        want = f"{backbone}" + (f" rank {rank}" if rank is not None else "")
        raise BankError(f"no reference bank for {want} (available: {have})")
    return _cached(min(banks, key=lambda b: b["rank"])["path"])


def _cached(path: str) -> Bank:
    """Packaged banks are loaded once per process (and refit once per step), keyed by mtime."""
    return _load_cached(path, Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> Bank:
    return load_bank_file(path)


def target_rank(spectra: Spectra) -> int:
    """The most common rank over low-rank layers: count of non-zero singular values of A."""
    ranks = (spectra.a[spectra.low_rank] > 0).sum(axis=1)
    if ranks.size == 0:
        return 0
    values, counts = np.unique(ranks, return_counts=True)
    return int(values[np.argmax(counts)])


def bank_for(
    target: LoraWeights | Spectra,
    declared: DeclaredTraining | None = None,
    backbone: str | None = None,
    directory: str | Path | None = None,
    min_layer_overlap: float = 0.5,
) -> tuple[Bank | None, str]:
    """The packaged bank that fits ``target``, or (None, why not).

    Backbone: ``backbone``, else the LoRA's detected one, else the declared base model
    version. Rank must match exactly (spectra of different ranks are not comparable), and the
    LoRA must have at least ``min_layer_overlap`` of the bank's layers.
    """
    if isinstance(target, LoraWeights):
        backbone = backbone or target.backbone.name
        declared = declared or target.declared
        spectra = compute_spectra(target)
    else:
        spectra = target
    if (not backbone or backbone == "unknown") and declared is not None:
        backbone = declared.base_model_version or declared.base_model
    candidates = [b for b in available_banks(directory) if b["backbone"] == backbone]
    have = ", ".join(b["name"] for b in available_banks(directory)) or "none"
    if not candidates:
        return None, f"no reference bank for backbone {backbone or 'unknown'} (available: {have})"
    rank = target_rank(spectra)
    fitting = [b for b in candidates if b["rank"] == rank]
    if not fitting:
        ranks = ", ".join(str(b["rank"]) for b in candidates)
        return None, f"LoRA rank {rank} has no bank for {backbone} (bank ranks: {ranks})"
    bank = _cached(fitting[0]["path"])
    overlap = len(set(spectra.layers) & set(bank.header["layers"])) / len(bank.header["layers"])
    if overlap < min_layer_overlap:
        return None, f"the LoRA has only {overlap:.0%} of the {bank.name} bank's layers"
    return bank, f"{bank.name}: backbone and rank match, {overlap:.0%} of its layers present"


def estimate(weights: LoraWeights, directory: str | Path | None = None) -> tuple[Estimate | None, str]:
    """The one call: pick the fitting bank (the user's, then the packaged ones) and estimate,
    comparing with the reference snapshots nearest the declared step count when the file declares
    one. Returns (estimate or None, why this bank or why none)."""
    bank, reason = bank_for(weights, directory=directory)
    if bank is None:
        return None, reason
    step = weights.declared.steps if weights.declared is not None else None
    return bank.estimate(weights, step=step), reason
