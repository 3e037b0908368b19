"""Dataset-size estimators on LoRA spectra: DSiRe, the paper's rivals, and what goes beyond it.

Every estimator follows scikit-learn's contract (params in ``__init__``, fitted state in
trailing-underscore attributes, validation in ``fit``/``predict``, ``check_is_fitted``) and
sees a model as a stack of *voters*: one row of singular values per (matrix kind, layer), i.e.
an array X of shape (N models, V voters, W values). ``fit``/``predict`` take a ``SpectraTable``
(labels come from ``table.size``, groups from ``table.micro_dataset``), one ``Spectra``, a
list of them, or such an X array directly.

Missing layers are NaN rows (see ``Spectra.align``): a target's missing voter abstains, a
reference's missing voter is never anyone's nearest neighbour.

Tie rules, all deterministic:
- inside one voter, equally near references resolve to the first in fit order (as
  ``argmin`` and scikit-learn's brute-force search do);
- between sizes with equal vote counts, ``tie="median"`` (default) takes the tied size closest
  to the median vote (an MAE-minimising choice), then the smaller size; ``tie="smallest"``
  takes the smallest tied size (what ``np.bincount(...).argmax()`` and ``scipy.stats.mode``,
  used by the published code, do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from lora_wise.errors import BankError
from lora_wise.spectra.compute import Spectra
from lora_wise.spectra.table import SpectraTable

KINDS = ("a", "b", "ba", "fro")
_BLOCK_ELEMENTS = 8_000_000  # distances per batched block (64 MB): bounds memory for large banks


# --------------------------------------------------------------------------- features


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
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown matrix kinds {bad or list(kinds)}; choose from {KINDS}")
    if isinstance(source, Spectra):
        source = [source]
    if not isinstance(source, SpectraTable):
        source = _stack_spectra(list(source), layers, width)
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


def _stack_spectra(items: list[Spectra], layers: Sequence[str] | None, width: int | None) -> SpectraTable:
    if not items:
        raise ValueError("no spectra given")
    layers = list(layers or items[0].layers)
    width = width or max(s.width for s in items)
    aligned = [s.align(layers, width) for s in items]
    n = len(aligned)
    return SpectraTable(
        layers=layers,
        a=np.stack([s.a for s in aligned]),
        b=np.stack([s.b for s in aligned]),
        ba=np.stack([s.ba for s in aligned]),
        fro=np.stack([s.fro for s in aligned]),
        size=np.zeros(n, dtype=np.int64),
        micro_dataset=np.array([""] * n),
        step=np.zeros(n, dtype=np.int64),
        rank=np.full(n, width, dtype=np.int64),
        backbone=np.array(["unknown"] * n),
        model_id=np.array([""] * n),
    )


def _as_xy(est, X, y=None, groups=None, fitting: bool = False):
    """Turn any accepted input into (X (N,V,W), y or None, groups or None)."""
    if isinstance(X, SpectraTable):
        y = X.size if y is None else y
        groups = X.micro_dataset if groups is None else groups
    if fitting:  # the layer order every later input is aligned to (None for raw arrays)
        first = X[0] if isinstance(X, (list, tuple)) and X else X
        est.layers_ = list(first.layers) if isinstance(first, (SpectraTable, Spectra)) else None
    if isinstance(X, (SpectraTable, Spectra, list, tuple)) and not isinstance(X, np.ndarray):
        layers = getattr(est, "layers_", None)
        width = getattr(est, "width_", None) if not fitting else None
        if isinstance(X, SpectraTable) and layers is not None and list(X.layers) != layers:
            X = _realign_table(X, layers)
        X = voter_features(X, est.kinds, layers=layers, width=width)
    else:
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"expected features of shape (models, voters, width), got {X.shape}")
    if not fitting:
        expected = est.train_.shape[1:]
        if X.shape[1:] != expected:
            raise BankError(f"features of shape {X.shape[1:]} do not match the fitted {expected}")
    if y is not None:
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (X.shape[0],):
            raise ValueError(f"{y.shape[0]} labels for {X.shape[0]} models")
    return X, y, (None if groups is None else np.asarray(groups))


def _realign_table(table: SpectraTable, layers: list[str]) -> SpectraTable:
    index = {name: i for i, name in enumerate(table.layers)}
    cols = [index.get(name, -1) for name in layers]

    def take(arr):
        out = np.full(arr.shape[:1] + (len(layers),) + arr.shape[2:], np.nan)
        for j, c in enumerate(cols):
            if c >= 0:
                out[:, j] = arr[:, c]
        return out

    fields = {k: take(getattr(table, k)) for k in ("a", "b", "ba", "fro")}
    meta = {k: getattr(table, k) for k in ("size", "micro_dataset", "step", "rank", "backbone", "model_id")}
    return SpectraTable(list(layers), **fields, **meta)


# --------------------------------------------------------------------------- distances


@dataclass(frozen=True)
class References:
    """A reference set laid out for the batched search, prepared once per fit."""

    tr_t: np.ndarray  # (V, W, N)
    tr_sq: np.ndarray  # (V, N), +inf where the reference lacks the voter

    @classmethod
    def of(cls, train: np.ndarray) -> References:
        tr = np.ascontiguousarray(np.swapaxes(np.nan_to_num(train), 0, 1))  # (V, N, W)
        tr_sq = np.einsum("vnw,vnw->vn", tr, tr)
        tr_sq[np.isnan(train).any(axis=2).T] = np.inf  # a reference's missing voter is never nearest
        return cls(np.ascontiguousarray(np.swapaxes(tr, 1, 2)), tr_sq)


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


def _tally(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(M, V) class indices (-1 abstain) -> (M, C) vote counts."""
    m, c = labels.shape[0], len(classes)
    flat = labels + np.arange(m)[:, None] * c
    counts = np.bincount(flat[labels >= 0], minlength=m * c)
    return counts.reshape(m, c)


def _resolve(counts: np.ndarray, classes: np.ndarray, tie: str) -> np.ndarray:
    """Majority vote with the documented tie rule; returns class indices (M,)."""
    if (counts.sum(axis=1) == 0).any():
        raise BankError("the target shares no layer with the reference models: nothing can vote")
    top = counts == counts.max(axis=1, keepdims=True)
    if tie == "smallest":
        return np.argmax(top, axis=1)
    # lower median of the votes, then the tied size closest to it, then the smaller size
    half = counts.sum(axis=1, keepdims=True) / 2.0
    med = np.argmax(np.cumsum(counts, axis=1) >= half, axis=1)
    gap = np.abs(classes[None, :].astype(float) - classes[med][:, None])
    gap[~top] = np.inf
    return np.argmin(gap, axis=1)


def _nearest_class(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Index of the known size nearest to each value (ties to the smaller size)."""
    return np.argmin(np.abs(values[..., None] - classes.astype(float)), axis=-1)


class _VoterEnsemble(ClassifierMixin, BaseEstimator):
    """Shared plumbing: fit stores references, subclasses produce per-voter class indices."""

    kinds: tuple[str, ...]
    tie: str
    vote: str

    def fit(self, X, y=None, groups=None):
        X, y, groups = _as_xy(self, X, y, groups, fitting=True)
        if y is None:
            raise ValueError("labels (dataset sizes) are required to fit")
        if self.tie not in ("median", "smallest"):
            raise ValueError(f"tie must be 'median' or 'smallest', not {self.tie!r}")
        if getattr(self, "vote", "majority") not in ("majority", "average"):
            raise ValueError(f"vote must be 'majority' or 'average', not {self.vote!r}")
        self.classes_, self.y_index_ = np.unique(y, return_inverse=True)
        self.train_ = X
        self.groups_ = groups
        self.width_ = X.shape[2]
        self.n_voters_ = X.shape[1]
        self._fit_voters(X, self.y_index_)
        return self

    def _fit_voters(self, X, yi) -> None:  # noqa: B027 - optional hook
        pass

    def voter_predictions(self, X) -> np.ndarray:
        """(M, V) the size each voter predicts; 0 where the voter abstains."""
        check_is_fitted(self, "train_")
        X, _, _ = _as_xy(self, X)
        ci = self._voter_classes(X)
        return np.where(ci >= 0, self.classes_[np.maximum(ci, 0)], 0)

    def predict_votes(self, X) -> np.ndarray:
        """(M, C) per-size vote counts, columns in ``classes_`` order."""
        check_is_fitted(self, "train_")
        X, _, _ = _as_xy(self, X)
        return _tally(self._voter_classes(X), self.classes_)

    def vote_histogram(self, X) -> list[dict[int, int]]:
        """Per model, {size: votes} over every known size (zeros included)."""
        return [dict(zip(self.classes_.tolist(), row.tolist(), strict=True)) for row in self.predict_votes(X)]

    def predict(self, X) -> np.ndarray:
        return self.predict_with_votes(X)[0]

    def predict_with_votes(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(sizes, (M, C) vote counts) from one search."""
        check_is_fitted(self, "train_")
        X, _, _ = _as_xy(self, X)
        ci = self._voter_classes(X)
        return self._decide(ci), _tally(ci, self.classes_)

    def _decide(self, ci: np.ndarray) -> np.ndarray:
        if getattr(self, "vote", "majority") == "average":
            sizes = np.where(ci >= 0, self.classes_[np.maximum(ci, 0)], np.nan).astype(float)
            if np.isnan(sizes).all(axis=1).any():
                raise BankError("the target shares no layer with the reference models: nothing can vote")
            return self.classes_[_nearest_class(np.nanmean(sizes, axis=1), self.classes_)]
        return self.classes_[_resolve(_tally(ci, self.classes_), self.classes_, self.tie)]

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy; ``y`` defaults to ``X.size`` for a table."""
        if y is None and isinstance(X, SpectraTable):
            y = X.size
        return super().score(X, y, sample_weight=sample_weight)


class DSiRe(_VoterEnsemble):
    """DSiRe: one 1-NN per (layer, matrix kind) on singular values, majority vote.

    ``metric`` is ``"euclidean"`` (the paper's) or ``"log"`` (euclidean on log(σ+ε), which
    weighs small singular values as much as large ones). ``vote="average"`` is the paper's
    "average vote" rival: the mean of the voted sizes, rounded to the nearest known size.
    """

    def __init__(self, kinds=("a", "b", "ba"), metric="euclidean", tie="median", vote="majority"):
        self.kinds = kinds
        self.metric = metric
        self.tie = tie
        self.vote = vote

    def _transform(self, X: np.ndarray) -> np.ndarray:
        if self.metric == "euclidean":
            return X
        if self.metric == "log":
            return np.log(np.abs(X) + 1e-8)
        raise ValueError(f"metric must be 'euclidean' or 'log', not {self.metric!r}")

    def _fit_voters(self, X, yi) -> None:
        self.ref_ = References.of(self._transform(X))

    def neighbours(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(M, V) index of each voter's nearest reference (-1 abstains) and its distance."""
        check_is_fitted(self, "train_")
        X, _, _ = _as_xy(self, X)
        return nearest_references(self.ref_, self._transform(X))

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        idx, _ = nearest_references(self.ref_, self._transform(X))
        return np.where(idx >= 0, self.y_index_[np.maximum(idx, 0)], -1)


class FrobeniusNN(DSiRe):
    """The paper's baseline: DSiRe with each layer's ‖scale·B·A‖_F as its only feature."""

    def __init__(self, kinds=("fro",), metric="euclidean", tie="median", vote="majority"):
        super().__init__(kinds=kinds, metric=metric, tie=tie, vote=vote)


class NNFullModel(_VoterEnsemble):
    """One 1-NN on the whole model (all voters concatenated): the paper's "NN-full model".

    A reference's missing voters count as zeros; a target's missing voters are dropped from
    the distance on both sides.
    """

    def __init__(self, kinds=("a", "b", "ba"), tie="median"):
        self.kinds = kinds
        self.tie = tie

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        present = ~np.isnan(X).any(axis=2)  # (M, V)
        tr = np.nan_to_num(self.train_)
        out = np.empty(X.shape[0], dtype=np.int64)
        whole = present.all(axis=1)
        if whole.any():  # complete targets: one batched search over the flattened model
            idx, _ = nearest_references(tr.reshape(len(tr), 1, -1), X[whole].reshape(int(whole.sum()), 1, -1))
            out[whole] = self.y_index_[idx[:, 0]]
        for i in np.flatnonzero(~whole):  # targets with missing layers: compare on what they have
            diff = (tr - np.nan_to_num(X[i])[None]) * present[i][None, :, None]
            out[i] = self.y_index_[np.argmin(np.einsum("nvw,nvw->n", diff, diff))]
        # every present voter "votes" the model's single answer, so histograms stay comparable
        return np.where(present, out[:, None], -1)


def _standardise(X: np.ndarray):
    """Per-voter, per-column z-scores from the references (NaN references ignored)."""
    mu = np.nanmean(X, axis=0)
    sd = np.nanstd(X, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return np.nan_to_num(mu), np.nan_to_num(sd, nan=1.0)


class RidgeVote(_VoterEnsemble):
    """The paper's ridge rival: per voter, ridge regression of size on standardised spectra,
    rounded to the nearest known size, then the majority vote. Solved for all voters at once."""

    def __init__(self, kinds=("a", "b", "ba"), alpha=1.0, tie="median"):
        self.kinds = kinds
        self.alpha = alpha
        self.tie = tie

    def _fit_voters(self, X, yi) -> None:
        self.mu_, self.sd_ = _standardise(X)
        self.coef_, self.intercept_ = _batched_ridge(
            (X - self.mu_) / self.sd_, self.classes_[yi].astype(float), self.alpha
        )

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        z = (X - self.mu_) / self.sd_
        pred = np.einsum("mvw,vw->mv", np.nan_to_num(z), self.coef_) + self.intercept_
        ci = _nearest_class(pred, self.classes_)
        return np.where(np.isnan(X).any(axis=2), -1, ci)


def _batched_ridge(Z: np.ndarray, y: np.ndarray, alpha: float):
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


class GDAVote(_VoterEnsemble):
    """The paper's GDA rival: per voter, a Gaussian class model on standardised spectra
    (``covariance="per-class"``: QDA; ``"shared"``: LDA), each covariance shrunk towards the
    identity by ``reg`` (spectra have more values than a class has references), then the
    majority vote. All voters and classes are solved in one batched Cholesky. With more
    references per class than values per voter, ``per-class`` is exactly scikit-learn's
    ``QuadraticDiscriminantAnalysis(reg_param=reg)`` per voter (tested), without 384 objects."""

    def __init__(self, kinds=("a", "b", "ba"), reg=0.3, covariance="per-class", tie="median"):
        self.kinds = kinds
        self.reg = reg
        self.covariance = covariance
        self.tie = tie

    def _fit_voters(self, X, yi) -> None:
        if self.covariance not in ("per-class", "shared"):
            raise ValueError(f"covariance must be 'per-class' or 'shared', not {self.covariance!r}")
        self.mu_, self.sd_ = _standardise(X)
        Z = np.nan_to_num((X - self.mu_) / self.sd_)
        w, c = X.shape[2], len(self.classes_)
        means = np.stack([Z[yi == k].mean(axis=0) for k in range(c)], axis=1)  # (V, C, W)
        resid = [Z[yi == k] - means[:, k][None] for k in range(c)]
        covs = np.stack([np.einsum("nvw,nvu->vwu", r, r) / max(len(r), 1) for r in resid], axis=1)
        if self.covariance == "shared":
            counts = np.bincount(yi, minlength=c) / len(yi)
            covs = np.broadcast_to(np.einsum("vcwu,c->vwu", covs, counts)[:, None], covs.shape)
        covs = (1 - self.reg) * covs + self.reg * np.eye(w)
        chol = np.linalg.cholesky(covs)  # (V, C, W, W)
        self.chol_inv_ = np.linalg.inv(chol)  # applied to every target: invert once, multiply after
        self.means_ = means
        self.logdet_ = 2 * np.log(np.diagonal(chol, axis1=2, axis2=3)).sum(axis=2)
        self.logprior_ = np.log(np.bincount(yi, minlength=c) / len(yi))

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        z = np.nan_to_num((X - self.mu_) / self.sd_)  # (M, V, W)
        diff = z[:, :, None, :] - self.means_[None]  # (M, V, C, W)
        sol = np.einsum("vcwu,mvcu->mvcw", self.chol_inv_, diff)  # L⁻¹(x-μ)
        score = -0.5 * (np.einsum("mvcw,mvcw->mvc", sol, sol) + self.logdet_[None]) + self.logprior_
        return np.where(np.isnan(X).any(axis=2), -1, np.argmax(score, axis=2))


# --------------------------------------------------------------------------- beyond the paper


def _log_features(X: np.ndarray) -> np.ndarray:
    # singular values span decades and fall with size roughly as a power law: logs make that linear
    return np.log(np.abs(X) + 1e-8)


def _group_folds(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Boolean masks of the held-out models, one per micro-dataset (or per model)."""
    if groups is None:
        return [np.arange(n) == i for i in range(n)]
    return [groups == g for g in np.unique(groups)]


class SizeInterval(RegressorMixin, BaseEstimator):
    """A continuous size estimate with an interval, for sizes the references never had.

    Per voter, an estimate of log(size): ``base="ridge"`` regresses log(size) on log singular
    values (one ridge per voter, solved together); ``base="votes"`` takes the log of the size
    each voter's 1-NN votes for. The point estimate combines voters (median for ridge, mean for
    votes) and ``s`` is their spread. The interval is split-conformal over micro-datasets:
    refit without each training micro-dataset, collect the normalised residuals
    (log true − log estimate) / (s + 0.05), and use their (1±coverage)/2 quantiles, so the
    interval is honest about concept-to-concept error and widens when the voters disagree.
    With fewer than two micro-datasets nothing can be held out; the interval then falls back
    to ±1.28·s (80 % of a normal) and ``calibrated_`` is False.
    """

    def __init__(self, kinds=("a", "b", "ba"), base="ridge", alpha=1.0, coverage=0.8):
        self.kinds = kinds
        self.base = base
        self.alpha = alpha
        self.coverage = coverage

    def fit(self, X, y=None, groups=None):
        X, y, groups = _as_xy(self, X, y, groups, fitting=True)
        if y is None:
            raise ValueError("labels (dataset sizes) are required to fit")
        if self.base not in ("ridge", "votes"):
            raise ValueError(f"base must be 'ridge' or 'votes', not {self.base!r}")
        if not 0 < self.coverage < 1:
            raise ValueError("coverage must lie strictly between 0 and 1")
        self.train_, self.width_ = X, X.shape[2]
        self.classes_ = np.unique(y)
        self.logy_ = np.log(y.astype(float))
        self.state_ = self._fit_state(X, self.logy_)
        folds = _group_folds(groups, len(y)) if groups is not None and len(np.unique(groups)) > 1 else []
        self.calibrated_ = bool(folds)
        if folds:
            resid = np.empty(len(y))
            for held in folds:
                point, spread = self._point(self._fit_state(X[~held], self.logy_[~held]), X[held])
                resid[held] = (self.logy_[held] - point) / (spread + 0.05)
            lo, hi = (1 - self.coverage) / 2, (1 + self.coverage) / 2
            self.quantiles_ = (float(np.quantile(resid, lo)), float(np.quantile(resid, hi)))
            self.residuals_ = resid
        else:
            self.quantiles_ = (-1.2816, 1.2816)
        return self

    def _fit_state(self, X: np.ndarray, logy: np.ndarray) -> dict:
        if self.base == "votes":
            return {"ref": References.of(X), "logy": logy}
        F = _log_features(X)
        mu, sd = _standardise(F)
        coef, icpt = _batched_ridge((F - mu) / sd, logy, self.alpha)
        return {"mu": mu, "sd": sd, "coef": coef, "icpt": icpt}

    def _point(self, state: dict, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point estimate (log size) and voter spread for each model in X."""
        if self.base == "votes":
            idx, _ = nearest_references(state["ref"], X)
            per = np.where(idx >= 0, state["logy"][np.maximum(idx, 0)], np.nan)
            self._check_any(per)
            return np.nanmean(per, axis=1), np.nanstd(per, axis=1)
        F = _log_features(X)
        z = (F - state["mu"]) / state["sd"]
        per = np.einsum("mvw,vw->mv", z, state["coef"]) + state["icpt"]  # NaN rows stay NaN
        self._check_any(per)
        med = np.nanmedian(per, axis=1)
        return med, 1.4826 * np.nanmedian(np.abs(per - med[:, None]), axis=1)

    @staticmethod
    def _check_any(per: np.ndarray) -> None:
        if np.isnan(per).all(axis=1).any():
            raise BankError("the target shares no layer with the reference models: nothing can vote")

    def predict(self, X) -> np.ndarray:
        return self.predict_interval(X)[0]

    def predict_interval(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) in images; the interval covers ``coverage`` of held-out concepts."""
        check_is_fitted(self, "state_")
        X, _, _ = _as_xy(self, X)
        point, spread = self._point(self.state_, X)
        width = spread + 0.05
        lo = np.exp(point + self.quantiles_[0] * width)
        hi = np.exp(point + self.quantiles_[1] * width)
        est = np.exp(point)
        return est, np.minimum(lo, est), np.maximum(hi, est)


class Applicability(BaseEstimator):
    """How much a target resembles the reference models, in [0, 1]; low means "do not guess".

    Per voter, the distance (on log singular values) from the target to its nearest reference
    is divided by that voter's typical nearest-reference distance among the references
    themselves, each reference measured with its own micro-dataset left out (a new concept is
    exactly what a real target is). The median log ratio over voters is the target's statistic;
    the score is its conformal p-value against the references' own statistics,
    (1 + #{references at least as far}) / (N + 1), times the fraction of voters the target
    has (missing layers count against it). In-distribution targets score roughly uniformly on
    (0, 1]; a LoRA of another backbone, rank, recipe or step count lands near 1/(N+1).
    """

    def __init__(self, kinds=("a", "b", "ba")):
        self.kinds = kinds

    def fit(self, X, y=None, groups=None):
        X, _, groups = _as_xy(self, X, None, groups, fitting=True)
        self.train_, self.width_ = X, X.shape[2]
        logs = _log_features(X)
        self.ref_ = References.of(logs)
        # with a single micro-dataset nothing is left when it is held out: leave out each model instead
        g = np.arange(len(X)) if groups is None or len(np.unique(groups)) < 2 else groups
        _, dist = nearest_references(self.ref_, logs, exclude=g[:, None] == g[None, :])
        scale = np.nanmedian(dist, axis=0)
        self.scale_ = np.where(np.isfinite(scale) & (scale > 0), scale, 1e-12)
        self.reference_stats_ = np.nanmedian(np.log(dist / self.scale_ + 1e-12), axis=1)
        return self

    def statistic(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(median log distance ratio, fraction of voters present) per target."""
        check_is_fitted(self, "ref_")
        X, _, _ = _as_xy(self, X)
        present = ~np.isnan(X).any(axis=2)
        _, dist = nearest_references(self.ref_, _log_features(X))
        with np.errstate(all="ignore"):
            stat = np.nanmedian(np.log(dist / self.scale_ + 1e-12), axis=1)
        return np.where(present.any(axis=1), stat, np.inf), present.mean(axis=1)

    def score_samples(self, X) -> np.ndarray:
        """Applicability in [0, 1] per target."""
        stat, present = self.statistic(X)
        ref = np.sort(self.reference_stats_[np.isfinite(self.reference_stats_)])
        at_least = len(ref) - np.searchsorted(ref, stat, side="left")
        return (1 + at_least) / (len(ref) + 1) * present


#: The methods the evaluation compares, by the names the CLI and tables use (paper Table 5).
METHODS: dict[str, type] = {
    "dsire": DSiRe,
    "frobenius-nn": FrobeniusNN,
    "nn-full-model": NNFullModel,
    "ridge": RidgeVote,
    "gda": GDAVote,
}


def make_method(name: str, kinds: Sequence[str] | None = None) -> BaseEstimator:
    """A fresh estimator by table name; ``average-vote`` is DSiRe with ``vote="average"``."""
    if name == "average-vote":
        est = DSiRe(vote="average")
    elif name in METHODS:
        est = METHODS[name]()
    else:
        raise ValueError(f"unknown method {name!r}; choose from {[*METHODS, 'average-vote']}")
    if kinds is not None and name != "frobenius-nn":
        est.set_params(kinds=tuple(kinds))
    return est
