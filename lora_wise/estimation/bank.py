"""Reference banks: pretrained size estimators saved as safetensors tensors plus a JSON header.

A bank holds the reference spectra of one backbone and rank at every snapshot step it was
fitted on, and a typed header (:class:`BankHeader`) that says what they are: backbone, rank,
recipe, steps, sizes, layer order, width, matrix kinds, format version, creator, the self-check
the protocol measured on it, and per step the fitted state that is costly to recompute (the
interval's conformal quantiles, the applicability scales and reference statistics). The 1-NN
references *are* the tensors, and the per-voter ridge refits from them in milliseconds, so
loading a bank and estimating is numpy work on stored state: no refit of anything costly, and
no scikit-learn import. Loading validates everything and raises ``BankError`` with one clear
line; nothing is ever unpickled. A bank written before the fitted state was stored still loads:
its state is fitted once per step on first use, with numpy only.

Banks are ``<backbone>-r<rank>.safetensors`` files, found in the user's bank folder
(``$LORA_WISE_BANKS``, default ``~/.cache/lora-wise/banks``: where ``lora-wise fit-bank`` writes)
and then in the packaged ``lora_wise/data/banks/``; a user's bank of the same name wins.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from lora_wise.errors import BankError
from lora_wise.estimation.fitted import (
    DEFAULT_KINDS,
    ApplicabilityState,
    IntervalState,
    VoteState,
    check_kinds,
    voter_features,
)
from lora_wise.estimation.methods import DSIRE, INTERVAL
from lora_wise.lora.safetensors_io import write_safetensors
from lora_wise.lora.weights import DeclaredTraining, LoraWeights
from lora_wise.spectra.compute import Spectra, compute_spectra
from lora_wise.spectra.table import KINDS, SpectraTable

BANK_VERSION = 1
HEADER_KEY = "lora_wise_bank"
BANKS_DIR = Path(__file__).parent.parent / "data" / "banks"
#: The tensors of a bank file: the references' spectra and their labels.
TENSORS = (*KINDS, "size", "step", "micro_dataset")
#: How the reference snapshot was chosen: the one nearest the file's declared step count, or
#: the one the LoRA resembles most.
DECLARED, BEST_MATCH = "declared", "best-match"


def user_banks_dir() -> Path:
    """Where ``lora-wise fit-bank`` puts banks and the scanner looks first."""
    return Path(os.environ.get("LORA_WISE_BANKS") or Path.home() / ".cache" / "lora-wise" / "banks")


def bank_dirs(directory: str | Path | None = None) -> list[Path]:
    """The folders searched for banks: ``directory`` alone when given, else the user's, then the packaged."""
    return [Path(directory)] if directory else [user_banks_dir(), BANKS_DIR]


# --------------------------------------------------------------------------- the header


@dataclass(frozen=True)
class SelfCheckQuote:
    """A bank's self-check at one step in a few numbers: how often it is right on unseen concepts."""

    step: int
    repeats: int
    held_out_concepts: int
    dsire_accuracy: float
    dsire_mae: float
    interval_coverage: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def quote_self_check(checks: Any, step: int) -> SelfCheckQuote | None:
    """The self-check results at ``step`` quoted, or None (an older bank, a check skipped with
    ``--repeats 0``, or results that are not in the expected shape)."""
    at = {c.get("method"): c for c in checks or [] if isinstance(c, dict) and c.get("step") == step}
    try:
        dsire = at[DSIRE]
        coverage = float(at[INTERVAL]["interval_coverage"]["mean"]) if INTERVAL in at else None
        return SelfCheckQuote(
            step,
            int(dsire["repeats"]),
            int(dsire["n_test"]),
            float(dsire["accuracy"]["mean"]),
            float(dsire["mae"]["mean"]),
            coverage,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _ints(values: Any, minimum: int) -> bool:
    return (
        isinstance(values, list) and bool(values) and all(isinstance(v, int) and v >= minimum for v in values)
    )


def _strings(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(isinstance(v, str) for v in values)


@dataclass
class BankHeader:
    """What a bank is, validated once when made (``from_json`` for a file's header)."""

    backbone: str
    rank: int
    layers: list[str]
    width: int
    kinds: list[str]
    sizes: list[int]
    steps: list[int]
    micro_datasets: list[str]
    version: int = BANK_VERSION
    recipe: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # base, coverage, tie, alpha
    created_by: str = "lora-wise"
    created: str = ""
    self_check: list[dict[str, Any]] | None = None  # the protocol's results (``evaluation.self_check``)
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(step) -> stored state (see Bank)

    def __post_init__(self) -> None:
        if self.version != BANK_VERSION:
            raise BankError(f"bank format version {self.version!r}, this lora-wise reads {BANK_VERSION}")
        if not isinstance(self.kinds, list) or not self.kinds or not set(self.kinds) <= set(KINDS):
            raise BankError(f"bank kinds {self.kinds!r} are not a subset of {KINDS}")
        if not _strings(self.layers):
            raise BankError("bank header 'layers' must be a non-empty list of names")
        for key in ("width", "rank"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise BankError(f"bank header '{key}' must be a positive integer")
        if not (_ints(self.sizes, 1) and _ints(self.steps, 0) and _strings(self.micro_datasets)):
            raise BankError("bank header 'sizes', 'steps' and 'micro_datasets' must be non-empty lists")
        if not isinstance(self.backbone, str) or not all(
            isinstance(d, dict) for d in (self.recipe, self.params)
        ):
            raise BankError("bank header 'backbone' must be a name, 'recipe' and 'params' objects")
        if not isinstance(self.fitted, dict) or not set(self.fitted) <= {str(s) for s in self.steps}:
            raise BankError("bank header 'fitted' must map the bank's steps to their state")

    @property
    def name(self) -> str:
        return f"{self.backbone}-r{self.rank}"

    @classmethod
    def from_json(cls, text: str) -> BankHeader:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BankError(f"bank header is not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise BankError("bank header must be a JSON object")
        missing = [k for k in _required() if k not in data]
        if missing:
            raise BankError(f"bank header lacks {missing}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def self_check_at(self, step: int) -> SelfCheckQuote | None:
        return quote_self_check(self.self_check, step)


def _required() -> list[str]:
    """The header keys every bank file has had since version 1: the version, the fields without a default."""
    return ["version"] + [f.name for f in fields(BankHeader) if f.default is f.default_factory is MISSING]


# --------------------------------------------------------------------------- what a bank answers


@dataclass(frozen=True)
class BankSummary:
    """The bank behind an estimate, as the scanner shows it, with its self-check at the step used."""

    name: str
    backbone: str
    rank: int
    models: int  # reference models (one row per model and step)
    snapshots: int
    steps: list[int]
    sizes: list[int]
    version: int
    self_check: SelfCheckQuote | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["self_check"] = self.self_check.as_dict() if self.self_check else None
        return out


@dataclass
class Estimate:
    """What a bank says about one LoRA: the voted size, a continuous estimate with its
    interval, the votes, how far the LoRA is from anything the bank knows, and the bank."""

    size: int  # DSiRe's majority vote (a size the references had)
    estimate: float  # continuous estimate in images
    low: float
    high: float
    coverage: float  # of the interval, on held-out concepts
    votes: dict[int, int]
    applicability: float  # in [0, 1]; near 0: unlike every reference, do not trust the size
    step: int  # the reference snapshot step compared against
    step_source: str  # DECLARED (nearest to the declared step) or BEST_MATCH
    missing_fraction: float  # of the bank's layers absent from the LoRA
    bank: BankSummary
    references: int = 0  # reference models at ``step``: applicability cannot go below 1/(references+1)

    @property
    def beyond_all_references(self) -> bool:
        """Farther from the bank than every reference model is from the others: do not guess."""
        return self.applicability <= 1.0 / (self.references + 1) + 1e-12

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (vote sizes as string keys, the bank summary as an object)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["votes"] = {str(k): int(v) for k, v in self.votes.items()}
        out["bank"] = self.bank.as_dict() if isinstance(self.bank, BankSummary) else self.bank
        return out


@dataclass(frozen=True)
class FittedStep:
    """The pretrained estimators at one reference step: DSiRe, the interval, applicability."""

    votes: VoteState  # its state is the references themselves: the bank's tensors
    interval: IntervalState
    applicability: ApplicabilityState
    references: int

    def stored(self) -> dict[str, Any]:
        """What the header keeps of it (the references are the bank's tensors)."""
        return {"interval": self.interval.stored(), "applicability": self.applicability.stored()}

    @staticmethod
    def check(stored: Any, shape: tuple[int, ...]) -> None:
        """BankError unless ``stored`` is the state of references with features of ``shape``."""
        try:
            IntervalState.check(stored["interval"], shape)
            ApplicabilityState.check(stored["applicability"], shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise BankError(f"malformed fitted state in the bank header ({exc})") from None

    @classmethod
    def restore(
        cls, header: BankHeader, X: np.ndarray, sub: SpectraTable, stored: dict[str, Any]
    ) -> FittedStep:
        """The estimators at one step from the references ``sub`` (features X) and the stored state."""
        try:
            interval = IntervalState.restore(X, sub.size, stored["interval"])
            applicability = ApplicabilityState.restore(X, stored["applicability"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BankError(f"{header.name}: malformed fitted state in the bank header ({exc})") from None
        return cls(
            VoteState.fit(X, sub.size, tie=_settings(header)["tie"]), interval, applicability, len(sub)
        )

    @classmethod
    def fit(cls, header: BankHeader, X: np.ndarray, sub: SpectraTable) -> FittedStep:
        """The estimators fitted from the references, with numpy only (a bank saved without state)."""
        s = _settings(header)
        return cls(
            VoteState.fit(X, sub.size, tie=s["tie"]),
            IntervalState.fit(X, sub.size, sub.micro_dataset, s["base"], s["alpha"], s["coverage"]),
            ApplicabilityState.fit(X, sub.micro_dataset),
            len(sub),
        )


def _settings(header: BankHeader) -> dict[str, Any]:
    p = header.params
    # a header without "base" is older than the pooled ridge: its interval was the per-voter ridge
    return {"tie": p.get("tie", "median"), "base": p.get("base", "ridge"), "alpha": p.get("alpha"),
            "coverage": p.get("coverage", 0.8)}  # fmt: skip


@dataclass
class Bank:
    header: BankHeader
    table: SpectraTable
    _fitted: dict[int, FittedStep] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def steps(self) -> list[int]:
        return list(self.header.steps)

    def nearest_step(self, step: int) -> int:
        """The reference snapshot step closest to ``step`` (ties: the later one, more trained)."""
        return min(self.steps, key=lambda s: (abs(s - step), -s))

    def features(self, source: SpectraTable | Spectra) -> np.ndarray:
        """Voter features in the bank's layer order and kinds (a LoRA's spectra aligned to the bank first)."""
        return voter_features(source, self.header.kinds, layers=self.header.layers)

    def fitted(self, step: int) -> FittedStep:
        """The estimators at exactly ``step``: restored from the header's state, or (an older bank)
        fitted once from the references."""
        if step not in self._fitted:
            sub = self.table.subset(self.table.step == step)
            stored = self.header.fitted.get(str(step))
            X = self.features(sub)
            if stored is None:  # seconds, not milliseconds: say so rather than hang silently
                print(
                    f"lora-wise: bank {self.name} holds no fitted state (saved by an older lora-wise): "
                    f"fitting step {step} once; `lora-wise fit-bank` rewrites it pretrained",
                    file=sys.stderr,
                )
                self._fitted[step] = FittedStep.fit(self.header, X, sub)
            else:
                self._fitted[step] = FittedStep.restore(self.header, X, sub, stored)
        return self._fitted[step]

    def check_fitted(self) -> None:
        """BankError unless every stored step's state fits its references (shapes only: cheap)."""
        _, voters, width = self.features(self.table.subset(np.zeros(len(self.table), dtype=bool))).shape
        for step, stored in self.header.fitted.items():
            FittedStep.check(stored, (int(np.sum(self.table.step == int(step))), voters, width))

    def summary(self, step: int) -> BankSummary:
        h = self.header
        models = int((self.table.step == max(h.steps)).sum())
        return BankSummary(h.name, h.backbone, h.rank, models, len(self.table), list(h.steps), list(h.sizes),
                           h.version, h.self_check_at(step))  # fmt: skip

    def estimate(self, target: Spectra | LoraWeights, step: int | None = None) -> Estimate:
        """Estimate one LoRA's dataset size. With ``step`` (declared), compare with the nearest
        reference snapshot; without, with the snapshot step the LoRA resembles most."""
        spectra = compute_spectra(target) if isinstance(target, LoraWeights) else target
        aligned = spectra.align(self.header.layers, self.header.width)
        missing = float(np.isnan(aligned.ba).any(axis=1).mean())
        X = self.features(aligned)  # once, shared by the three estimators (all fitted on the same kinds)
        if step is not None:
            chosen, source = self.nearest_step(step), DECLARED
        else:
            scores = {s: float(self.fitted(s).applicability.score_samples(X)[0]) for s in self.steps}
            chosen, source = max(scores, key=lambda s: (scores[s], s)), BEST_MATCH
        fit = self.fitted(chosen)
        # a fine-tuning set holds at least one image, whatever a regression extrapolates to
        est, lo, hi = (np.maximum(v, 1.0) for v in fit.interval.predict_interval(X))
        size, counts = fit.votes.predict_with_votes(X)
        return Estimate(
            size=int(size[0]),
            estimate=float(est[0]),
            low=float(lo[0]),
            high=float(hi[0]),
            coverage=float(fit.interval.coverage),
            votes=dict(zip(fit.votes.classes.tolist(), counts[0].tolist(), strict=True)),
            applicability=float(fit.applicability.score_samples(X)[0]),
            step=int(chosen),
            step_source=source,
            references=fit.references,
            missing_fraction=missing,
            bank=self.summary(chosen),
        )


# --------------------------------------------------------------------------- fitting and files


def fit_bank(
    table: SpectraTable,
    recipe: dict[str, Any] | None = None,
    steps: list[int] | None = None,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    params: dict[str, Any] | None = None,
    created_by: str = "lora-wise",
    progress: Callable[[int], None] | None = None,
) -> Bank:
    """A bank from a table of one backbone and rank (e.g. one config of the mini LoRA-WiSE),
    its estimators fitted at every step with scikit-learn's contract and kept as their state.

    ``steps`` keeps only those snapshot steps (default: all in the table). Values are rounded
    to float32, the precision they are stored in, so a bank behaves the same before saving
    and after loading. ``progress(step)`` is called before each step is fitted.
    """
    from lora_wise.estimation.estimators import Applicability, DSiRe, SizeInterval

    table = _bank_table(table, steps)
    check_kinds(kinds)
    header = BankHeader(
        backbone=str(table.backbone[0]),
        rank=int(table.rank[0]),
        layers=list(table.layers),
        width=table.width,
        kinds=list(kinds),
        sizes=sorted(int(s) for s in np.unique(table.size)),
        steps=sorted(int(s) for s in np.unique(table.step)),
        micro_datasets=sorted(str(m) for m in np.unique(table.micro_dataset)),
        recipe=recipe or {},
        params={"base": "pooled", **(params or {})},  # a header says its base: without, it is an old one
        created_by=created_by,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    bank = Bank(header, table)
    s = _settings(header)
    for step in header.steps:
        if progress is not None:
            progress(step)
        sub = table.subset(table.step == step)
        fitted = FittedStep(
            DSiRe(kinds=kinds, tie=s["tie"]).fit(sub).state_,
            SizeInterval(kinds=kinds, base=s["base"], alpha=s["alpha"], coverage=s["coverage"])
            .fit(sub)
            .state_,
            Applicability(kinds=kinds).fit(sub).state_,
            len(sub),
        )
        bank._fitted[step] = fitted
        header.fitted[str(step)] = fitted.stored()
    return bank


def _bank_table(table: SpectraTable, steps: list[int] | None) -> SpectraTable:
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
    return table.astype(np.float32).astype(np.float64)


def save_bank(bank: Bank, path: str | Path) -> Path:
    """Write a bank as safetensors (float32 spectra, int64 labels) with the JSON header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = bank.table
    groups = np.searchsorted(np.array(bank.header.micro_datasets), t.micro_dataset.astype(str))
    tensors = {k: np.ascontiguousarray(getattr(t, k), dtype=np.float32) for k in KINDS}
    tensors |= {
        "size": t.size.astype(np.int64),
        "step": t.step.astype(np.int64),
        "micro_dataset": groups.astype(np.int64),
    }
    return write_safetensors(path, tensors, metadata={HEADER_KEY: bank.header.to_json()})


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
    try:
        bank = Bank(header, _table_from_tensors(header, tensors))
        bank.check_fitted()
    except BankError as exc:
        raise BankError(f"{path.name}: {exc}") from None
    return bank


def _parse_header(path: Path, meta: dict[str, str]) -> BankHeader:
    if HEADER_KEY not in meta:
        raise BankError(f"{path.name} has no '{HEADER_KEY}' header: not a lora-wise bank")
    try:
        return BankHeader.from_json(meta[HEADER_KEY])
    except BankError as exc:
        raise BankError(f"{path.name}: {exc}") from None
    except TypeError as exc:  # a field of the wrong kind reached a comparison
        raise BankError(f"{path.name}: malformed bank header ({exc})") from None


def _table_from_tensors(header: BankHeader, tensors: dict[str, np.ndarray]) -> SpectraTable:
    missing = [k for k in TENSORS if k not in tensors]
    if missing:
        raise BankError(f"bank lacks tensors {missing}")
    n = tensors["size"].shape[0] if tensors["size"].ndim == 1 else -1
    spectra_shape = (n, len(header.layers), header.width)
    shapes = {k: spectra_shape if k != "fro" else spectra_shape[:2] for k in KINDS}
    shapes |= {"size": (n,), "step": (n,), "micro_dataset": (n,)}
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape or n < 1:
            raise BankError(f"tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape}")
    spectra = {k: tensors[k].astype(np.float64) for k in KINDS}
    if any(not np.isfinite(v).all() or (v < 0).any() for v in spectra.values()):
        raise BankError("bank spectra must be finite and non-negative")
    groups, names = tensors["micro_dataset"], np.array(header.micro_datasets, dtype=str)
    if groups.min() < 0 or groups.max() >= len(names):
        raise BankError("micro_dataset indices out of range")
    sizes, steps = tensors["size"].astype(np.int64), tensors["step"].astype(np.int64)
    if sorted(set(sizes.tolist())) != header.sizes or sorted(set(steps.tolist())) != header.steps:
        raise BankError("header sizes/steps disagree with the stored labels")
    labels = {"size": sizes, "micro_dataset": names[groups], "step": steps, "rank": np.full(n, header.rank),
              "backbone": np.full(n, header.backbone)}  # fmt: skip
    return SpectraTable.from_columns(header.layers, spectra | labels)


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
        out.append({"name": header.name, "backbone": header.backbone, "rank": header.rank,
                    "steps": header.steps, "sizes": header.sizes, "path": str(path)})  # fmt: skip
    return out


def load_bank(backbone: str, rank: int | None = None, directory: str | Path | None = None) -> Bank:
    """The bank of ``backbone`` (and ``rank``; default: the lowest rank available)."""
    found = available_banks(directory)
    banks = [b for b in found if b["backbone"] == backbone and rank in (None, b["rank"])]
    if not banks:
        have = ", ".join(b["name"] for b in found) or "none"
        want = f"{backbone}" + (f" rank {rank}" if rank is not None else "")
        raise BankError(f"no reference bank for {want} (available: {have})")
    return _cached(min(banks, key=lambda b: b["rank"])["path"])


def _cached(path: str) -> Bank:
    """Banks are loaded once per process (and their steps restored once), keyed by mtime."""
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
    """The bank that fits ``target``, or (None, why not).

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
    found = available_banks(directory)
    candidates = [b for b in found if b["backbone"] == backbone]
    if not candidates:
        have = ", ".join(b["name"] for b in found) or "none"
        return None, f"no reference bank for backbone {backbone or 'unknown'} (available: {have})"
    rank = target_rank(spectra)
    fitting = [b for b in candidates if b["rank"] == rank]
    if not fitting:
        ranks = ", ".join(str(b["rank"]) for b in candidates)
        return None, f"LoRA rank {rank} has no bank for {backbone} (bank ranks: {ranks})"
    bank = _cached(fitting[0]["path"])
    overlap = len(set(spectra.layers) & set(bank.header.layers)) / len(bank.header.layers)
    if overlap < min_layer_overlap:
        return None, f"the LoRA has only {overlap:.0%} of the {bank.name} bank's layers"
    return bank, f"{bank.name}: backbone and rank match, {overlap:.0%} of its layers present"


def estimate(
    weights: LoraWeights, directory: str | Path | None = None, spectra: Spectra | None = None
) -> tuple[Estimate | None, str]:
    """The one call: pick the fitting bank (the user's, then the packaged ones) and estimate,
    comparing with the reference snapshots nearest the declared step count when the file declares
    one. ``spectra``: the LoRA's, when the caller has them already. Returns (estimate or None,
    why this bank or why none)."""
    spectra = compute_spectra(weights) if spectra is None else spectra
    bank, reason = bank_for(spectra, weights.declared, weights.backbone.name, directory)
    if bank is None:
        return None, reason
    step = weights.declared.steps if weights.declared is not None else None
    return bank.estimate(spectra, step=step), reason
