"""Identities for the reconstruction attack: one emoji (its code point) drawn by two vendors.

An identity is a subject with several distinct views, as a face is in the source paper: the same emoji
in two vendors' artwork (the pinned sources of ``lora_wise.factory.emoji_sources``), matched by code point
(:func:`code_point`), plus deterministic mild variations of those (a small rotation, scale and shift;
never a horizontal flip, which is one of the defences) up to :data:`VIEWS` images. Each identity gets
its own rare trigger token, so its DreamBooth prompt is ``a photo of <tok> emoji``: the attacker cannot
read the subject off a shared prompt.

The vendors are a choice (:data:`VENDORS_BY_BACKBONE`): Noto and Twemoji for tiny-sd v1, whose base
never saw an emoji; Noto and OpenMoji for tiny-sd-v2, whose base was pre-trained on every Twemoji image
and some Noto ones (``pool_emoji.pretrain_images``), so that choice keeps only emoji the base never saw
(:func:`qualifying`).

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
from lora_wise.factory import emoji_sources, pool_emoji

VENDORS = ("noto", "twemoji")  # tiny-sd v1's identities, unchanged since the v1 pilot
V2_VENDORS = ("noto", "openmoji")
#: The default vendor choice of a backbone; any other backbone gets :data:`VENDORS`, as before the choice.
VENDORS_BY_BACKBONE = {"tiny-sd": VENDORS, "tiny-sd-v2": V2_VENDORS}
#: The vendor whose every image is in tiny-sd-v2's pre-training pool: a choice without it is for v2.
PRETRAINED_VENDOR = "twemoji"
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


def default_vendors(backbone: str) -> tuple[str, ...]:
    return VENDORS_BY_BACKBONE.get(backbone, VENDORS)


def parse_vendors(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``noto,openmoji`` (or a sequence) -> a checked vendor pair; ValueError says what is allowed.

    Exactly two: the views are the two originals and :data:`VARIATIONS` of them, and the embedding's
    validation queries the second vendor's original against the first's views.
    """
    vendors = tuple(v.strip() for v in spec.split(",")) if isinstance(spec, str) else tuple(spec)
    unknown = [v for v in vendors if v not in emoji_sources.SOURCES]
    if unknown or len(vendors) != 2 or vendors[0] == vendors[1]:
        raise ValueError(
            f"vendors {','.join(vendors)!r}: name two distinct of {', '.join(emoji_sources.SOURCES)}"
        )
    return vendors


def code_point(unified: str) -> str:
    """The key that matches one emoji across sources: upper case, without FE0F variation selectors.

    emoji-datasource writes fully-qualified sequences (``263A-FE0F``), OpenMoji's ``hexcode`` often
    does not (``263A``); the selector only asks for emoji presentation, it names no other subject.
    """
    return "-".join(part for part in unified.upper().split("-") if part != "FE0F")


def _code_index(vendor: str) -> dict[str, int]:
    """Code point -> index into the vendor's images (skin tones are not in any source's listing)."""
    return {code_point(e["unified"]): i for i, e in enumerate(emoji_sources.source_images(vendor)[1])}


def qualifying(vendors: tuple[str, ...] = VENDORS) -> list[int]:
    """Indices into the first vendor's entries, in its sort order, of the emoji that can be identities.

    Every vendor must draw the emoji. A choice without :data:`PRETRAINED_VENDOR` is tiny-sd-v2's: there an
    emoji qualifies only if none of its originals is a (near-)copy of a pre-training image, since a base
    model that has seen a victim's views could draw them without any leak (Noto draws some person-symbol
    families exactly as the pool's "family" images). v1's choice is not filtered: its base never saw an
    emoji, and Twemoji's every image is in v2's pool.
    """
    vendors = parse_vendors(vendors)
    indexes = [_code_index(v) for v in vendors]
    first = emoji_sources.source_images(vendors[0])[1]
    shared = [i for i, e in enumerate(first) if all(code_point(e["unified"]) in ix for ix in indexes)]
    if PRETRAINED_VENDOR in vendors or not shared:
        return shared
    pool = pool_emoji.pretrain_images()[0]
    codes = [code_point(first[i]["unified"]) for i in shared]
    seen = np.zeros(len(shared), bool)
    for vendor, ix in zip(vendors, indexes, strict=True):
        seen |= emoji_sources.near_copies(
            emoji_sources.source_images(vendor)[0][[ix[c] for c in codes]], pool
        )
    return [i for i, s in zip(shared, seen, strict=True) if not s]


def build_identities(n: int, seed: int = 0, vendors: tuple[str, ...] = VENDORS) -> list[Identity]:
    """n identities drawn (seeded) from the :func:`qualifying` emoji; the first 80 % shadows.

    Raises MicroDatasetError when fewer than n emoji qualify.
    """
    vendors = parse_vendors(vendors)
    shared = qualifying(vendors)
    if len(shared) < n:
        raise MicroDatasetError(f"asked for {n} identities; only {len(shared)} emoji qualify for {vendors}")
    entries = emoji_sources.source_images(vendors[0])[1]
    order = np.random.default_rng(seed).permutation(len(shared))[:n]
    tokens = rare_tokens(n, seed)
    n_shadow = int(round(SHADOW_FRACTION * n))
    views = tuple((v, -1) for v in vendors)
    views += tuple((vendors[i % len(vendors)], i) for i in range(len(VARIATIONS)))
    out = []
    for rank, idx in enumerate(order):
        e = entries[shared[idx]]
        split = "shadow" if rank < n_shadow else "victim"
        out.append(Identity(e["unified"], e["short_name"], tokens[rank], split, views[:VIEWS]))
    return out


def view_images(identity: Identity) -> np.ndarray:
    """The identity's views, (V, 64, 64, 3) uint8 on white, in ``identity.views`` order."""
    return np.stack([_view(identity.unified, vendor, var) for vendor, var in identity.views])


def _view(unified: str, vendor: str, variation: int) -> np.ndarray:
    img = emoji_sources.source_images(vendor)[0][_code_index(vendor)[code_point(unified)]]
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
    return [emoji_sources.SOURCES[vendor].licence for vendor, _ in identity.views]


def attributions(identity: Identity) -> list[str]:
    """The attributions the views' licences ask for (OpenMoji's CC-BY-SA), each once, in view order."""
    found = (emoji_sources.SOURCES[vendor].attribution for vendor, _ in identity.views)
    return list(dict.fromkeys(a for a in found if a))


def write_identity_folders(identities: list[Identity], root: Path) -> dict[str, str]:
    """Each identity's views as PNGs in ``root/<key>/`` with a ``concept.txt`` (class, token, licences,
    attributions).

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
        meta += "".join(f"attribution = {a}\n" for a in attributions(ident))  # none for v1's vendors
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
