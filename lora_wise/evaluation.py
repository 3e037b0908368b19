"""The paper's evaluation protocol (DSiRe §6, REFERENCE §1), its ablations, and what the
applicability score and the continuous estimate are for.

Protocol: split BY micro-dataset (a concept is never on both sides), 15 train / 35 test of 50
(scaled proportionally when a table has fewer, and said so in the notes), 10 repeats drawn with
``random.seed(42)`` as the paper did, MAE, MAPE (%) and accuracy (%) as mean ± std over repeats.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lora_wise.dataset.load import table_loader
from lora_wise.errors import LoraWiseError
from lora_wise.estimation.bank import Bank
from lora_wise.estimation.estimators import Applicability, SizeInterval, make_method
from lora_wise.estimation.fitted import DEFAULT_KINDS
from lora_wise.estimation.methods import ALL_METHODS, DSIRE, FROBENIUS_NN, INTERVAL, SELF_CHECK_METHODS
from lora_wise.factory.micro_datasets import class_noun, matches
from lora_wise.factory.snapshots import iter_snapshots
from lora_wise.lora.reader import read_lora
from lora_wise.paper import PAPER_SEED, PAPER_TEST, PAPER_TRAIN, RANGES, SCHEDULES
from lora_wise.spectra.compute import compute_spectra
from lora_wise.spectra.table import SpectraTable

__all__ = ["ALL_METHODS", "MethodResult", "evaluate", "load_table", "self_check"]


@dataclass
class MethodResult:
    """One row of a results table: a method on one config, mean ± std over repeats."""

    method: str
    config: str
    mae: tuple[float, float]
    mape: tuple[float, float]
    accuracy: tuple[float, float]
    repeats: int
    n_train: int
    n_test: int
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def ms(pair):
            return {"mean": round(pair[0], 4), "std": round(pair[1], 4)}

        out = {
            "method": self.method,
            "config": self.config,
            "mae": ms(self.mae),
            "mape": ms(self.mape),
            "accuracy": ms(self.accuracy),
            "repeats": self.repeats,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }
        if self.notes:
            out["notes"] = self.notes
        out.update({k: v for k, v in self.extra.items() if k != "predictions"})
        return out


# --------------------------------------------------------------------------- splits and metrics


def split_counts(n_groups: int, n_train: int | None = None) -> tuple[int, int, str | None]:
    """(train, test, note): the paper's 15/35 of 50, scaled when there are fewer micro-datasets."""
    if n_groups < 2:
        raise LoraWiseError(f"the protocol needs at least 2 micro-datasets, the table has {n_groups}")
    total = PAPER_TRAIN + PAPER_TEST
    if n_train is None:
        n_train = PAPER_TRAIN if n_groups >= total else max(1, round(n_groups * PAPER_TRAIN / total))
    if not 1 <= n_train < n_groups:
        raise LoraWiseError(f"cannot train on {n_train} of {n_groups} micro-datasets and still test")
    n_test = min(n_groups - n_train, PAPER_TEST)
    note = None
    if n_groups < total:
        note = f"{n_groups} micro-datasets instead of the paper's {total}: {n_train} train / {n_test} test"
    return n_train, n_test, note


def micro_splits(
    micro_datasets: Sequence[str], n_train: int, n_test: int, repeats: int = 10, seed: int = PAPER_SEED
) -> list[tuple[list[str], list[str]]]:
    """``repeats`` (train, test) lists of micro-datasets.

    ``random.Random(seed)`` draws exactly what ``random.seed(seed)`` then ``random.sample``
    would, without touching the global generator.
    """
    groups = sorted(set(str(m) for m in micro_datasets))
    rng = random.Random(seed)
    out = []
    for _ in range(repeats):
        train = rng.sample(groups, n_train)
        rest = [g for g in groups if g not in set(train)]
        test = rest if len(rest) <= n_test else rng.sample(rest, n_test)
        out.append((sorted(train), sorted(test)))
    return out


@dataclass(frozen=True)
class Splits:
    """The protocol's repeated splits as (train, test) row masks of one table."""

    masks: list[tuple[np.ndarray, np.ndarray]]
    n_train: int
    n_test: int
    note: str | None


def protocol_splits(
    table: SpectraTable,
    n_train: int | None = None,
    repeats: int = 10,
    seed: int = PAPER_SEED,
    groups: Mapping[str, str] | None = None,
) -> Splits:
    """The paper's split by micro-dataset; or, with ``groups`` (micro-dataset -> group, e.g. its
    class), by group, so that two micro-datasets of one class never sit on both sides of a split
    (counts then refer to groups)."""
    key = table.micro_dataset
    if groups is not None:
        key = np.array([groups.get(m, m) for m in table.micro_dataset.tolist()], dtype=object)
    n_tr, n_te, note = split_counts(len(np.unique(key)), n_train)
    if groups is not None:
        note = f"split by class: {len(np.unique(key))} classes, {n_tr} train / {n_te} test per repeat"
    pairs = micro_splits(key, n_tr, n_te, repeats, seed)
    return Splits([(np.isin(key, tr), np.isin(key, te)) for tr, te in pairs], n_tr, n_te, note)


def class_groups(table: SpectraTable) -> dict[str, str]:
    """Micro-dataset -> its class noun (the prompt's ``<class>``), for ``groups=`` of the protocol."""
    return {m: class_noun(m) for m in np.unique(table.micro_dataset).tolist()}


def metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MAE, MAPE (%) and accuracy (%) of one repeat. A continuous prediction is accurate
    when it is nearer the true size than any other, which the caller decides by rounding."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    err = np.abs(pred - true)
    return {
        "mae": float(err.mean()),
        "mape": float((err / true).mean() * 100),
        "accuracy": float((pred == true).mean() * 100),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def default_step(table: SpectraTable) -> int:
    """The paper's evaluated step for the table's range (1200 for low/medium, 1000 for high)
    when the table's sizes are one range's and that step is stored; else the last step."""
    steps, sizes = set(np.unique(table.step).tolist()), set(np.unique(table.size).tolist())
    for name, range_sizes in RANGES.items():
        if sizes <= set(range_sizes) and SCHEDULES[name][2] in steps:
            return SCHEDULES[name][2]
    return max(steps)


def select_step(table: SpectraTable, step: int | None) -> tuple[SpectraTable, str | None]:
    """The snapshots at ``step`` (the nearest stored step), or at ``default_step`` if None."""
    steps = np.unique(table.step)
    if len(steps) == 1 and step is None:
        return table, None
    want = default_step(table) if step is None else int(steps[np.argmin(np.abs(steps - step))])
    note = f"step {want}" + ("" if step in (None, want) else f" (nearest stored to {step})")
    return table.subset(table.step == want), note


# --------------------------------------------------------------------------- the protocol


def _predict(
    method: str, kinds, train: SpectraTable, test: SpectraTable, groups: Mapping[str, str] | None = None
) -> tuple[np.ndarray, dict]:
    """Predictions of one method, plus per-repeat extras (interval coverage). With ``groups`` (the
    split's classes) the interval is calibrated by holding out a class at a time, as the split does."""
    if method == INTERVAL:
        held = None if groups is None else np.array([groups.get(m, m) for m in train.micro_dataset.tolist()])
        est = SizeInterval(kinds=tuple(kinds or DEFAULT_KINDS)).fit(train, groups=held)
        point, lo, hi = est.predict_interval(test)
        classes = np.unique(train.size)
        snapped = classes[np.argmin(np.abs(point[:, None] - classes[None]), axis=1)]
        cover = float(((lo <= test.size) & (test.size <= hi)).mean() * 100)
        return point, {"snapped": snapped, "coverage": cover}
    return make_method(method, kinds).fit(train).predict(test), {}


def evaluate(
    table: SpectraTable,
    methods: Sequence[str] = (FROBENIUS_NN, DSIRE),
    config: str = "",
    kinds: Sequence[str] | None = None,
    repeats: int = 10,
    n_train: int | None = None,
    step: int | None = None,
    seed: int = PAPER_SEED,
    groups: Mapping[str, str] | None = None,
) -> list[MethodResult]:
    """Every method under the same splits; one ``MethodResult`` per method.

    A table of several snapshot steps is evaluated at ``step`` (default: ``default_step``);
    ``groups``: see :func:`protocol_splits`.
    """
    table, step_note = select_step(table, step)
    splits = protocol_splits(table, n_train, repeats, seed, groups)
    n_tr, n_te = splits.n_train, splits.n_test
    notes = [n for n in (splits.note, step_note) if n]
    results = []
    for method in methods:
        per: dict[str, list[float]] = {"mae": [], "mape": [], "accuracy": [], "coverage": []}
        truth, preds = [], []
        for in_train, in_test in splits.masks:
            train, test = table.subset(in_train), table.subset(in_test)
            pred, extra = _predict(method, kinds, train, test, groups)
            m = metrics(pred, test.size)
            if "snapped" in extra:  # the continuous estimate: accuracy of its nearest known size
                m["accuracy"] = metrics(extra["snapped"], test.size)["accuracy"]
                per["coverage"].append(extra["coverage"])
            for k in ("mae", "mape", "accuracy"):
                per[k].append(m[k])
            truth.append(test.size)
            preds.append(extra.get("snapped", pred))
        out_extra: dict[str, Any] = {"predictions": (np.concatenate(truth), np.concatenate(preds))}
        if per["coverage"]:
            out_extra["interval_coverage"] = {
                "mean": round(float(np.mean(per["coverage"])), 2),
                "std": round(float(np.std(per["coverage"])), 2),
            }
        results.append(
            MethodResult(
                method,
                config,
                _mean_std(per["mae"]),
                _mean_std(per["mape"]),
                _mean_std(per["accuracy"]),
                repeats,
                n_tr,
                n_te,
                list(notes),
                out_extra,
            )
        )
    return results


def self_check(
    bank: Bank, repeats: int = 10, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """The paper's protocol on a bank's own table at each of its steps (split by micro-dataset,
    so every answer is about concepts the fit did not see): Frobenius-NN, DSiRe and the interval.
    ``lora-wise fit-bank`` stores it in the header, and ``lora-scan`` quotes it as how far to trust
    the bank's answers."""
    checks = []
    for step in bank.header.steps:
        if progress is not None:
            progress(step)
        sub = bank.table.subset(bank.table.step == step)
        checks += [{"step": step, **r.to_dict()} for r in evaluate(sub, SELF_CHECK_METHODS, repeats=repeats)]
    return checks


# --------------------------------------------------------------------------- ablations


def ablate_kinds(
    table: SpectraTable,
    kinds_list: Sequence[Sequence[str]] = (*((k,) for k in DEFAULT_KINDS), DEFAULT_KINDS),
    **kwargs,
) -> list[MethodResult]:
    """Paper Table 9: DSiRe on each matrix kind alone and on all."""
    out = []
    for kinds in kinds_list:
        (res,) = evaluate(table, (DSIRE,), kinds=kinds, **kwargs)
        res.method = f"dsire[{'+'.join(kinds)}]"
        out.append(res)
    return out


def ablate_n_train(
    table: SpectraTable, counts: Sequence[int] = (1, 2, 5, 10, 15), method: str = DSIRE, **kwargs
) -> list[MethodResult]:
    """Paper Fig. 5: accuracy against the number of training micro-datasets (counts that do
    not leave a test micro-dataset are skipped)."""
    groups = kwargs.get("groups") or {}
    n_groups = len({groups.get(m, m) for m in np.unique(table.micro_dataset).tolist()})
    out = []
    for n in counts:
        if n >= n_groups:
            continue
        (res,) = evaluate(table, (method,), n_train=n, **kwargs)
        res.extra["n_train_micro_datasets"] = n
        out.append(res)
    return out


def by_condition(
    table: SpectraTable, column: str, methods: Sequence[str] = (FROBENIUS_NN, DSIRE), **kwargs
) -> list[MethodResult]:
    """Paper Tables 4 and 8: the protocol run separately at every value of ``rank`` or ``step``."""
    if column not in ("rank", "step", "backbone"):
        raise LoraWiseError(f"cannot split results by {column!r}; use rank, step or backbone")
    out = []
    for value in np.unique(getattr(table, column)):
        sub = table.subset(getattr(table, column) == value)
        if column != "step":
            sub, _ = select_step(sub, kwargs.get("step"))
        for res in evaluate(
            sub,
            methods,
            step=int(value) if column == "step" else None,
            **{k: v for k, v in kwargs.items() if k != "step"},
        ):
            res.extra[column] = value.item() if hasattr(value, "item") else value
            out.append(res)
    return out


def confusion(result: MethodResult) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, counts[true, predicted]) summed over every repeat of ``result`` (paper Fig. 4)."""
    from sklearn.metrics import confusion_matrix

    truth, pred = result.extra["predictions"]
    labels = np.unique(np.concatenate([truth, pred]))
    return labels, confusion_matrix(truth, pred, labels=labels)


def plot_confusion(result: MethodResult, path: str | Path) -> Path | None:
    """Write the confusion matrix as a PNG; None (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels, counts = confusion(result)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), [str(x) for x in labels])
    ax.set_yticks(range(len(labels)), [str(x) for x in labels])
    for (i, j), v in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=7,
            color="black" if v < counts.max() / 2 else "white",
        )
    ax.set_xlabel("predicted size")
    ax.set_ylabel("true size")
    ax.set_title(f"{result.method} {result.config}".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cross_condition(
    table: SpectraTable,
    column: str,
    fit_value: Any,
    test_value: Any,
    repeats: int = 10,
    n_train: int | None = None,
    seed: int = PAPER_SEED,
    method: str = DSIRE,
    groups: Mapping[str, str] | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit on references at one step/rank, test on held-out concepts at another.

    Reports the method's metrics and the mean applicability both in-condition (test at
    ``fit_value``) and cross-condition (test at ``test_value``): what the score is for is that
    it falls when the estimate stops being trustworthy. ``labels`` gives each row's condition when
    the table has no column for it (a defence); ``column`` then only names it.
    """
    splits = protocol_splits(table, n_train, repeats, seed, groups)
    n_tr, n_te, note = splits.n_train, splits.n_test, splits.note
    col = getattr(table, column) if labels is None else np.asarray(labels)
    rows: dict[str, dict[str, list[float]]] = {"in": {}, "cross": {}}
    for in_train, in_test in splits.masks:
        train = table.subset(in_train & (col == fit_value))
        est = make_method(method).fit(train)
        app = Applicability(kinds=est.kinds).fit(train)
        for key, value in (("in", fit_value), ("cross", test_value)):
            test = table.subset(in_test & (col == value))
            m = metrics(est.predict(test), test.size)
            m["applicability"] = float(app.score_samples(test).mean())
            for k, v in m.items():
                rows[key].setdefault(k, []).append(v)
    out = {
        "column": column,
        "fit": _plain(fit_value),
        "test": _plain(test_value),
        "method": method,
        "n_train": n_tr,
        "n_test": n_te,
        "notes": [note] if note else [],
    }
    for key, vals in rows.items():
        out[key] = {
            k: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)}
            for k, v in vals.items()
        }
    return out


def held_out_size(
    table: SpectraTable,
    size: int,
    repeats: int = 10,
    n_train: int | None = None,
    seed: int = PAPER_SEED,
    coverage: float = 0.8,
    base: str = "pooled",
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Leave one size out: fit without any model of ``size``, estimate held-out concepts' models
    of that size. DSiRe can only answer a neighbouring size; the interval estimator may say
    "about ``size``". Reports both errors and how often the interval covers the truth."""
    table, _ = select_step(table, None)
    splits = protocol_splits(table, n_train, repeats, seed, groups)
    vals: dict[str, list[float]] = {
        "dsire_mae": [],
        "interval_mae": [],
        "interval_median": [],
        "coverage": [],
        "width": [],
    }
    for in_train, in_test in splits.masks:
        train = table.subset(in_train & (table.size != size))
        test = table.subset(in_test & (table.size == size))
        voted = make_method(DSIRE).fit(train).predict(test)
        est, lo, hi = SizeInterval(base=base, coverage=coverage).fit(train).predict_interval(test)
        vals["dsire_mae"].append(float(np.abs(voted - size).mean()))
        vals["interval_mae"].append(float(np.abs(est - size).mean()))
        vals["interval_median"].append(float(np.median(est)))
        vals["coverage"].append(float(((lo <= size) & (size <= hi)).mean() * 100))
        vals["width"].append(float(np.median(hi - lo)))
    out: dict[str, Any] = {
        "size": size,
        "base": base,
        "nominal_coverage": coverage * 100,
        "notes": [splits.note] if splits.note else [],
    }
    out |= {
        k: {"mean": round(float(np.mean(v)), 3), "std": round(float(np.std(v)), 3)} for k, v in vals.items()
    }
    return out


def norm_trend(table: SpectraTable, step: int | None = None) -> dict[str, Any]:
    """Does the LoRA's overall norm ‖ΔW‖ (over all layers) fall with dataset size? (paper Fig. 2)

    Per size: models, median and quartiles of ‖ΔW‖, and the median over concepts of the norm
    relative to the same concept at the smallest size (a concept's own level is the confounder);
    per concept: Spearman(size, ‖ΔW‖); and the spread of log‖ΔW‖ between concepts vs between sizes.
    """
    from scipy.stats import spearmanr  # scikit-learn's own dependency

    sub, note = select_step(table, step)
    norm = np.sqrt(np.nansum(sub.fro**2, axis=1))
    sizes = np.unique(sub.size)
    rhos, levels, rel = [], [], {int(n): [] for n in sizes}
    for concept in np.unique(sub.micro_dataset):
        mask = sub.micro_dataset == concept
        levels.append(float(np.log(norm[mask]).mean()))
        if len(np.unique(sub.size[mask])) > 2:
            rhos.append(float(spearmanr(sub.size[mask], norm[mask]).statistic))
        base = norm[mask & (sub.size == sizes[0])]
        for n in sizes if base.size else ():
            rel[int(n)] += list(norm[mask & (sub.size == n)] / base.mean())
    rows = [
        {
            "size": int(n),
            "models": int(np.sum(sub.size == n)),
            "norm_median": float(np.median(norm[sub.size == n])),
            "norm_q25": float(np.quantile(norm[sub.size == n], 0.25)),
            "norm_q75": float(np.quantile(norm[sub.size == n], 0.75)),
            "relative_to_smallest": float(np.median(rel[int(n)])) if rel[int(n)] else None,
        }
        for n in sizes
    ]
    size_means = [float(np.log(norm[sub.size == n]).mean()) for n in sizes]
    return {
        "step": int(sub.step[0]),
        "note": note,
        "sizes": rows,
        "concept_known_accuracy": _concept_known_accuracy(sub, norm, sizes),
        "spearman_median": float(np.nanmedian(rhos)) if rhos else None,
        "concepts_falling": int(np.sum(np.array(rhos) < 0)),
        "concepts": len(rhos),
        "log_norm_sd_between_concepts": float(np.std(levels)),
        "log_norm_range_between_sizes": float(np.ptp(size_means)),
    }


def _concept_known_accuracy(sub: SpectraTable, norm: np.ndarray, sizes: np.ndarray) -> float | None:
    """How well ‖ΔW‖ alone would size a LoRA if its concept's smallest-size LoRA were known.

    Each model's norm relative to its own concept's smallest-size model goes to the size whose
    median relative norm over the OTHER concepts is nearest; accuracy over the sizes above the
    smallest. The gap between this and DSiRe measures how much the concept itself, not the
    size, decides where a LoRA falls among the references.
    """
    concepts = np.unique(sub.micro_dataset)
    if len(concepts) < 2:
        return None  # no other concept to learn the ladder of relative norms from
    rel = np.full(norm.shape, np.nan)
    for concept in concepts:
        mask = sub.micro_dataset == concept
        base = norm[mask & (sub.size == sizes[0])]
        if base.size:
            rel[mask] = norm[mask] / base.mean()
    hits = []
    for concept in concepts:
        mine, others = sub.micro_dataset == concept, sub.micro_dataset != concept
        ladder = [rel[others & (sub.size == n)] for n in sizes[1:]]
        medians = np.array([np.median(r[np.isfinite(r)]) if np.isfinite(r).any() else np.nan for r in ladder])
        if not np.isfinite(medians).any():
            continue
        for i in np.flatnonzero(mine & (sub.size != sizes[0]) & np.isfinite(rel)):
            hits.append(sizes[1:][np.nanargmin(np.abs(medians - rel[i]))] == sub.size[i])
    return float(np.mean(hits)) if hits else None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- sources


def load_table(
    source: str | Path, config: str | None = None, micro_datasets: Sequence[str] = ()
) -> SpectraTable:
    """The source every evaluation reads through: a built LoRA-WiSE dataset (folder or Hub
    repo id), else a factory output folder (one folder per job with ``step-SSSSS.safetensors``
    + ``.json``); only the micro-datasets matching ``micro_datasets`` (globs) when given."""
    table = table_loader(str(source), config)
    if table is None:
        path = Path(source)
        if not path.is_dir():
            raise LoraWiseError(
                f"cannot read spectra from {source}: "
                "give a factory output folder or a registered dataset source"
            )
        table = table_from_factory(path, config)
    return select_micro_datasets(table, micro_datasets) if micro_datasets else table


def select_micro_datasets(table: SpectraTable, patterns: Sequence[str]) -> SpectraTable:
    """The rows whose micro-dataset matches any glob (``pool:photo-*``), case-sensitive; an error
    naming what there is when nothing matches."""
    names = table.micro_dataset.astype(str)
    keep = np.array([matches(name, patterns) for name in names], dtype=bool)
    if not keep.any():
        known = sorted(set(names))
        shown = ", ".join(known[:6]) + (f", ... ({len(known)} in all)" if len(known) > 6 else "")
        raise LoraWiseError(f"no micro-dataset matches {', '.join(patterns)} (have: {shown})")
    return table.subset(keep)


def table_from_factory(folder: str | Path, config: str | None = None) -> SpectraTable:
    """Spectra of every snapshot in a factory output folder (all steps; only snapshots whose
    LoRA and sidecar are both present, so a killed run's leftovers are safe to read)."""
    folder = Path(folder)
    items, configs = [], set()
    for snap in iter_snapshots(folder):
        sc = snap.sidecar
        configs.add(sc.config)
        if config is not None and sc.config != config:
            continue
        spectra = compute_spectra(read_lora(snap.lora))
        labels = {"size": sc.dataset_size, "micro_dataset": sc.micro_dataset, "step": sc.step,
                  "rank": sc.rank, "backbone": sc.backbone, "model_id": f"{sc.model_id}@{sc.step}",
                  "config": sc.config}  # fmt: skip
        items.append((spectra, labels))
    if not items:
        found = ", ".join(sorted(configs)) or "none"
        raise LoraWiseError(
            f"no snapshots{f' of config {config}' if config else ''} under {folder} (configs found: {found})"
        )
    if config is None and len(configs) > 1:
        raise LoraWiseError(
            f"{folder} holds several configs ({', '.join(sorted(configs))}): choose one with --config"
        )
    return SpectraTable.from_spectra(items)
