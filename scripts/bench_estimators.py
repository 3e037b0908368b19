"""Benchmark: DSiRe's batched 1-NN against the obvious per-layer scikit-learn loop.

One 300-model config (50 micro-datasets × 6 sizes, 128 layers × 3 matrix kinds, rank 8,
synthetic spectra from tests/estimator_helpers.py), on one core:
- fit + the paper's full 10-repeat evaluation (15 train / 35 test micro-datasets);
- predicting one LoRA from its spectra (DSiRe alone, and a bank's full estimate: votes,
  continuous estimate with interval, applicability);
and the same work done with one ``KNeighborsClassifier(n_neighbors=1)`` per (layer, kind).

Run: ``.venv/bin/python scripts/bench_estimators.py`` (targets: ≤ 5 s and ≤ 20 ms).
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core, as the targets say; must precede numpy's import

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from estimator_helpers import synthetic_table  # noqa: E402

from lora_wise.estimation.bank import fit_bank  # noqa: E402
from lora_wise.estimation.estimators import DSiRe, voter_features  # noqa: E402
from lora_wise.evaluation import evaluate, micro_splits  # noqa: E402
from lora_wise.spectra.compute import Spectra  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def naive_protocol(table) -> list[float]:
    """The 10-repeat protocol with one sklearn 1-NN per voter and a bincount majority vote."""
    X = voter_features(table, ("a", "b", "ba"))
    accuracies = []
    for train_groups, test_groups in micro_splits(table.micro_dataset, 15, 35, 10):
        tr = np.isin(table.micro_dataset, train_groups)
        te = np.isin(table.micro_dataset, test_groups)
        votes = np.stack(
            [KNeighborsClassifier(n_neighbors=1).fit(X[tr, v], table.size[tr]).predict(X[te, v]) for v in range(X.shape[1])],
            axis=1,
        )
        pred = np.array([np.bincount(row).argmax() for row in votes])
        accuracies.append(float((pred == table.size[te]).mean() * 100))
    return accuracies


def main() -> None:
    table = synthetic_table(n_micro=50)
    print(f"table: {len(table)} models x {len(table.layers)} layers x 3 kinds x width {table.ba.shape[2]}; one core")

    fast = best_of(lambda: evaluate(table, ("dsire",), repeats=10))
    both = best_of(lambda: evaluate(table, ("frobenius-nn", "dsire"), repeats=10))
    every = best_of(lambda: evaluate(table, ("frobenius-nn", "dsire", "nn-full-model", "ridge", "gda",
                                             "average-vote", "interval"), repeats=10), repeats=1)
    naive = best_of(lambda: naive_protocol(table), repeats=1)
    (res,) = evaluate(table, ("dsire",), repeats=10, seed=42)
    ours_tie_smallest = evaluate_smallest(table)
    print(f"fit + 10-repeat evaluation, DSiRe:            {fast:7.3f} s   (target <= 5 s)")
    print(f"  Frobenius-NN + DSiRe:                       {both:7.3f} s")
    print(f"  all 7 methods:                              {every:7.3f} s")
    print(f"  naive per-layer KNeighborsClassifier loop:  {naive:7.3f} s   -> {naive / fast:6.1f}x slower")
    print(f"  accuracy DSiRe {res.accuracy[0]:.2f} % (tie=median); naive loop equals tie=smallest: "
          f"{np.allclose(ours_tie_smallest, naive_protocol(table))}")

    train = table.subset(np.isin(table.micro_dataset, micro_splits(table.micro_dataset, 15, 35, 1)[0][0]))
    est = DSiRe().fit(train)
    i = int(np.flatnonzero(~np.isin(table.micro_dataset, train.micro_dataset))[0])
    one = Spectra(table.layers, table.a[i], table.b[i], table.ba[i], table.fro[i], np.ones(len(table.layers), bool))
    single = best_of(lambda: est.predict(one), repeats=20)
    X = voter_features(train, est.kinds)
    knns = [KNeighborsClassifier(n_neighbors=1).fit(X[:, v], train.size) for v in range(X.shape[1])]
    x1 = voter_features(one, est.kinds, layers=train.layers)
    naive_single = best_of(lambda: [k.predict(x1[:, v]) for v, k in enumerate(knns)], repeats=5)
    bank = fit_bank(train)
    bank.estimate(one, step=1200)  # first call fits and caches the step's estimators
    full = best_of(lambda: bank.estimate(one, step=1200), repeats=20)
    print(f"predict one LoRA from its spectra, DSiRe:     {single * 1e3:7.2f} ms  (target <= 20 ms)")
    print(f"  naive per-layer loop (pre-fitted):          {naive_single * 1e3:7.2f} ms  -> {naive_single / single:6.1f}x slower")
    print(f"  bank.estimate (votes+interval+applicab.):   {full * 1e3:7.2f} ms")


def evaluate_smallest(table) -> list[float]:
    accuracies = []
    for train_groups, test_groups in micro_splits(table.micro_dataset, 15, 35, 10):
        tr = table.subset(np.isin(table.micro_dataset, train_groups))
        te = table.subset(np.isin(table.micro_dataset, test_groups))
        accuracies.append(float((DSiRe(tie="smallest").fit(tr).predict(te) == te.size).mean() * 100))
    return accuracies


if __name__ == "__main__":
    main()
