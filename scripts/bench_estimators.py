"""Benchmark: DSiRe's batched 1-NN against the obvious per-layer scikit-learn loop.

One 300-model config (50 micro-datasets × 6 sizes, 128 layers × 3 matrix kinds, rank 8,
synthetic spectra from tests/estimator_helpers.py), on one core:
- fit + the paper's full 10-repeat evaluation (15 train / 35 test micro-datasets);
- predicting one LoRA from its spectra (DSiRe alone, and a bank's full estimate: votes,
  continuous estimate with interval, applicability);
- a pretrained bank's first answer after loading (its stored state restored) against a bank
  without stored state, which must fit the interval and applicability first (what every scan
  paid before banks stored their state);
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
import tempfile  # noqa: E402
from dataclasses import replace  # noqa: E402

from estimator_helpers import synthetic_table  # noqa: E402

from lora_wise.estimation.bank import Bank, fit_bank, load_bank_file, save_bank  # noqa: E402
from lora_wise.estimation.estimators import DSiRe, voter_features  # noqa: E402
from lora_wise.estimation.fitted import DEFAULT_KINDS  # noqa: E402
from lora_wise.estimation.methods import ALL_METHODS, DSIRE, FROBENIUS_NN  # noqa: E402
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
    X = voter_features(table, DEFAULT_KINDS)
    accuracies = []
    for train_groups, test_groups in micro_splits(table.micro_dataset, 15, 35, 10):
        tr = np.isin(table.micro_dataset, train_groups)
        te = np.isin(table.micro_dataset, test_groups)
        votes = np.stack(
            [
                KNeighborsClassifier(n_neighbors=1).fit(X[tr, v], table.size[tr]).predict(X[te, v])
                for v in range(X.shape[1])
            ],
            axis=1,
        )
        pred = np.array([np.bincount(row).argmax() for row in votes])
        accuracies.append(float((pred == table.size[te]).mean() * 100))
    return accuracies


def main() -> None:
    table = synthetic_table(n_micro=50)
    print(
        f"table: {len(table)} models x {len(table.layers)} layers x 3 kinds x width {table.width}; one core"
    )

    fast = best_of(lambda: evaluate(table, (DSIRE,), repeats=10))
    both = best_of(lambda: evaluate(table, (FROBENIUS_NN, DSIRE), repeats=10))
    every = best_of(lambda: evaluate(table, ALL_METHODS, repeats=10), repeats=1)
    naive = best_of(lambda: naive_protocol(table), repeats=1)
    (res,) = evaluate(table, (DSIRE,), repeats=10, seed=42)
    ours_tie_smallest = evaluate_smallest(table)
    print(f"fit + 10-repeat evaluation, DSiRe:            {fast:7.3f} s   (target <= 5 s)")
    print(f"  Frobenius-NN + DSiRe:                       {both:7.3f} s")
    print(f"  all 7 methods:                              {every:7.3f} s")
    print(f"  naive per-layer KNeighborsClassifier loop:  {naive:7.3f} s   -> {naive / fast:6.1f}x slower")
    print(
        f"  accuracy DSiRe {res.accuracy[0]:.2f} % (tie=median); naive loop equals tie=smallest: "
        f"{np.allclose(ours_tie_smallest, naive_protocol(table))}"
    )

    train = table.subset(np.isin(table.micro_dataset, micro_splits(table.micro_dataset, 15, 35, 1)[0][0]))
    est = DSiRe().fit(train)
    i = int(np.flatnonzero(~np.isin(table.micro_dataset, train.micro_dataset))[0])
    one = Spectra(
        table.layers, table.a[i], table.b[i], table.ba[i], table.fro[i], np.ones(len(table.layers), bool)
    )
    single = best_of(lambda: est.predict(one), repeats=20)
    X = voter_features(train, est.kinds)
    knns = [KNeighborsClassifier(n_neighbors=1).fit(X[:, v], train.size) for v in range(X.shape[1])]
    x1 = voter_features(one, est.kinds, layers=train.layers)
    naive_single = best_of(lambda: [k.predict(x1[:, v]) for v, k in enumerate(knns)], repeats=5)
    bank = fit_bank(train)
    full = best_of(lambda: bank.estimate(one, step=1200), repeats=20)
    print(f"predict one LoRA from its spectra, DSiRe:     {single * 1e3:7.2f} ms  (target <= 20 ms)")
    print(
        f"  naive per-layer loop (pre-fitted):          {naive_single * 1e3:7.2f} ms  "
        f"-> {naive_single / single:6.1f}x slower"
    )
    print(f"  bank.estimate (votes+interval+applicab.):   {full * 1e3:7.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_bank(bank, Path(tmp) / "bank.safetensors")
        pretrained = best_of(lambda: load_bank_file(path).estimate(one, step=1200), repeats=5)
        # the same references without the stored state: the first answer fits it (numpy, as old banks do)
        unfitted = best_of(
            lambda: Bank(replace(bank.header, fitted={}), bank.table).estimate(one, step=1200), 1
        )
    print(f"load a bank + first estimate, pretrained:     {pretrained * 1e3:7.2f} ms")
    print(
        f"  same bank without stored state (refit):     {unfitted * 1e3:7.2f} ms  "
        f"-> {unfitted / pretrained:6.1f}x slower"
    )


def evaluate_smallest(table) -> list[float]:
    accuracies = []
    for train_groups, test_groups in micro_splits(table.micro_dataset, 15, 35, 10):
        tr = table.subset(np.isin(table.micro_dataset, train_groups))
        te = table.subset(np.isin(table.micro_dataset, test_groups))
        accuracies.append(float((DSiRe(tie="smallest").fit(tr).predict(te) == te.size).mean() * 100))
    return accuracies


if __name__ == "__main__":
    main()
