"""The offline image pool: real images that ship inside installed packages, as concepts.

Nothing here touches the network. Every image comes from a file inside the scikit-learn or
scikit-image wheels, and the construction is deterministic (fixed seeds, no global RNG), so
every machine builds the same pool bit for bit. All pool images are 64x64 RGB uint8.

How the concepts are made (61 concepts, each with >= 64 distinct images):

- ``digit-<d>-<colouring>`` (40 concepts): scikit-learn's ``load_digits`` (1,797 real
  hand-written 8x8 digits, ~180 per class), one concept per class 0-9 under each of four
  colourings (``ink`` white on black, ``sun`` navy on yellow, ``rose`` crimson on pale pink,
  ``moss`` light green on dark olive), upscaled bilinearly to 64x64. The colourings make the
  four versions of a class look different to a model working on RGB pixels.
- ``photo-<name>`` (19 concepts): one bundled photograph each (skimage ``astronaut``,
  ``camera``, ``coffee``, ``chelsea``, ``rocket``, ...; sklearn ``china``, ``flower``).
  Its images are 64 crops at seeded random positions and scales (a quarter to two thirds of
  the short side), resized to 64x64: views of one scene, as a DreamBooth subject is.
- ``face`` and ``nonface`` (2 concepts): skimage ``lfw_subset()``, 100 real 25x25 face crops
  from Labeled Faces in the Wild and 100 non-face patches, upscaled to 64x64.

Image ids are ``<concept>/<index:04d>``; the index is the image's position in its concept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIZE = 64
PHOTO_CROPS = 64

#: Digit colourings: (ink RGB, background RGB).
COLOURINGS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "ink": ((255, 255, 255), (0, 0, 0)),
    "sun": ((20, 30, 110), (250, 215, 60)),
    "rose": ((190, 20, 50), (250, 220, 225)),
    "moss": ((170, 240, 140), (45, 55, 20)),
}

#: Bundled photos: concept name -> (loader module, function, class noun for prompts).
PHOTOS: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage", "astronaut", "astronaut"),
    "camera": ("skimage", "camera", "cameraman"),
    "coffee": ("skimage", "coffee", "coffee cup"),
    "chelsea": ("skimage", "chelsea", "cat"),
    "rocket": ("skimage", "rocket", "rocket"),
    "coins": ("skimage", "coins", "coin"),
    "moon": ("skimage", "moon", "moon"),
    "page": ("skimage", "page", "page"),
    "text": ("skimage", "text", "text"),
    "brick": ("skimage", "brick", "brick wall"),
    "grass": ("skimage", "grass", "grass"),
    "gravel": ("skimage", "gravel", "gravel"),
    "retina": ("skimage", "retina", "retina"),
    "hubble": ("skimage", "hubble_deep_field", "galaxy"),
    "cell": ("skimage", "cell", "cell"),
    "motorcycle": ("skimage", "stereo_motorcycle", "motorcycle"),
    "ihc": ("skimage", "immunohistochemistry", "tissue"),
    "china": ("sklearn", "china.jpg", "temple"),
    "flower": ("sklearn", "flower.jpg", "flower"),
}


@dataclass(frozen=True)
class Concept:
    """One pool concept: its name, the noun used in its instance prompt, and its family."""

    name: str
    class_noun: str
    family: str  # digit, photo, face
    size: int


def concepts() -> dict[str, Concept]:
    """All pool concepts by name, in a fixed order."""
    return dict(_concepts())


@lru_cache(maxsize=1)
def _concepts() -> tuple[tuple[str, Concept], ...]:
    counts = np.bincount(_digits()[1], minlength=10)
    out: list[Concept] = []
    for colouring in COLOURINGS:
        for d in range(10):
            out.append(Concept(f"digit-{d}-{colouring}", "digit", "digit", int(counts[d])))
    for name, (_, _, noun) in PHOTOS.items():
        out.append(Concept(f"photo-{name}", noun, "photo", PHOTO_CROPS))
    faces, nonfaces = _lfw()
    out.append(Concept("face", "face", "face", len(faces)))
    out.append(Concept("nonface", "texture", "face", len(nonfaces)))
    return tuple((c.name, c) for c in out)


def concept_images(name: str) -> np.ndarray:
    """All images of a concept, (N, 64, 64, 3) uint8, in id order. Raises KeyError if unknown."""
    if name not in concepts():
        raise KeyError(f"unknown pool concept {name!r}; see lora_wise.factory.pool.concepts()")
    return _concept_images(name)


def image_ids(name: str) -> list[str]:
    """The ids of a concept's images, ``<concept>/<index:04d>``."""
    return [f"{name}/{i:04d}" for i in range(concepts()[name].size)]


@lru_cache(maxsize=8)
def _concept_images(name: str) -> np.ndarray:
    if name.startswith("digit-"):
        _, d, colouring = name.split("-")
        images, labels = _digits()
        return _colour(images[labels == int(d)], *COLOURINGS[colouring])
    if name.startswith("photo-"):
        return _crops(name.removeprefix("photo-"))
    faces, nonfaces = _lfw()
    return _gray_to_rgb(faces if name == "face" else nonfaces)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    # values are 0..16 ink intensity on an 8x8 grid
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _lfw() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    data = lfw_subset()  # (200, 25, 25) in [0, 1]: 100 faces then 100 non-faces
    return data[:100], data[100:]


def _resize(img: np.ndarray) -> np.ndarray:
    from skimage.transform import resize

    return resize(img, (SIZE, SIZE), order=1, anti_aliasing=img.shape[0] > SIZE, mode="edge")


def _colour(images: np.ndarray, ink: tuple, background: tuple) -> np.ndarray:
    alpha = np.stack([_resize(im) for im in images])[..., None].clip(0, 1)
    ink_a, bg_a = np.asarray(ink, np.float32), np.asarray(background, np.float32)
    return (alpha * ink_a + (1 - alpha) * bg_a).round().astype(np.uint8)


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    up = np.stack([_resize(im) for im in images]).clip(0, 1)
    return np.repeat((up * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _photo(name: str) -> np.ndarray:
    source, fn, _ = PHOTOS[name]
    if source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(fn)
    else:
        import skimage.data

        img = getattr(skimage.data, fn)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:  # e.g. float or 16-bit images: scale to 0..255
        img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-8)).astype(np.uint8)
    return img[..., :3]


def _crops(name: str) -> np.ndarray:
    img = _photo(name)
    h, w = img.shape[:2]
    # one seed per photo (its position in PHOTOS) so adding a photo never changes the others
    rng = np.random.default_rng(1000 + list(PHOTOS).index(name))
    out = []
    for _ in range(PHOTO_CROPS):
        side = int(rng.uniform(0.25, 0.67) * min(h, w))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[y : y + side, x : x + side].astype(np.float32) / 255.0
        out.append((_resize(crop).clip(0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)
