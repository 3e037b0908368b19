"""The paper's constants (DSiRe, arXiv 2406.19395): ranges, schedules, target modules, the protocol.

One owner for every number the paper fixes, so that the factory, the dataset card, the upstream
import and the evaluation protocol cannot drift apart.
"""

from __future__ import annotations

#: Dataset sizes of each range (paper Table 1).
RANGES: dict[str, tuple[int, ...]] = {
    "low": (1, 2, 3, 4, 5, 6),
    "medium": (1, 10, 20, 30, 40, 50),
    "high": (1, 50, 100, 500, 1000),
}

#: The paper's schedule per range: (batch size, last step, evaluated step).
SCHEDULES: dict[str, tuple[int, int, int]] = {
    "low": (1, 1400, 1200),
    "medium": (1, 1400, 1200),
    "high": (8, 1000, 1000),
}

TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

#: The protocol (paper Sec. 5): micro-datasets split 15 train / 35 test of 50, 10 repeats, seed 42.
PAPER_TRAIN, PAPER_TEST = 15, 35
PAPER_TOTAL = PAPER_TRAIN + PAPER_TEST
PAPER_SEED = 42
PAPER_REPEATS = 10
