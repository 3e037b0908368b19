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

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from lora_wise.errors import BankError
from lora_wise.estimation.fitted import (
    BASES,
    DEFAULT_KINDS,
    ApplicabilityState,
    IntervalState,
    VoteState,
    batched_ridge,
    decide,
    nearest_class,
    nearest_references,
    standardise,
    tally,
    voter_features,
)
from lora_wise.estimation.methods import (
    AVERAGE_VOTE,
    DSIRE,
    FROBENIUS_NN,
    GDA,
    NN_FULL_MODEL,
    RIDGE,
)
from lora_wise.spectra.compute import Spectra
from lora_wise.spectra.table import SpectraTable

__all__ = [
    "Applicability",
    "DSiRe",
    "FrobeniusNN",
    "GDAVote",
    "NNFullModel",
    "RidgeVote",
    "SizeInterval",
    "make_method",
    "voter_features",
]


def _as_xy(est, X, y=None, groups=None, fitting: bool = False):
    """Turn any accepted input into (X (N,V,W), y or None, groups or None)."""
    if isinstance(X, SpectraTable):
        y = X.size if y is None else y
        groups = X.micro_dataset if groups is None else groups
    if fitting:  # the layer order every later input is aligned to (None for raw arrays)
        first = X[0] if isinstance(X, (list, tuple)) and X else X
        est.layers_ = list(first.layers) if isinstance(first, (SpectraTable, Spectra)) else None
    if isinstance(X, (SpectraTable, Spectra, list, tuple)):
        layers = getattr(est, "layers_", None)
        width = getattr(est, "width_", None) if not fitting else None
        if isinstance(X, SpectraTable) and layers is not None:
            X = X.align(layers)
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


# --------------------------------------------------------------------------- the paper's methods


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
        return tally(self._voter_classes(X), self.classes_)

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
        return decide(ci, self.classes_, self.tie, getattr(self, "vote", "majority")), tally(
            ci, self.classes_
        )

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

    def __init__(self, kinds=DEFAULT_KINDS, metric="euclidean", tie="median", vote="majority"):
        self.kinds = kinds
        self.metric = metric
        self.tie = tie
        self.vote = vote

    def _fit_voters(self, X, yi) -> None:
        self.state_ = VoteState.fit(X, self.classes_[yi], self.metric, self.tie, self.vote)

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        return self.state_.voter_classes(X)


class FrobeniusNN(DSiRe):
    """The paper's baseline: DSiRe with each layer's ‖scale·B·A‖_F as its only feature."""

    def __init__(self, kinds=("fro",), metric="euclidean", tie="median", vote="majority"):
        super().__init__(kinds=kinds, metric=metric, tie=tie, vote=vote)


class NNFullModel(_VoterEnsemble):
    """One 1-NN on the whole model (all voters concatenated): the paper's "NN-full model".

    A reference's missing voters count as zeros; a target's missing voters are dropped from
    the distance on both sides.
    """

    def __init__(self, kinds=DEFAULT_KINDS, tie="median"):
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


class RidgeVote(_VoterEnsemble):
    """The paper's ridge rival: per voter, ridge regression of size on standardised spectra,
    rounded to the nearest known size, then the majority vote. Solved for all voters at once."""

    def __init__(self, kinds=DEFAULT_KINDS, alpha=1.0, tie="median"):
        self.kinds = kinds
        self.alpha = alpha
        self.tie = tie

    def _fit_voters(self, X, yi) -> None:
        self.mu_, self.sd_ = standardise(X)
        self.coef_, self.intercept_ = batched_ridge(
            (X - self.mu_) / self.sd_, self.classes_[yi].astype(float), self.alpha
        )

    def _voter_classes(self, X: np.ndarray) -> np.ndarray:
        z = (X - self.mu_) / self.sd_
        pred = np.einsum("mvw,vw->mv", np.nan_to_num(z), self.coef_) + self.intercept_
        ci = nearest_class(pred, self.classes_)
        return np.where(np.isnan(X).any(axis=2), -1, ci)


class GDAVote(_VoterEnsemble):
    """The paper's GDA rival: per voter, a Gaussian class model on standardised spectra
    (``covariance="per-class"``: QDA; ``"shared"``: LDA), each covariance shrunk towards the
    identity by ``reg`` (spectra have more values than a class has references), then the
    majority vote. All voters and classes are solved in one batched Cholesky. With more
    references per class than values per voter, ``per-class`` is exactly scikit-learn's
    ``QuadraticDiscriminantAnalysis(reg_param=reg)`` per voter (tested), without 384 objects."""

    def __init__(self, kinds=DEFAULT_KINDS, reg=0.3, covariance="per-class", tie="median"):
        self.kinds = kinds
        self.reg = reg
        self.covariance = covariance
        self.tie = tie

    def _fit_voters(self, X, yi) -> None:
        if self.covariance not in ("per-class", "shared"):
            raise ValueError(f"covariance must be 'per-class' or 'shared', not {self.covariance!r}")
        self.mu_, self.sd_ = standardise(X)
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


class SizeInterval(RegressorMixin, BaseEstimator):
    """A continuous size estimate with an interval, for sizes the references never had.

    ``base="pooled"`` (default) is one ridge on every voter's standardised log singular values
    together, predicting the size in images, its strength chosen by leave-one-micro-dataset-out
    cross-validation over the references unless ``alpha`` is given; ``base="ridge"`` regresses
    log(size) on log σ per voter (one ridge per voter, solved together, ``alpha`` 1 by default)
    and takes their median; ``base="votes"`` takes the mean log of the sizes the voters' 1-NN
    vote for. ``s`` is the voters' spread (0 for the pooled ridge: one model, no voters).
    The interval is split-conformal over micro-datasets: refit without each training
    micro-dataset (the pooled strength chosen again without it), collect the normalised
    residuals (log true − log estimate) / (s + 0.05), and use their (1±coverage)/2 quantiles, so
    the interval is honest about concept-to-concept error and widens when the voters disagree.
    With fewer than two micro-datasets nothing can be held out; the interval then falls back
    to ±1.28·s (80 % of a normal) and ``calibrated_`` is False.
    """

    def __init__(self, kinds=DEFAULT_KINDS, base="pooled", alpha=None, coverage=0.8):
        self.kinds = kinds
        self.base = base
        self.alpha = alpha
        self.coverage = coverage

    def fit(self, X, y=None, groups=None):
        X, y, groups = _as_xy(self, X, y, groups, fitting=True)
        if y is None:
            raise ValueError("labels (dataset sizes) are required to fit")
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, not {self.base!r}")
        if not 0 < self.coverage < 1:
            raise ValueError("coverage must lie strictly between 0 and 1")
        self.train_, self.width_ = X, X.shape[2]
        self.classes_ = np.unique(y)
        self.state_ = IntervalState.fit(X, y, groups, self.base, self.alpha, self.coverage)
        self.calibrated_, self.quantiles_ = self.state_.calibrated, self.state_.quantiles
        if self.state_.residuals is not None:
            self.residuals_ = self.state_.residuals
        return self

    def predict(self, X) -> np.ndarray:
        return self.predict_interval(X)[0]

    def predict_interval(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) in images; the interval covers ``coverage`` of held-out concepts."""
        check_is_fitted(self, "state_")
        X, _, _ = _as_xy(self, X)
        return self.state_.predict_interval(X)


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

    def __init__(self, kinds=DEFAULT_KINDS):
        self.kinds = kinds

    def fit(self, X, y=None, groups=None):
        X, _, groups = _as_xy(self, X, None, groups, fitting=True)
        self.train_, self.width_ = X, X.shape[2]
        self.state_ = ApplicabilityState.fit(X, groups)
        self.scale_, self.reference_stats_ = self.state_.scale, self.state_.reference_stats
        return self

    def statistic(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(median log distance ratio, fraction of voters present) per target."""
        check_is_fitted(self, "state_")
        X, _, _ = _as_xy(self, X)
        return self.state_.statistic(X)

    def score_samples(self, X) -> np.ndarray:
        """Applicability in [0, 1] per target."""
        check_is_fitted(self, "state_")
        X, _, _ = _as_xy(self, X)
        return self.state_.score_samples(X)


#: The classifiers the evaluation compares, by the names the CLI and tables use (paper Table 5).
METHODS: dict[str, type] = {
    DSIRE: DSiRe,
    FROBENIUS_NN: FrobeniusNN,
    NN_FULL_MODEL: NNFullModel,
    RIDGE: RidgeVote,
    GDA: GDAVote,
}


def make_method(name: str, kinds: Sequence[str] | None = None) -> BaseEstimator:
    """A fresh estimator by table name; ``average-vote`` is DSiRe with ``vote="average"``."""
    if name == AVERAGE_VOTE:
        est = DSiRe(vote="average")
    elif name in METHODS:
        est = METHODS[name]()
    else:
        raise ValueError(f"unknown method {name!r}; choose from {[*METHODS, AVERAGE_VOTE]}")
    if kinds is not None and name != FROBENIUS_NN:
        est.set_params(kinds=tuple(kinds))
    return est
