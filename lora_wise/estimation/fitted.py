"""The estimators' arithmetic in numpy only: voter features, the batched 1-NN search, the vote,
and the fitted states a bank stores and predicts with.

A scan imports this module and never scikit-learn: a bank is pretrained, so predicting is array
work on stored state. The scikit-learn estimators of :mod:`lora_wise.estimation.estimators` give
these functions their contract (parameters, validation, ``check_is_fitted``) and keep the states
below as their fitted attributes, so a bank's answer and an estimator's answer are computed by
the same code (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lora_wise.errors import BankError
from lora_wise.spectra.compute import Spectra
from lora_wise.spectra.table import KINDS, SpectraTable

#: The paper's voters: σ(A), σ(B) and σ(B·A) of every layer.
DEFAULT_KINDS: tuple[str, ...] = ("a", "b", "ba")
_BLOCK_ELEMENTS = 8_000_000  # distances per batched block (64 MB): bounds memory for large banks
_NOTHING_VOTES = "the target shares no layer with the reference models: nothing can vote"


# --------------------------------------------------------------------------- features


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown matrix kinds {bad or list(kinds)}; choose from {KINDS}")
    return tuple(kinds)


def voter_features(
    source: SpectraTable | Spectra | Sequence[Spectra],
    kinds: Sequence[str],
    layers: Sequence[str] | None = None,
    width: int | None = None,
) -> np.ndarray:
    """(N, V, W) float64 voter features, voters ordered kind-major then layer.

    ``fro`` is one value per layer, zero-padded to ``W`` when mixed with spectra (zeros on
    both sides add nothing to a distance). Missing layers stay NaN across the whole row.
    """
    check_kinds(kinds)
    if isinstance(source, Spectra):
        source = [source]
    if not isinstance(source, SpectraTable):
        source = SpectraTable.from_spectra([(s, {}) for s in source], layers, width)
    elif layers is not None and list(layers) != list(source.layers):
        raise BankError("table layers differ from the estimator's layer order; align the spectra first")
    blocks = [source.matrix(k) for k in kinds]
    w = max(b.shape[2] for b in blocks) if width is None else width
    out = []
    for block in blocks:
        padded = np.zeros(block.shape[:2] + (w,))
        padded[:, :, : min(w, block.shape[2])] = block[:, :, :w]
        padded[np.isnan(block).any(axis=2)] = np.nan
        out.append(padded)
    return np.concatenate(out, axis=1).astype(np.float64)


def log_features(X: np.ndarray) -> np.ndarray:
    # singular values span decades and fall with size roughly as a power law: logs make that linear
    return np.log(np.abs(X) + 1e-8)


def metric_transform(X: np.ndarray, metric: str) -> np.ndarray:
    """DSiRe's ``metric``: ``euclidean`` on the values, or ``log`` (euclidean on log σ)."""
    if metric == "euclidean":
        return X
    if metric == "log":
        return log_features(X)
    raise ValueError(f"metric must be 'euclidean' or 'log', not {metric!r}")


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voter, per-column z-scores from the references (NaN references ignored)."""
    mu = np.nanmean(X, axis=0)
    sd = np.nanstd(X, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return np.nan_to_num(mu), np.nan_to_num(sd, nan=1.0)


def batched_ridge(Z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge per voter: Z (N, V, W), y (N,) -> coef (V, W), intercept (V,). NaN rows skipped."""
    ok = ~np.isnan(Z).any(axis=2)  # (N, V)
    Zc = np.nan_to_num(Z) * ok[:, :, None]
    n = ok.sum(axis=0).clip(min=1)  # (V,)
    zbar = Zc.sum(axis=0) / n[:, None]
    ybar = (ok * y[:, None]).sum(axis=0) / n
    Zc = (Zc - zbar[None]) * ok[:, :, None]
    yc = (y[:, None] - ybar[None]) * ok
    gram = np.einsum("nvw,nvu->vwu", Zc, Zc) + alpha * np.eye(Z.shape[2])[None]
    rhs = np.einsum("nvw,nv->vw", Zc, yc)
    coef = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    return coef, ybar - np.einsum("vw,vw->v", coef, zbar)


# --------------------------------------------------------------------------- the 1-NN search


@dataclass(frozen=True)
class References:
    """A reference set laid out for the batched search, prepared once per fit."""

    tr_t: np.ndarray  # (V, W, N)
    tr_sq: np.ndarray  # (V, N), +inf where the reference lacks the voter

    @classmethod
    def of(cls, train: np.ndarray) -> References:
        missing = np.isnan(train).any(axis=2)  # (N, V)
        clean = np.nan_to_num(train) if missing.any() else train  # a bank's references have no NaN: no copy
        tr_sq = np.einsum("nvw,nvw->vn", clean, clean)
        tr_sq[missing.T] = np.inf  # a reference's missing voter is never nearest
        return cls(np.ascontiguousarray(clean.transpose(1, 2, 0)), tr_sq)


def nearest_references(train: np.ndarray | References, test: np.ndarray, exclude: np.ndarray | None = None):
    """Per voter, the nearest reference of every test model (euclidean).

    ``train`` (N, V, W), ``test`` (M, V, W); ``exclude`` (M, N) bool forbids pairs (used to
    leave a test model's own micro-dataset out). Returns ``idx`` (M, V) int, -1 where the
    voter abstains, and ``dist`` (M, V) euclidean distance, NaN where it abstains.
    One batched matrix product per block of test models, no per-layer loop:
    |x − t|² = |t|² − 2 x·t + |x|², where |x|² is the same for every reference and so is
    added only to the winners.
    """
    ref = train if isinstance(train, References) else References.of(train)
    tr_t, tr_sq = ref.tr_t, ref.tr_sq
    v, n = tr_sq.shape
    block = max(1, int(_BLOCK_ELEMENTS // max(v * n, 1)))
    idx = np.empty(test.shape[:2], dtype=np.int64)
    dist = np.empty(test.shape[:2])
    for start in range(0, test.shape[0], block):
        chunk = test[start : start + block]
        te = np.ascontiguousarray(np.swapaxes(np.nan_to_num(chunk), 0, 1))  # (V, m, W)
        d2 = te @ tr_t  # (V, m, N)
        d2 *= -2.0
        d2 += tr_sq[:, None, :]
        if exclude is not None:
            d2 += np.where(exclude[start : start + block], np.inf, 0.0)[None]
        best = np.argmin(d2, axis=2)  # (V, m): first minimum in fit order
        best_d = np.take_along_axis(d2, best[:, :, None], axis=2)[:, :, 0] + np.einsum("vmw,vmw->vm", te, te)
        abstain = np.isnan(chunk).any(axis=2).T | ~np.isfinite(best_d)
        best[abstain] = -1
        idx[start : start + len(chunk)] = best.T
        dist[start : start + len(chunk)] = np.where(abstain, np.nan, np.sqrt(np.maximum(best_d, 0.0))).T
    return idx, dist


# --------------------------------------------------------------------------- voting


def tally(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(M, V) class indices (-1 abstain) -> (M, C) vote counts."""
    m, c = labels.shape[0], len(classes)
    flat = labels + np.arange(m)[:, None] * c
    counts = np.bincount(flat[labels >= 0], minlength=m * c)
    return counts.reshape(m, c)


def nearest_class(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Index of the known size nearest to each value (ties to the smaller size)."""
    return np.argmin(np.abs(values[..., None] - classes.astype(float)), axis=-1)


def _majority(counts: np.ndarray, classes: np.ndarray, tie: str) -> np.ndarray:
    """Majority vote with the documented tie rule; returns class indices (M,)."""
    if (counts.sum(axis=1) == 0).any():
        raise BankError(_NOTHING_VOTES)
    top = counts == counts.max(axis=1, keepdims=True)
    if tie == "smallest":
        return np.argmax(top, axis=1)
    # lower median of the votes, then the tied size closest to it, then the smaller size
    half = counts.sum(axis=1, keepdims=True) / 2.0
    med = np.argmax(np.cumsum(counts, axis=1) >= half, axis=1)
    gap = np.abs(classes[None, :].astype(float) - classes[med][:, None])
    gap[~top] = np.inf
    return np.argmin(gap, axis=1)


def decide(ci: np.ndarray, classes: np.ndarray, tie: str, vote: str) -> np.ndarray:
    """The sizes (M,) voted by per-voter class indices ``ci`` (M, V), -1 abstaining."""
    if vote == "average":
        sizes = np.where(ci >= 0, classes[np.maximum(ci, 0)], np.nan).astype(float)
        if np.isnan(sizes).all(axis=1).any():
            raise BankError(_NOTHING_VOTES)
        return classes[nearest_class(np.nanmean(sizes, axis=1), classes)]
    return classes[_majority(tally(ci, classes), classes, tie)]


@dataclass(frozen=True)
class VoteState:
    """DSiRe fitted: its references (transformed by ``metric``) and their sizes."""

    ref: References
    y_index: np.ndarray  # (N,) index into ``classes``
    classes: np.ndarray  # (C,) the known sizes, ascending
    metric: str = "euclidean"
    tie: str = "median"
    vote: str = "majority"

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, metric: str = "euclidean", tie: str = "median",
            vote: str = "majority") -> VoteState:  # fmt: skip
        classes, y_index = np.unique(y, return_inverse=True)
        return cls(References.of(metric_transform(X, metric)), y_index, classes, metric, tie, vote)

    def voter_classes(self, X: np.ndarray) -> np.ndarray:
        """(M, V) the class index each voter's nearest reference has; -1 where it abstains."""
        idx, _ = nearest_references(self.ref, metric_transform(X, self.metric))
        return np.where(idx >= 0, self.y_index[np.maximum(idx, 0)], -1)

    def predict_with_votes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sizes (M,), vote counts (M, C)) from one search."""
        ci = self.voter_classes(X)
        return decide(ci, self.classes, self.tie, self.vote), tally(ci, self.classes)


# --------------------------------------------------------------------------- continuous estimate


def _check_any(per: np.ndarray) -> None:
    if np.isnan(per).all(axis=1).any():
        raise BankError(_NOTHING_VOTES)


#: The pooled ridge's strengths, tried by cross-validation over the training micro-datasets.
POOLED_ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
BASES = ("pooled", "ridge", "votes")


@dataclass(frozen=True)
class LogSizeModel:
    """Estimates of log(size) and the spread behind them, three ways (``base``):

    - ``pooled``: one ridge on every voter's standardised log σ at once, predicting the size in
      images (the error the tables count), its strength chosen by leave-one-micro-dataset-out
      cross-validation on the references unless ``alpha`` is given. No voters to disagree:
      spread 0, so the interval's width is the conformal residuals' alone.
    - ``ridge``: one ridge per voter on log σ predicting log(size); the median over voters, their
      spread as the MAD.
    - ``votes``: the log of the size each voter's 1-NN votes for; their mean and std.
    """

    base: str
    mu: np.ndarray | None = None  # ridge/pooled: (V, W) standardisation and coefficients
    sd: np.ndarray | None = None
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None  # ridge: (V,); pooled: (1,)
    ref: References | None = None  # votes: the references and their log sizes
    logy: np.ndarray | None = None

    @classmethod
    def fit(cls, X: np.ndarray, logy: np.ndarray, base: str, alpha: float | None = None,
            groups: np.ndarray | None = None) -> LogSizeModel:  # fmt: skip
        if base == "votes":
            return cls(base, ref=References.of(X), logy=logy)
        F = log_features(X)
        mu, sd = standardise(F)
        if base == "ridge":
            coef, intercept = batched_ridge((F - mu) / sd, logy, 1.0 if alpha is None else alpha)
            return cls(base, mu, sd, coef, intercept)
        Z = np.nan_to_num((F - mu) / sd).reshape(len(F), -1)  # a missing voter sits at the mean: 0
        y = np.exp(logy)
        if alpha is None:
            alpha = _pooled_alpha(Z, y, groups)
        coef, intercept = _kernel_ridge(Z, y, alpha)
        return cls(base, mu, sd, coef.reshape(mu.shape), np.array([intercept]))

    def stored(self) -> dict[str, Any]:
        """The fitted arrays as JSON lists (float64 values survive JSON exactly); the votes model
        is its references, which a bank stores as tensors."""
        if self.base == "votes":
            return {"base": self.base}
        return {"base": self.base, **{k: getattr(self, k).tolist() for k in _RIDGE_ARRAYS}}

    @staticmethod
    def check(stored: dict[str, Any], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The arrays of a ``stored()`` form for references of features ``shape`` (N, V, W);
        ValueError, KeyError or TypeError when it is not one."""
        if stored["base"] not in BASES:
            raise ValueError(f"unknown base {stored['base']!r}")
        if stored["base"] == "votes":
            return {}
        intercept = shape[1:2] if stored["base"] == "ridge" else (1,)
        return {k: _array(stored[k], intercept if k == "intercept" else shape[1:]) for k in _RIDGE_ARRAYS}

    @classmethod
    def restore(cls, X: np.ndarray, logy: np.ndarray, stored: dict[str, Any]) -> LogSizeModel:
        """The model fitted on references X (log sizes ``logy``) from its ``stored()`` form."""
        arrays = cls.check(stored, X.shape)
        if stored["base"] == "votes":
            return cls("votes", ref=References.of(X), logy=logy)
        return cls(stored["base"], **arrays)

    def point(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point estimate (log size) and voter spread for each model in X."""
        if self.base == "votes":
            idx, _ = nearest_references(self.ref, X)
            per = np.where(idx >= 0, self.logy[np.maximum(idx, 0)], np.nan)
            _check_any(per)
            return np.nanmean(per, axis=1), np.nanstd(per, axis=1)
        z = (log_features(X) - self.mu) / self.sd
        if self.base == "pooled":
            _check_any(z[:, :, 0])
            size = np.einsum("mvw,vw->m", np.nan_to_num(z), self.coef) + self.intercept[0]
            return np.log(np.maximum(size, 1.0)), np.zeros(len(X))  # no LoRA has fewer than 1 image
        per = np.einsum("mvw,vw->mv", z, self.coef) + self.intercept  # NaN rows stay NaN
        _check_any(per)
        med = np.nanmedian(per, axis=1)
        return med, 1.4826 * np.nanmedian(np.abs(per - med[:, None]), axis=1)


_RIDGE_ARRAYS = ("mu", "sd", "coef", "intercept")


def _kernel_ridge(Z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge solved in its dual form, an N×N system (far fewer references than features):
    (coefficients, intercept), so that the prediction is ``Z @ coef + intercept``."""
    zbar, ybar = Z.mean(axis=0), float(y.mean())
    Zc = Z - zbar
    coef = Zc.T @ np.linalg.solve(Zc @ Zc.T + alpha * np.eye(len(Z)), y - ybar)
    return coef, ybar - float(zbar @ coef)


def _pooled_alpha(Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> float:
    """The strength of :data:`POOLED_ALPHAS` with the lowest mean absolute error (images) on
    held-out micro-datasets; the first (weakest) when there is nothing to hold out.

    Every fold and strength works from one Gram matrix of Z: a fold's centred kernel and its
    held-out rows' cross-kernel follow from it, and one eigendecomposition per fold serves every
    strength, so the search costs N×N algebra, not the features' width, per fold."""
    folds = held_out_folds(groups, len(y))
    if not folds:
        return POOLED_ALPHAS[0]
    G = Z @ Z.T
    errors = np.zeros(len(POOLED_ALPHAS))
    for held in folds:
        fit = ~held
        g_ff, g_hf = G[np.ix_(fit, fit)], G[np.ix_(held, fit)]
        row, total = g_ff.mean(axis=1), g_ff.mean()
        K = g_ff - row[:, None] - row[None, :] + total  # the Gram of the fit rows, centred
        cross = g_hf - g_hf.mean(axis=1, keepdims=True) - row[None, :] + total
        lam, U = np.linalg.eigh(K)
        ybar = y[fit].mean()
        proj = U.T @ (y[fit] - ybar)
        for i, alpha in enumerate(POOLED_ALPHAS):
            pred = cross @ (U @ (proj / (lam + alpha))) + ybar
            errors[i] += np.abs(np.maximum(pred, 1.0) - y[held]).sum()
    return POOLED_ALPHAS[int(np.argmin(errors))]


def _array(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A stored list as a float64 array of the expected shape (ValueError otherwise)."""
    out = np.asarray(values, dtype=np.float64)
    if out.shape != shape:
        raise ValueError(f"stored array of shape {out.shape}, expected {shape}")
    return out


def group_folds(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Boolean masks of the held-out models, one per micro-dataset (or per model)."""
    if groups is None:
        return [np.arange(n) == i for i in range(n)]
    return [groups == g for g in np.unique(groups)]


def held_out_folds(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """:func:`group_folds` by micro-dataset, or none when fewer than two micro-datasets are known."""
    return group_folds(groups, n) if groups is not None and len(np.unique(groups)) > 1 else []


@dataclass(frozen=True)
class IntervalState:
    """The continuous estimate fitted: its log-size model and the conformal quantiles of the
    normalised residuals on held-out micro-datasets (see ``SizeInterval``)."""

    model: LogSizeModel
    quantiles: tuple[float, float]
    coverage: float
    calibrated: bool
    residuals: np.ndarray | None = None

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, base: str = "pooled",
            alpha: float | None = None, coverage: float = 0.8) -> IntervalState:  # fmt: skip
        logy = np.log(y.astype(float))
        model = LogSizeModel.fit(X, logy, base, alpha, groups)
        folds = held_out_folds(groups, len(y))
        if not folds:  # nothing to hold out: ±1.28 voter spreads, 80 % of a normal
            return cls(model, (-1.2816, 1.2816), coverage, False)
        resid = np.empty(len(y))
        for held in folds:
            # refit as a whole: a pooled strength is chosen without the held-out micro-dataset too
            refit = LogSizeModel.fit(X[~held], logy[~held], base, alpha, groups[~held])
            point, spread = refit.point(X[held])
            resid[held] = (logy[held] - point) / (spread + 0.05)
        lo, hi = (1 - coverage) / 2, (1 + coverage) / 2
        return cls(
            model, (float(np.quantile(resid, lo)), float(np.quantile(resid, hi))), coverage, True, resid
        )

    def stored(self) -> dict[str, Any]:
        return {"model": self.model.stored(), "quantiles": list(self.quantiles), "coverage": self.coverage,
                "calibrated": self.calibrated}  # fmt: skip

    @staticmethod
    def check(stored: dict[str, Any], shape: tuple[int, ...]) -> None:
        """Raises ValueError, KeyError or TypeError unless ``stored`` fits references of ``shape``."""
        LogSizeModel.check(stored["model"], shape)
        _array(stored["quantiles"], (2,))
        float(stored["coverage"])

    @classmethod
    def restore(cls, X: np.ndarray, y: np.ndarray, stored: dict[str, Any]) -> IntervalState:
        lo, hi = (float(q) for q in _array(stored["quantiles"], (2,)))
        model = LogSizeModel.restore(X, np.log(y.astype(float)), stored["model"])
        return cls(model, (lo, hi), float(stored["coverage"]), bool(stored["calibrated"]))

    def predict_interval(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) in images."""
        point, spread = self.model.point(X)
        width = spread + 0.05
        lo = np.exp(point + self.quantiles[0] * width)
        hi = np.exp(point + self.quantiles[1] * width)
        est = np.exp(point)
        return est, np.minimum(lo, est), np.maximum(hi, est)


# --------------------------------------------------------------------------- applicability


@dataclass(frozen=True)
class ApplicabilityState:
    """Applicability fitted: references on log σ, each voter's typical nearest-reference distance
    (``scale``) and the references' own statistics (see ``Applicability``)."""

    ref: References
    scale: np.ndarray  # (V,)
    reference_stats: np.ndarray  # (N,)

    @classmethod
    def fit(cls, X: np.ndarray, groups: np.ndarray | None) -> ApplicabilityState:
        logs = log_features(X)
        ref = References.of(logs)
        # with a single micro-dataset nothing is left when it is held out: leave out each model instead
        g = np.arange(len(X)) if groups is None or len(np.unique(groups)) < 2 else groups
        _, dist = nearest_references(ref, logs, exclude=g[:, None] == g[None, :])
        scale = np.nanmedian(dist, axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1e-12)
        return cls(ref, scale, np.nanmedian(np.log(dist / scale + 1e-12), axis=1))

    def stored(self) -> dict[str, Any]:
        return {"scale": self.scale.tolist(), "reference_stats": self.reference_stats.tolist()}

    @staticmethod
    def check(stored: dict[str, Any], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The scale and statistics of a ``stored()`` form for references of ``shape`` (N, V, W)."""
        return _array(stored["scale"], shape[1:2]), _array(stored["reference_stats"], shape[:1])

    @classmethod
    def restore(cls, X: np.ndarray, stored: dict[str, Any]) -> ApplicabilityState:
        """The state fitted on references X, from its ``stored()`` form."""
        scale, reference_stats = cls.check(stored, X.shape)
        return cls(References.of(log_features(X)), scale, reference_stats)

    def statistic(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(median log distance ratio, fraction of voters present) per target."""
        present = ~np.isnan(X).any(axis=2)
        _, dist = nearest_references(self.ref, log_features(X))
        with np.errstate(all="ignore"):
            stat = np.nanmedian(np.log(dist / self.scale + 1e-12), axis=1)
        return np.where(present.any(axis=1), stat, np.inf), present.mean(axis=1)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Applicability in [0, 1] per target."""
        stat, present = self.statistic(X)
        ref = np.sort(self.reference_stats[np.isfinite(self.reference_stats)])
        at_least = len(ref) - np.searchsorted(ref, stat, side="left")
        return (1 + at_least) / (len(ref) + 1) * present
