"""The FIXED image embedding that scores identification, and identification among N candidates.

Chosen before any attack output existed and validated on real views only
(:func:`validate_embedding`, ``scripts/leak_embedding.py``): an L2-normalised colour histogram of the
drawn (non-white) pixels, concatenated with an L2-normalised HOG of the grey image (scikit-image).
Nothing in it is trained, so it cannot have been fitted to the attack, the victims or the shadows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIST_BINS = 6  # per RGB channel: 216 colour cells
WHITE = 240  # a pixel with every channel above this is background
HOG_WEIGHT = 1.0


def embed(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, d) float32, unit norm: colour histogram ⊕ HOG, each half unit norm."""
    from skimage.feature import hog

    out = []
    for img in np.asarray(images):
        fg = img[~(img > WHITE).all(-1)]
        cells = (fg.astype(np.int32) * HIST_BINS // 256) @ np.array([HIST_BINS * HIST_BINS, HIST_BINS, 1])
        hist = np.bincount(cells, minlength=HIST_BINS**3).astype(np.float32)
        grey = img.astype(np.float32).mean(-1) / 255.0
        h = hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), feature_vector=True)
        out.append(np.concatenate([_unit(np.sqrt(hist)), HOG_WEIGHT * _unit(h.astype(np.float32))]))
    return np.stack([_unit(v) for v in out]).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


@dataclass(frozen=True)
class Identification:
    """Rank of the true identity per trial (0 = top-1), with N candidates per trial."""

    ranks: np.ndarray
    n_candidates: int

    def top(self, k: int) -> float:
        return float((self.ranks < k).mean())

    @property
    def chance(self) -> float:
        return 1.0 / self.n_candidates


def rank_of_truth(query: np.ndarray, galleries: list[np.ndarray], truth: int) -> int:
    """Rank of gallery ``truth`` by cosine between the mean query embedding and each gallery's mean."""
    q = _unit(query.mean(0))
    scores = np.array([float(q @ _unit(g.mean(0))) for g in galleries])
    return int((scores > scores[truth]).sum())


def identify(
    queries: list[np.ndarray], galleries: list[np.ndarray], n: int, seed: int = 0, trials: int = 1
) -> Identification:
    """Query i's true identity is gallery i; each trial ranks it among itself and n-1 others (seeded)."""
    rng = np.random.default_rng(seed)
    ranks = []
    for i, q in enumerate(queries):
        others = [j for j in range(len(galleries)) if j != i]
        for _ in range(trials):
            pick = [i, *rng.choice(others, size=min(n, len(galleries)) - 1, replace=False).tolist()]
            ranks.append(rank_of_truth(q, [galleries[j] for j in pick], 0))
    return Identification(np.array(ranks), min(n, len(galleries)))


def validate_embedding(
    views: list[np.ndarray], n: int = 10, trials: int = 20, seed: int = 0
) -> Identification:
    """Identify an identity's held-out second-vendor view (index 1: Twemoji, or OpenMoji for tiny-sd-v2)
    from its first-vendor (Noto-derived) views (0, 2, 4)."""
    emb = [embed(v) for v in views]
    return identify([e[[1]] for e in emb], [e[[0, 2, 4]] for e in emb], n, seed=seed, trials=trials)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95 % interval of a proportion p observed over n trials."""
    if n == 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))
