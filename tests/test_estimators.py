"""DSiRe, its rivals, the continuous estimate and the applicability score."""

from __future__ import annotations

import numpy as np
import pytest
from estimator_helpers import synthetic_table
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsClassifier

from lora_wise.errors import BankError
from lora_wise.estimation.estimators import (
    Applicability,
    DSiRe,
    FrobeniusNN,
    GDAVote,
    NNFullModel,
    RidgeVote,
    SizeInterval,
    make_method,
    voter_features,
)
from lora_wise.estimation.fitted import standardise as _standardise


def _split(table, n_train=15):
    groups = np.unique(table.micro_dataset)
    mask = np.isin(table.micro_dataset, groups[:n_train])
    return table.subset(mask), table.subset(~mask)


@pytest.fixture(scope="module")
def medium():
    return _split(synthetic_table(n_micro=40, seed=3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_votes_equal_a_naive_per_layer_knn_loop(seed):
    rng = np.random.default_rng(seed)
    n_train, n_test, voters, width = 60, 25, 40, 6
    X = rng.gamma(2.0, 1.0, (n_train, voters, width))
    y = rng.choice([1, 10, 20, 30, 40, 50], n_train)
    T = rng.gamma(2.0, 1.0, (n_test, voters, width))
    est = DSiRe(tie="smallest").fit(X, y)
    votes = est.voter_predictions(T)
    naive = np.stack(
        [KNeighborsClassifier(n_neighbors=1).fit(X[:, v], y).predict(T[:, v]) for v in range(voters)], axis=1
    )
    np.testing.assert_array_equal(votes, naive)
    # majority vote, smallest size on ties: what bincount().argmax() over the naive votes gives
    expected = np.array([np.bincount(row).argmax() for row in naive])
    np.testing.assert_array_equal(est.predict(T), expected)
    counts = est.predict_votes(T)
    assert counts.sum(axis=1).tolist() == [voters] * n_test


def test_table_input_votes_equal_the_naive_loop_over_layers_and_kinds(medium):
    train, test = medium
    est = DSiRe().fit(train)
    votes = est.voter_predictions(test)
    assert votes.shape == (len(test), 3 * len(train.layers))
    for v, (kind, layer) in enumerate(
        [(k, i) for k in ("a", "b", "ba") for i in range(len(train.layers))][::97]
    ):
        knn = KNeighborsClassifier(n_neighbors=1).fit(train.matrix(kind)[:, layer], train.size)
        np.testing.assert_array_equal(votes[:, v * 97], knn.predict(test.matrix(kind)[:, layer]))


def _tie_case():
    """5 voters; the target's votes are 1, 1, 30, 30, 20 (classes 1, 20, 30): a 2-2 tie."""
    X = np.arange(3, dtype=float)[:, None, None] * np.ones((3, 5, 1))  # reference k has value k everywhere
    y = np.array([1, 20, 30])
    target = np.array([0, 0, 2, 2, 1], dtype=float)[None, :, None]
    return X, y, target


def test_tie_rules_are_the_documented_ones():
    X, y, target = _tie_case()
    # median vote is 20: of the tied sizes 1 and 30, 30 is nearer to it
    assert DSiRe(tie="median").fit(X, y).predict(target).tolist() == [30]
    assert DSiRe(tie="smallest").fit(X, y).predict(target).tolist() == [1]
    assert DSiRe().fit(X, y).vote_histogram(target) == [{1: 2, 20: 1, 30: 2}]


def test_equally_near_references_resolve_to_the_first_in_fit_order():
    X = np.zeros((2, 1, 3))
    assert DSiRe().fit(X, [10, 1]).predict(np.zeros((1, 1, 3))).tolist() == [10]
    assert DSiRe().fit(X, [1, 10]).predict(np.zeros((1, 1, 3))).tolist() == [1]


def test_missing_layers_abstain_and_no_shared_layer_is_an_error(medium):
    train, test = medium
    est = DSiRe().fit(train)
    one = test.subset(np.arange(len(test)) == 0)
    one.ba[0, :64] = np.nan  # the target lacks half the layers' BA spectra
    assert est.predict_votes(one).sum() == 3 * 128 - 64
    for kind in ("a", "b", "ba"):
        getattr(one, kind)[0] = np.nan
    with pytest.raises(BankError, match="shares no layer"):
        est.predict(one)


def test_a_reference_missing_a_layer_is_never_that_layers_nearest_neighbour():
    X = np.ones((2, 1, 2))
    X[0] = np.nan  # the exact match is missing this voter
    est = DSiRe().fit(X, [1, 50])
    assert est.predict(np.full((1, 1, 2), 0.0)).tolist() == [50]


def test_sklearn_contract(medium):
    train, test = medium
    est = DSiRe(kinds=("ba",), tie="smallest")
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.predict(test)
    with pytest.raises(ValueError, match="tie"):
        DSiRe(tie="coin").fit(train)
    with pytest.raises(ValueError, match="unknown matrix kinds"):
        DSiRe(kinds=("q",)).fit(train)
    est.fit(train)
    assert 0.0 <= est.score(test) <= 1.0
    with pytest.raises(BankError, match="do not match"):
        est.predict(np.zeros((1, 5, 8)))


def test_dsire_recovers_sizes_better_than_chance_and_degrades_with_noise():
    chance = 1 / 6
    accuracy = {}
    for noise in (0.03, 0.6):
        train, test = _split(synthetic_table(n_micro=30, noise=noise, seed=5))
        accuracy[noise] = DSiRe().fit(train).score(test)
    assert accuracy[0.03] > chance + 0.3
    assert accuracy[0.03] < 1.0  # the concept confound keeps it honest
    assert accuracy[0.6] < accuracy[0.03]


@pytest.mark.parametrize("name", ["dsire", "frobenius-nn", "nn-full-model", "ridge", "gda", "average-vote"])
def test_every_method_beats_chance_on_a_learnable_table(medium, name):
    train, test = medium
    est = make_method(name).fit(train)
    assert est.score(test) > 1 / 6 + 0.1
    assert set(np.unique(est.predict(test))) <= set(np.unique(train.size))


def test_frobenius_nn_sees_only_the_norm(medium):
    train, test = medium
    est = FrobeniusNN().fit(train)
    assert est.train_.shape[1:] == (128, 1)
    scrambled = test.subset(np.ones(len(test), dtype=bool))
    scrambled.a[:] = 0.0  # A and B do not enter the Frobenius baseline
    np.testing.assert_array_equal(est.predict(scrambled), est.predict(test))


def test_batched_ridge_equals_sklearn_ridge_per_voter(medium):
    train, _ = medium
    est = RidgeVote(alpha=2.0).fit(train)
    Z = (voter_features(train, est.kinds) - est.mu_) / est.sd_
    for v in (0, 77, 300):
        ref = Ridge(alpha=2.0).fit(Z[:, v], train.size.astype(float))
        np.testing.assert_allclose(est.coef_[v], ref.coef_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(est.intercept_[v], ref.intercept_, rtol=1e-8)


def test_gda_shared_and_per_class_fit_and_standardisation_is_per_voter(medium):
    train, test = medium
    for cov in ("shared", "per-class"):
        assert GDAVote(covariance=cov).fit(train).score(test) > 0.3
    mu, sd = _standardise(voter_features(train, ("a",)))
    assert mu.shape == sd.shape == (128, 8) and (sd > 0).all()


def test_nn_full_model_votes_are_one_answer_repeated(medium):
    train, test = medium
    votes = NNFullModel().fit(train).predict_votes(test)
    assert ((votes > 0).sum(axis=1) == 1).all()


def test_interval_estimates_a_size_it_never_saw():
    table = synthetic_table(n_micro=30, seed=11)
    train, test = _split(table)
    train = train.subset(train.size != 30)
    test = test.subset(test.size == 30)
    est, lo, hi = SizeInterval().fit(train).predict_interval(test)
    assert 20 < np.median(est) < 40  # "about 30", which DSiRe cannot say
    assert ((lo <= 30) & (30 <= hi)).mean() >= 0.6
    assert (lo <= est).all() and (est <= hi).all()
    voted = DSiRe().fit(train).predict(test)
    assert np.abs(est - 30).mean() < np.abs(voted - 30).mean()


def test_interval_coverage_on_held_out_concepts_is_near_nominal():
    train, test = _split(synthetic_table(n_micro=40, seed=12), n_train=20)
    model = SizeInterval(coverage=0.8).fit(train)
    assert model.calibrated_
    _, lo, hi = model.predict_interval(test)
    covered = ((lo <= test.size) & (test.size <= hi)).mean()
    assert 0.6 <= covered <= 0.97


def test_interval_without_groups_to_hold_out_falls_back_to_the_voter_spread():
    train, test = _split(synthetic_table(n_micro=6, seed=13), n_train=1)
    model = SizeInterval().fit(train)
    assert not model.calibrated_
    est, lo, hi = model.predict_interval(test)
    assert (lo < hi).all()
    with pytest.raises(ValueError, match="base"):
        SizeInterval(base="magic").fit(train)


def test_applicability_separates_familiar_from_foreign_targets(medium):
    train, test = medium
    app = Applicability().fit(train)
    familiar = app.score_samples(test)
    assert ((familiar >= 0) & (familiar <= 1)).all()
    assert familiar.mean() > 0.3
    other_backbone = synthetic_table(n_micro=3, layer_seed=77, seed=21)
    assert app.score_samples(other_backbone).max() < 0.1
    other_step = synthetic_table(n_micro=3, seed=22, steps=(300, 1200))
    scores = app.score_samples(other_step)
    assert scores[other_step.step == 300].mean() < 0.1 < scores[other_step.step == 1200].mean()


def test_applicability_counts_missing_layers_against_the_target(medium):
    train, test = medium
    app = Applicability().fit(train)
    one = test.subset(np.arange(len(test)) < 6)
    full = app.score_samples(one)
    for kind in ("a", "b", "ba"):
        getattr(one, kind)[:, 32:] = np.nan
    partial = app.score_samples(one)
    assert (partial < full).all()
    assert (partial <= 0.25 + 1e-9).all()  # a quarter of the voters present: at most a quarter


def test_log_metric_weighs_small_singular_values_and_bad_metrics_are_refused(medium):
    train, test = medium
    assert DSiRe(metric="log").fit(train).score(test) > 1 / 6 + 0.1
    with pytest.raises(ValueError, match="metric"):
        DSiRe(metric="cosine").fit(train)


def test_a_table_with_layers_in_another_order_is_realigned(medium):
    from lora_wise.spectra.table import SpectraTable

    train, test = medium
    order = np.random.default_rng(0).permutation(len(test.layers))
    shuffled = SpectraTable(
        [test.layers[i] for i in order],
        test.a[:, order],
        test.b[:, order],
        test.ba[:, order],
        test.fro[:, order],
        test.size,
        test.micro_dataset,
        test.step,
        test.rank,
        test.backbone,
        test.model_id,
    )
    est = DSiRe().fit(train)
    np.testing.assert_array_equal(est.predict_votes(shuffled), est.predict_votes(test))


@settings(max_examples=30, deadline=None)
@given(
    n_train=st.integers(2, 30),
    n_test=st.integers(1, 80),
    voters=st.integers(1, 12),
    width=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_votes_equal_the_naive_loop_for_any_shape(n_train, n_test, voters, width, seed):
    rng = np.random.default_rng(seed)
    X = rng.exponential(1.0, (n_train, voters, width))
    y = rng.choice([1, 2, 3, 4, 5, 6], n_train)
    T = rng.exponential(1.0, (n_test, voters, width))
    votes = DSiRe().fit(X, y).voter_predictions(T)
    for v in range(voters):
        np.testing.assert_array_equal(
            votes[:, v], KNeighborsClassifier(n_neighbors=1).fit(X[:, v], y).predict(T[:, v])
        )


def test_fit_on_spectra_lists_and_refit_reset_the_layer_order(medium):
    from lora_wise.spectra.compute import Spectra

    train, test = medium

    def spectra(table, i, keep):
        return Spectra(
            [table.layers[j] for j in keep],
            table.a[i, keep],
            table.b[i, keep],
            table.ba[i, keep],
            table.fro[i, keep],
            np.ones(len(keep), bool),
        )

    est = DSiRe().fit(train)
    half = list(range(0, 128, 2))
    est.fit([spectra(train, i, half) for i in range(len(train))], train.size)
    assert est.layers_ == [train.layers[j] for j in half] and est.n_voters_ == 3 * 64
    full_target = spectra(test, 0, list(range(128)))  # extra layers are ignored, order is realigned
    assert est.predict_votes(full_target).sum() == 3 * 64


def test_batched_gda_equals_sklearn_qda_per_voter(medium):
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    train, test = medium  # 15 references per size, 8 values per voter: full-rank class covariances
    est = GDAVote(reg=0.3, covariance="per-class").fit(train)
    Z_train = (voter_features(train, est.kinds) - est.mu_) / est.sd_
    Z_test = (voter_features(test, est.kinds) - est.mu_) / est.sd_
    votes = est.voter_predictions(test)
    for v in (0, 150, 383):
        qda = QuadraticDiscriminantAnalysis(reg_param=0.3).fit(Z_train[:, v], train.size)
        np.testing.assert_array_equal(votes[:, v], qda.predict(Z_test[:, v]))


def test_pooled_ridge_is_scikit_learns_ridge_on_the_flattened_standardised_log_spectra():
    """The pooled base, fitted in the dual form in numpy, predicts what sklearn's Ridge (primal)
    predicts on the same features, at the strength it chose."""
    from lora_wise.estimation.fitted import LogSizeModel, log_features, voter_features

    train, test = _split(synthetic_table(n_micro=20, seed=21), n_train=10)
    X = voter_features(train, ("a", "b", "ba"))
    model = LogSizeModel.fit(X, np.log(train.size.astype(float)), "pooled", alpha=10.0)
    mu, sd = _standardise(log_features(X))
    flat = lambda F: np.nan_to_num((F - mu) / sd).reshape(len(F), -1)  # noqa: E731
    reference = Ridge(alpha=10.0).fit(flat(log_features(X)), train.size.astype(float))
    Xt = voter_features(test, ("a", "b", "ba"))
    expected = np.log(np.maximum(reference.predict(flat(log_features(Xt))), 1.0))
    np.testing.assert_allclose(model.point(Xt)[0], expected, rtol=1e-8, atol=1e-10)


def test_pooled_strength_is_chosen_on_held_out_micro_datasets():
    """Pure-noise spectra: any fit is overfit, so cross-validation must pick the strongest ridge;
    a clean power law: a weak one wins."""
    from lora_wise.estimation.fitted import POOLED_ALPHAS, _pooled_alpha

    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(8), 6)
    y = np.tile(np.array([1.0, 10, 20, 30, 40, 50]), 8)
    noise = rng.normal(size=(48, 300))
    assert _pooled_alpha(noise, y, groups) == POOLED_ALPHAS[-1]
    clean = np.log(y)[:, None] * rng.normal(size=(1, 300)) + 0.01 * noise
    assert _pooled_alpha(clean, y, groups) < POOLED_ALPHAS[-1]
    assert _pooled_alpha(noise, y, None) == POOLED_ALPHAS[0]  # nothing to hold out


def test_pooled_interval_beats_dsire_mae_and_a_missing_layer_abstains():
    table = synthetic_table(n_micro=30, seed=23, concept_noise=0.3)
    train, test = _split(table)
    est = SizeInterval().fit(train)
    assert est.state_.model.base == "pooled" and est.calibrated_
    point, lo, hi = est.predict_interval(test)
    assert np.abs(point - test.size).mean() < np.abs(DSiRe().fit(train).predict(test) - test.size).mean()
    assert (lo <= point).all() and (point <= hi).all()
    assert 0.6 <= ((lo <= test.size) & (test.size <= hi)).mean() <= 0.97
    empty = test.subset(np.arange(len(test)) < 1)  # a target with no layer of the references
    empty.a[:], empty.b[:], empty.ba[:] = np.nan, np.nan, np.nan
    with pytest.raises(BankError, match="nothing can vote"):
        est.predict(empty)


def test_a_bank_header_says_its_base_and_one_without_is_an_old_per_voter_ridge():
    from lora_wise.estimation.bank import BankHeader, _settings, fit_bank

    bank = fit_bank(synthetic_table(n_micro=4, seed=24, n_layers=8))
    assert bank.header.params["base"] == "pooled"
    old = BankHeader(**{**bank.header.__dict__, "params": {"coverage": 0.8}})
    assert _settings(old)["base"] == "ridge" and _settings(old)["alpha"] is None
