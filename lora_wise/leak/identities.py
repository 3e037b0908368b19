"""Identities for the reconstruction attack: one emoji (its unified code point) drawn by several vendors.

An identity is a subject with several distinct views, as a face is in the source paper: the same emoji
in Noto's and Twemoji's artwork (``lora_wise.factory.pool_emoji``'s pinned sources, which share one
``emoji.json``, so the same code point is the same subject), plus deterministic mild variations of
those (a small rotation, scale and shift; never a horizontal flip, which is one of the defences) up to
:data:`VIEWS` images. Each identity gets its own rare trigger token, so its DreamBooth prompt is
``a photo of <tok> emoji``: the attacker cannot read the subject off a shared prompt.

The split is seeded and disjoint: :data:`SHADOW_FRACTION` of the identities are shadows (the attacker
trains on them), the rest victims. Licences of the artwork are recorded per view
(:func:`licences`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lora_wise.errors import MicroDatasetError
from lora_wise.factory import pool_emoji

VENDORS = ("noto", "twemoji")
VIEWS = 5
SHADOW_FRACTION = 0.8
CLASS_NOUN = "emoji"
#: Variations (degrees, scale, dx, dy) applied to the vendor images, in order, after the originals.
VARIATIONS = ((8.0, 0.92, 2, -2), (-8.0, 0.92, -2, 2), (0.0, 0.85, 0, 0))
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_VOWELS = "aeiouy"


@dataclass(frozen=True)
class Identity:
    """One subject: its code point, name, trigger token, split and views (vendor, variation index)."""

    unified: str
    short_name: str
    token: str
    split: str  # "shadow" or "victim"
    views: tuple[tuple[str, int], ...]  # variation -1 is the vendor's artwork unchanged

    @property
    def key(self) -> str:
        return f"emoji-{self.unified.lower()}"

    @property
    def prompt(self) -> str:
        return f"a photo of {self.token} {CLASS_NOUN}"

    @property
    def class_prompt(self) -> str:
        return f"a photo of {CLASS_NOUN}"


def rare_tokens(n: int, seed: int) -> list[str]:
    """n distinct consonant-vowel-consonant tokens (``sks``-like), none an English word we would prompt."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        tok = "".join(rng.choice(list(s)) for s in (_CONSONANTS, _VOWELS, _CONSONANTS, _CONSONANTS))
        if tok not in out:
            out.append(tok)
    return out


def build_identities(n: int, seed: int = 0, vendors: tuple[str, ...] = VENDORS) -> list[Identity]:
    """n identities drawn (seeded) from the emoji every vendor draws; the first 80 % shadows.

    Raises MicroDatasetError when fewer than n emoji are shared by all vendors.
    """
    entries = [{e["unified"]: e for e in pool_emoji.source_images(v)[1]} for v in vendors]
    shared = sorted(set.intersection(*(set(e) for e in entries)), key=lambda u: entries[0][u]["sort_order"])
    if len(shared) < n:
        raise MicroDatasetError(f"asked for {n} identities; only {len(shared)} emoji are drawn by {vendors}")
    order = np.random.default_rng(seed).permutation(len(shared))[:n]
    tokens = rare_tokens(n, seed)
    n_shadow = int(round(SHADOW_FRACTION * n))
    views = tuple((v, -1) for v in vendors)
    views += tuple((vendors[i % len(vendors)], i) for i in range(len(VARIATIONS)))
    out = []
    for rank, idx in enumerate(order):
        u = shared[idx]
        split = "shadow" if rank < n_shadow else "victim"
        out.append(Identity(u, entries[0][u]["short_name"], tokens[rank], split, views[:VIEWS]))
    return out


def view_images(identity: Identity) -> np.ndarray:
    """The identity's views, (V, 64, 64, 3) uint8 on white, in ``identity.views`` order."""
    return np.stack([_view(identity.unified, vendor, var) for vendor, var in identity.views])


def _view(unified: str, vendor: str, variation: int) -> np.ndarray:
    images, entries = pool_emoji.source_images(vendor)
    index = {e["unified"]: i for i, e in enumerate(entries)}
    img = images[index[unified]]
    return img if variation < 0 else vary(img, *VARIATIONS[variation])


def vary(img: np.ndarray, degrees: float, scale: float, dx: int, dy: int) -> np.ndarray:
    """A mild deterministic variation: rotate, scale about the centre, shift; white fill."""
    from PIL import Image

    pil = Image.fromarray(img)
    size = pil.size
    small = pil.resize((round(size[0] * scale), round(size[1] * scale)), Image.BILINEAR)
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(small, ((size[0] - small.size[0]) // 2 + dx, (size[1] - small.size[1]) // 2 + dy))
    rotated = canvas.rotate(degrees, resample=Image.BILINEAR, fillcolor=(255, 255, 255))
    return np.asarray(rotated, dtype=np.uint8)


def licences(identity: Identity) -> list[str]:
    """The artwork licence of each view (a variation keeps its vendor's licence)."""
    return [pool_emoji.SOURCES[vendor].licence for vendor, _ in identity.views]


def write_identity_folders(identities: list[Identity], root: Path) -> dict[str, str]:
    """Each identity's views as PNGs in ``root/<key>/`` with a ``concept.txt`` (class, token, licences).

    Returns identity key -> ``folder:`` micro-dataset spec for the factory. Idempotent.
    """
    from PIL import Image

    specs = {}
    for ident in identities:
        folder = Path(root) / ident.key
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(view_images(ident)):
            path = folder / f"view{i}.png"
            if not path.is_file():
                Image.fromarray(img).save(path)
        meta = f"class = {CLASS_NOUN}\ntoken = {ident.token}\nlicences = {'; '.join(licences(ident))}\n"
        (folder / "concept.txt").write_text(meta)
        specs[ident.key] = f"folder:{folder.resolve()}"
    return specs


def save_identities(identities: list[Identity], path: Path) -> None:
    Path(path).write_text(json.dumps([asdict(i) for i in identities], indent=1))


def load_identities(path: Path) -> list[Identity]:
    data = json.loads(Path(path).read_text())
    return [Identity(**{**d, "views": tuple(tuple(v) for v in d["views"])}) for d in data]


def fingerprint(identities: list[Identity]) -> str:
    """A short digest of the identity list (keys, tokens, splits): names an attack's training set."""
    text = "|".join(f"{i.key}:{i.token}:{i.split}" for i in identities)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
