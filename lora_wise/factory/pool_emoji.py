"""The v2 image pool: emoji artwork fetched through npm, as benchmark concepts and a disjoint pre-training
pool.

Sources (pinned: package, version, SHA-256 of the npm tarball; licences of the ARTWORK, the packages'
own code is MIT):

- ``noto``: ``emoji-datasource-google@16.0.0``, Google's Noto Color Emoji, Apache-2.0.
- ``twemoji``: ``emoji-datasource-twitter@16.0.0``, Twemoji, CC-BY-4.0 (Twitter, Inc. and contributors).
- ``openmoji``: ``openmoji@17.0.0``, OpenMoji, CC-BY-SA-4.0 ("OpenMoji – the open-source emoji and icon
  project, openmoji.org"). It ships SVG only, rendered at 64x64 with resvg (``resvg-py``).

Apple's and Facebook's artwork (the sibling packages) is not openly licensed and is never used.

Every source is decoded to its base emoji only (skin-tone variants and the ``Component`` group dropped),
composited on white at 64x64 (the largest single-image size the PNG packages ship).

Pilot concepts (``pool:emoji-<name>``, :data:`CONCEPTS`, the pilot grids) are Noto images of a set of
emoji subcategories, near-duplicates removed (mean absolute difference of 16x16 thumbnails under
:data:`NEAR_DUPLICATE` grey levels, e.g. the clock faces), then at most :data:`CAP` chosen by a
seeded permutation per concept. :data:`CAP` > 50 leaves unseen images of the concept at size 50.

The v2 concepts (mini LoRA-WiSE v2, :data:`V2_CONCEPTS`, listed in a stable order by
:data:`V2_CONCEPT_NAMES`) are 50 pairwise disjoint concepts: 18 finer cuts of the pilots' Noto
subcategories (``pool:noto-<name>``) and 32 of OpenMoji (``pool:openmoji-<name>``). Near-duplicates are
removed across all v2 concepts of a source at once (so no two v2 concepts share a near-copy), and so are
near-copies of pre-training images; a big subcategory may be cut into contiguous parts in sort order
(the flags); then :data:`CAP` applies as above.

The pre-training pool (:func:`pretrain_images`) is DISJOINT from every benchmark image: every Twemoji
image, plus the Noto images of subcategories no pilot concept uses. It never holds a Noto image of a
pilot concept's subcategories, chosen or not; the Noto v2 concepts only re-cut those subcategories, and
OpenMoji is never in it, so "unseen" images of a concept are unseen by the base model too.

Fetching: ``npm pack`` into ``<cache>/sources/`` (cache: ``$LORA_WISE_CACHE`` or ``~/.cache/lora-wise``),
checked against the pinned SHA-256; then the images are decoded once into
``<cache>/pool-emoji/<source>-<version>.safetensors`` (uint8 images) + ``.json`` (their emoji entries).
Any failure raises :class:`EmojiSourceError` with one line that says what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from lora_wise.errors import EmojiSourceError, one_line
from lora_wise.factory.pool import Concept

SIZE = 64
CAP = 64
MIN_IMAGES = 50
NEAR_DUPLICATE = 4.0  # grey levels (0-255), mean |difference| of 16x16 thumbnails
PREFIX = "emoji-"
RESVG = "resvg-py==0.5.0"


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    sha256: str
    image_dir: str  # inside the tarball
    has_flag: str  # emoji.json's has_img_<vendor> ("" for OpenMoji, which lists its own images)
    licence: str
    attribution: str = ""
    layout: str = "emoji-datasource"  # or "openmoji": data/openmoji.csv and SVGs

    @property
    def tarball(self) -> str:
        return f"{self.package}-{self.version}.tgz"


SOURCES: dict[str, Source] = {
    "noto": Source(
        "emoji-datasource-google",
        "16.0.0",
        "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
        "package/img/google/64/",
        "has_img_google",
        "Apache-2.0 (Noto Emoji artwork)",
    ),
    "twemoji": Source(
        "emoji-datasource-twitter",
        "16.0.0",
        "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
        "package/img/twitter/64/",
        "has_img_twitter",
        "CC-BY-4.0 (Twemoji artwork)",
    ),
    "openmoji": Source(
        "openmoji",
        "17.0.0",
        "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68",
        "package/color/svg/",
        "",
        "CC-BY-SA-4.0 (OpenMoji artwork)",
        attribution="OpenMoji – the open-source emoji and icon project, openmoji.org",
        layout="openmoji",
    ),
}

#: Pilot concepts: name -> (class noun of the prompt, subcategory selectors "Category/subcategory",
#: a trailing "*" matches a prefix). All from the ``noto`` source. They also fix the pre-training
#: pool (the Noto subcategories they select are kept out of it): never edit them.
CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "activity": ("activity", ("Activities/*",)),
    "animal": ("animal", ("Animals & Nature/animal-*",)),
    "face": (
        "face",
        ("Smileys & Emotion/face-*", "Smileys & Emotion/cat-face", "Smileys & Emotion/monkey-face"),
    ),
    "flag": ("flag", ("Flags/*",)),
    "food": ("food", ("Food & Drink/*",)),
    "object": (
        "object",
        (
            "Objects/household",
            "Objects/computer",
            "Objects/light & video",
            "Objects/phone",
            "Objects/music",
            "Objects/musical-instrument",
            "Objects/sound",
        ),
    ),
    "person": ("person", ("People & Body/person*",)),
    "place": ("place", ("Travel & Places/place-*", "Travel & Places/hotel")),
    "tool": ("tool", ("Objects/tool", "Objects/office", "Objects/writing", "Objects/lock")),
    "vehicle": ("vehicle", ("Travel & Places/transport-*",)),
}
CONCEPT_SOURCE = "noto"


@dataclass(frozen=True)
class FineConcept:
    """A v2 concept: the ``part``-th of ``parts`` contiguous slices (in sort order) of the distinct
    images of ``source`` that ``selectors`` match."""

    source: str
    noun: str
    selectors: tuple[str, ...]
    part: int = 0
    parts: int = 1


def _in(category: str, *subcategories: str) -> tuple[str, ...]:
    return tuple(f"{category}/{s}" for s in subcategories)


def _fine(source: str, noun: str, *selectors: tuple[str, ...], part: int = 0, parts: int = 1) -> FineConcept:
    return FineConcept(source, noun, sum(selectors, ()), part, parts)


_noto, _openmoji = partial(_fine, "noto"), partial(_fine, "openmoji")


_N_PEOPLE, _O_PEOPLE = "People & Body", "people-body"
_N_ANIMALS, _O_ANIMALS = "Animals & Nature", "animals-nature"
_N_FOOD, _O_FOOD = "Food & Drink", "food-drink"
_N_TRAVEL, _O_TRAVEL = "Travel & Places", "travel-places"
_N_FACES, _O_FACES = "Smileys & Emotion", "smileys-emotion"
_O_EXTRAS, _O_UNICODE = "extras-openmoji", "extras-unicode"
_PREPARED = ("food-prepared", "food-asian", "food-sweet")
_PRODUCE = ("food-fruit", "food-vegetable", "drink", "dishware")
_OTHER_ANIMALS = ("animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug")
_SMILE = (  # + hats and glasses: the Noto faces then split 56 / 57
    "face-smiling",
    "face-affection",
    "face-tongue",
    "face-hand",
    "face-neutral-skeptical",
    "face-sleepy",
    "face-hat",
    "face-glasses",
)
_CONCERNED = ("face-unwell", "face-concerned", "face-negative", "face-costume", "cat-face", "monkey-face")
_MEDIA = ("computer", "light-video", "phone", "music", "musical-instrument", "sound")
_N_FLAGS = _in("Flags", "country-flag")  # 231 distinct: 4 parts
_O_FLAGS = _in("flags", "country-flag")  # 185 distinct (flat designs have more near-copies): 3 parts

#: The v2 concepts by name (``pool:<name>``), pairwise disjoint. Noto and OpenMoji concepts of one theme
#: alternate, so that a prefix of :data:`V2_CONCEPT_NAMES` (the rank grid's first 20) holds both sources.
#: The Noto ones only re-cut subcategories :data:`CONCEPTS` selects (the pre-training pool is fixed).
V2_CONCEPTS: dict[str, FineConcept] = {
    "noto-flag-1": _noto("flag", _N_FLAGS, part=0, parts=4),
    "openmoji-flag-1": _openmoji("flag", _O_FLAGS, part=0, parts=3),
    "noto-person-role": _noto("person", _in(_N_PEOPLE, "person-role")),
    "openmoji-person-role": _openmoji("person", _in(_O_PEOPLE, "person-role")),
    "noto-animal-mammal": _noto("animal", _in(_N_ANIMALS, "animal-mammal")),
    "openmoji-animal-mammal": _openmoji("animal", _in(_O_ANIMALS, "animal-mammal")),
    "noto-food-prepared": _noto("food", _in(_N_FOOD, *_PREPARED)),
    "openmoji-food-prepared": _openmoji("food", _in(_O_FOOD, *_PREPARED)),
    "noto-vehicle": _noto("vehicle", _in(_N_TRAVEL, "transport-*")),
    "openmoji-vehicle": _openmoji("vehicle", _in(_O_TRAVEL, "transport-*")),
    "noto-place": _noto("place", _in(_N_TRAVEL, "place-*", "hotel")),
    "openmoji-place": _openmoji("place", _in(_O_TRAVEL, "place-*", "hotel"), _in(_O_EXTRAS, "travel-places")),
    "noto-activity": _noto("activity", _in("Activities", "*")),
    "openmoji-activity": _openmoji("activity", _in("activities", "*")),
    "noto-face-smile": _noto("face", _in(_N_FACES, *_SMILE)),
    "openmoji-face-smile": _openmoji("face", _in(_O_FACES, *_SMILE, "heart", "emotion")),
    "noto-object": _noto("object", CONCEPTS["object"][1]),
    "openmoji-object-media": _openmoji("object", _in("objects", *_MEDIA)),
    "noto-tool": _noto("tool", CONCEPTS["tool"][1]),
    "openmoji-tool": _openmoji("tool", _in("objects", "tool", "office", "writing", "lock")),
    "noto-flag-2": _noto("flag", _N_FLAGS, part=1, parts=4),
    "openmoji-flag-2": _openmoji("flag", _O_FLAGS, part=1, parts=3),
    "noto-person-activity": _noto("person", _in(_N_PEOPLE, "person-activity", "person-sport")),
    "openmoji-person-activity": _openmoji(
        "person", _in(_O_PEOPLE, "person-activity", "person-sport", "person-resting")
    ),
    "noto-animal-other": _noto("animal", _in(_N_ANIMALS, *_OTHER_ANIMALS)),
    "openmoji-animal-other": _openmoji(
        "animal", _in(_O_ANIMALS, *_OTHER_ANIMALS), _in(_O_EXTRAS, _O_ANIMALS)
    ),
    "noto-food-produce-drink": _noto("food", _in(_N_FOOD, *_PRODUCE)),
    "openmoji-food-produce-drink": _openmoji(
        "food", _in(_O_FOOD, *_PRODUCE), _in(_O_EXTRAS, _O_FOOD), _in(_O_UNICODE, _O_FOOD)
    ),
    "noto-face-concerned": _noto("face", _in(_N_FACES, *_CONCERNED)),
    "openmoji-face-concerned": _openmoji("face", _in(_O_FACES, *_CONCERNED), _in(_O_EXTRAS, _O_FACES)),
    "noto-person": _noto(
        "person",
        _in(_N_PEOPLE, "person", "person-gesture", "person-fantasy", "person-resting", "person-symbol"),
    ),
    "openmoji-person": _openmoji("person", _in(_O_PEOPLE, "person", "person-gesture", "person-fantasy")),
    "noto-flag-3": _noto("flag", _N_FLAGS, part=2, parts=4),
    "openmoji-flag-3": _openmoji("flag", _O_FLAGS, part=2, parts=3),
    "noto-flag-4": _noto("flag", _N_FLAGS, part=3, parts=4),
    "openmoji-flag-other": _openmoji(
        "flag",
        _in("flags", "flag", "subdivision-flag"),
        _in(_O_UNICODE, "subdivision-flag"),
        _in(_O_EXTRAS, "flags", "queer-symbols"),
    ),
    "openmoji-family-body": _openmoji(
        "person", _in(_O_PEOPLE, "family", "person-symbol", "body-parts"), _in(_O_EXTRAS, "people")
    ),
    "openmoji-hand": _openmoji("hand", _in(_O_PEOPLE, "hand*"), _in(_O_EXTRAS, "interaction")),
    "openmoji-plant-nature": _openmoji(
        "plant", _in(_O_ANIMALS, "plant-*"), _in(_O_EXTRAS, "gardening", "climate-environment")
    ),
    "openmoji-sky-weather": _openmoji("weather", _in(_O_TRAVEL, "sky-weather", "time")),
    "openmoji-clothing-household": _openmoji("clothing", _in("objects", "clothing", "household")),
    "openmoji-object-misc": _openmoji(
        "object", _in("objects", "book-paper", "mail", "money", "other-object"), _in(_O_EXTRAS, "objects")
    ),
    "openmoji-healthcare": _openmoji(
        "medical icon", _in(_O_EXTRAS, "healthcare"), _in("objects", "medical", "science")
    ),
    "openmoji-emergency": _openmoji("emergency icon", _in(_O_EXTRAS, "emergency")),
    "openmoji-ui-technology": _openmoji("interface icon", _in(_O_EXTRAS, "ui-element", "technology")),
    "openmoji-alphanum": _openmoji(
        "letter", _in("symbols", "alphanum", "keycap"), _in(_O_UNICODE, "regional-indicator")
    ),
    "openmoji-symbol-geometric": _openmoji(
        "symbol",
        _in("symbols", "geometric", "math", "punctuation", "currency", "gender"),
        _in(_O_EXTRAS, "symbol-other", "symbols"),
    ),
    "openmoji-symbol-sign": _openmoji("sign", _in("symbols", "arrow", "av-symbol", "transport-sign")),
    "openmoji-symbol-other": _openmoji(
        "symbol", _in("symbols", "warning", "religion", "zodiac", "other-symbol")
    ),
    "openmoji-unicode-symbol": _openmoji("symbol", _in(_O_UNICODE, "symbol-other")),
}
#: The 50 v2 concept names in a stable order (a grid lists them as ``pool:<name>``).
V2_CONCEPT_NAMES: tuple[str, ...] = tuple(V2_CONCEPTS)


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_WISE_CACHE") or Path.home() / ".cache" / "lora-wise")


def fetch(name: str) -> Path:
    """The verified npm tarball of a source, fetched with ``npm pack`` if it is not cached."""
    src = SOURCES[name]
    folder = cache_dir() / "sources"
    path = folder / src.tarball
    if not path.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise EmojiSourceError(
                f"{src.tarball} is not in {folder} and npm is not installed: install npm "
                f"or put the file there (npm pack {src.package}@{src.version})"
            )
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "pack", f"{src.package}@{src.version}", "--pack-destination", str(folder)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0 or not path.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise EmojiSourceError(f"npm pack {src.package}@{src.version} failed: {last}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != src.sha256:
        raise EmojiSourceError(
            f"{path}: SHA-256 {digest[:12]}... is not the pinned {src.sha256[:12]}...; "
            "delete the file to fetch it again"
        )
    return path


def decode_tarball(tarball: Path, src: Source) -> tuple[np.ndarray, list[dict]]:
    """Every base emoji with an image in this source's style: (N, 64, 64, 3) uint8 on white, and its
    entries (short_name, unified, category, subcategory, sort_order), in sort order."""
    # PNGs pass through; a missing SVG renderer is reported before anything is read
    to_png = _svg_renderer() if src.layout == "openmoji" else bytes
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            listing = _LISTINGS[src.layout](tar, members, src)
            images = np.stack([_on_white(to_png(tar.extractfile(members[p]).read())) for _, p in listing])
    except (tarfile.TarError, OSError, EOFError, KeyError, ValueError, csv.Error) as e:
        raise EmojiSourceError(
            f"{tarball} is not a readable {src.package}@{src.version} tarball ({type(e).__name__}: "
            f"{one_line(e)}): use the pinned one (npm pack {src.package}@{src.version})"
        ) from None
    return images, [entry for entry, _ in listing]


def _datasource_listing(tar: tarfile.TarFile, members: dict, src: Source) -> list[tuple[dict, str]]:
    """emoji-datasource: the top-level entries of emoji.json with this vendor's PNG (skin tones are not
    top-level), sorted by sort_order; (entry, member name)."""
    entries = json.loads(tar.extractfile(members["package/emoji.json"]).read())
    keep = [
        e
        for e in entries
        if e.get(src.has_flag) and e["category"] != "Component" and src.image_dir + e["image"] in members
    ]
    keep.sort(key=lambda e: e["sort_order"])
    keys = ("short_name", "unified", "category", "subcategory", "sort_order")
    return [({k: e[k] for k in keys}, src.image_dir + e["image"]) for e in keep]


def _openmoji_listing(tar: tarfile.TarFile, members: dict, src: Source) -> list[tuple[dict, str]]:
    """OpenMoji: the rows of data/openmoji.csv without a skin tone, outside the component group, with an
    SVG, as emoji-datasource entries (group -> category, subgroups -> subcategory, row -> sort_order)."""
    text = io.TextIOWrapper(tar.extractfile(members["package/data/openmoji.csv"]), encoding="utf-8")
    out = []
    for row_number, row in enumerate(csv.DictReader(text)):
        path = f"{src.image_dir}{row['hexcode']}.svg"
        if not row["skintone"] and row["group"] != "component" and path in members:
            entry = {
                "short_name": row["annotation"],
                "unified": row["hexcode"],
                "category": row["group"],
                "subcategory": row["subgroups"],
                "sort_order": row_number,  # the file's order (extras have no "order" value)
            }
            out.append((entry, path))
    return out


_LISTINGS = {"emoji-datasource": _datasource_listing, "openmoji": _openmoji_listing}


def _svg_renderer():
    """SVG bytes -> 64x64 RGBA PNG bytes with resvg (imported here: only OpenMoji needs it)."""
    try:
        import resvg_py
    except ImportError:
        raise EmojiSourceError(
            f"OpenMoji ships SVG only and resvg-py is not installed: pip install '{RESVG}'"
        ) from None

    def render(svg: bytes) -> bytes:
        # no system fonts: the render must not depend on the machine (OpenMoji draws its text as paths)
        return bytes(
            resvg_py.svg_to_bytes(svg_string=svg.decode(), width=SIZE, height=SIZE, skip_system_fonts=True)
        )

    return render


def _on_white(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        rgba = img.convert("RGBA")
    if rgba.size != (SIZE, SIZE):
        rgba = rgba.resize((SIZE, SIZE), Image.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def materialise(name: str, tarball: Path | None = None) -> Path:
    """Decode a source once into the cache (safetensors + JSON); return the safetensors path."""
    from safetensors.numpy import save_file

    src = SOURCES[name]
    out = cache_dir() / "pool-emoji" / f"{name}-{src.version}.safetensors"
    if out.is_file() and out.with_suffix(".json").is_file():
        return out
    images, entries = decode_tarball(tarball or fetch(name), src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    save_file({"images": images}, str(tmp), metadata={"package": f"{src.package}@{src.version}"})
    out.with_suffix(".json").write_text(json.dumps(entries))
    os.replace(tmp, out)
    return out


@lru_cache(maxsize=4)
def source_images(name: str) -> tuple[np.ndarray, tuple[dict, ...]]:
    """A source's decoded images and entries (fetched and decoded on first use)."""
    from safetensors.numpy import load_file

    path = materialise(name)
    return load_file(str(path))["images"], tuple(json.loads(path.with_suffix(".json").read_text()))


def selected(entry: dict, selectors: tuple[str, ...]) -> bool:
    key = f"{entry['category']}/{entry['subcategory']}"
    return any(key.startswith(s[:-1]) if s.endswith("*") else key == s for s in selectors)


def dedupe(
    images: np.ndarray, threshold: float = NEAR_DUPLICATE, seen: np.ndarray | None = None
) -> list[int]:
    """Indices to keep: an image is dropped when it is within ``threshold`` of one kept before it, or of
    any of ``seen`` (images that must not come back, e.g. the pre-training pool)."""
    prior = 0 if seen is None else len(seen)
    both = images if seen is None else np.concatenate([seen, images])
    thumbs = _thumbnails(both)
    kept: list[int] = list(range(prior))
    for i in range(prior, len(both)):
        if not kept or np.abs(thumbs[kept] - thumbs[i]).mean((1, 2)).min() >= threshold:
            kept.append(i)
    return [i - prior for i in kept[prior:]]


def near_copies(images: np.ndarray, seen: np.ndarray, threshold: float = NEAR_DUPLICATE) -> np.ndarray:
    """Whether each image is within ``threshold`` of one of ``seen`` (:func:`dedupe`'s distance), as bools."""
    if len(seen) == 0:
        return np.zeros(len(images), bool)
    pool = _thumbnails(seen)
    return np.array([np.abs(pool - t).mean((1, 2)).min() < threshold for t in _thumbnails(images)], bool)


def _thumbnails(images: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnails, float32: what near-copies are compared on."""
    return (
        images.astype(np.float32).mean(-1).reshape(len(images), 16, SIZE // 16, 16, SIZE // 16).mean((2, 4))
    )


def _pilot_selectors() -> tuple[str, ...]:
    return tuple(s for _, sel in CONCEPTS.values() for s in sel)


def _capped(name: str, distinct: list[int]) -> tuple[int, ...]:
    """Up to CAP of a concept's distinct images by a permutation seeded with its name, in source order."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    order = np.random.default_rng(seed).permutation(len(distinct))[:CAP]
    chosen = tuple(distinct[j] for j in sorted(order))  # sorted: concept order follows sort_order
    if len(chosen) < MIN_IMAGES:
        raise EmojiSourceError(
            f"emoji concept {name!r} has {len(chosen)} distinct images, fewer than {MIN_IMAGES}"
        )
    return chosen


@lru_cache(maxsize=1)
def _concept_index() -> dict[str, tuple[int, ...]]:
    """Pilot concept -> indices into the Noto source: deduplicated per concept, then capped."""
    images, entries = source_images(CONCEPT_SOURCE)
    out = {}
    for name, (_, selectors) in CONCEPTS.items():
        members = [i for i, e in enumerate(entries) if selected(e, selectors)]
        out[PREFIX + name] = _capped(PREFIX + name, [members[j] for j in dedupe(images[members])])
    return out


@lru_cache(maxsize=2)
def _v2_index(source: str) -> dict[str, tuple[int, ...]]:
    """The v2 concepts of one source -> indices into it: deduplicated across all of them, cut, capped."""
    images, entries = source_images(source)
    table = {n: c for n, c in V2_CONCEPTS.items() if c.source == source}
    union = tuple(s for c in table.values() for s in c.selectors)
    members = [i for i, e in enumerate(entries) if selected(e, union)]
    if source == CONCEPT_SOURCE:  # Noto images outside the pilots' subcategories are pre-training images
        members = [i for i in members if selected(entries[i], _pilot_selectors())]
    # near-copies of pre-training images go too (Noto draws "family" as "man-man-boy"): the base never saw one
    distinct = [members[j] for j in dedupe(images[members], seen=pretrain_images()[0])]
    out = {}
    for name, c in table.items():
        mine = [i for i in distinct if selected(entries[i], c.selectors)]
        out[name] = _capped(name, [int(i) for i in np.array_split(np.asarray(mine, int), c.parts)[c.part]])
    return out


def _source_of(name: str) -> str:
    if name in V2_CONCEPTS:
        return V2_CONCEPTS[name].source
    if is_concept(name):
        return CONCEPT_SOURCE
    raise KeyError(f"unknown emoji concept {name!r}; see lora_wise.factory.pool_emoji.V2_CONCEPTS")


def _index(name: str) -> tuple[str, tuple[int, ...]]:
    """(source, indices into it) of a pilot or v2 concept; builds only that source's concepts."""
    source = _source_of(name)
    return source, (_v2_index(source) if name in V2_CONCEPTS else _concept_index())[name]


def concepts() -> dict[str, Concept]:
    """The pilot concepts by name (``emoji-animal``, ...); needs the Noto source (fetched once)."""
    return {n: concept(n) for n in _concept_index()}


def v2_concepts() -> dict[str, Concept]:
    """The 50 v2 concepts by name, in :data:`V2_CONCEPT_NAMES` order; needs all three sources (the v2
    concepts are kept clear of the pre-training pool, Twemoji included)."""
    return {n: concept(n) for n in V2_CONCEPT_NAMES}


def concept(name: str) -> Concept:
    """One pilot or v2 concept; a pilot needs only Noto, so pilot grids never fetch OpenMoji."""
    source, index = _index(name)
    return Concept(name, class_noun(name), "emoji" if name.startswith(PREFIX) else source, len(index))


def class_noun(name: str) -> str:
    """The prompt's class noun of a pilot or v2 concept (no fetch needed)."""
    return V2_CONCEPTS[name].noun if name in V2_CONCEPTS else CONCEPTS[name.removeprefix(PREFIX)][0]


def is_concept(name: str) -> bool:
    """Whether a pool concept name belongs to this module (no fetch needed to answer)."""
    return name in V2_CONCEPTS or (name.startswith(PREFIX) and name.removeprefix(PREFIX) in CONCEPTS)


def concept_images(name: str) -> np.ndarray:
    """A concept's images, (N, 64, 64, 3) uint8, in id order."""
    source, index = _index(name)
    return source_images(source)[0][list(index)]


def concept_names(name: str) -> list[str]:
    """The emoji short names of a concept's images, in id order (for the dataset card)."""
    source, index = _index(name)
    entries = source_images(source)[1]
    return [entries[i]["short_name"] for i in index]


def concept_licence(name: str) -> str:
    """The artwork licence of a concept's source, with its attribution where the licence asks for one."""
    src = SOURCES[_source_of(name)]
    return f"{src.licence}; {src.attribution}" if src.attribution else src.licence


def pretrain_images() -> tuple[np.ndarray, list[str]]:
    """The disjoint pre-training pool: every Twemoji image and the Noto images of unused subcategories.

    Returns (N, 64, 64, 3) uint8 and one prompt per image, ``a photo of <emoji name>``.
    """
    all_selectors = _pilot_selectors()
    tw_images, tw_entries = source_images("twemoji")
    no_images, no_entries = source_images(CONCEPT_SOURCE)
    free = [i for i, e in enumerate(no_entries) if not selected(e, all_selectors)]
    images = np.concatenate([tw_images, no_images[free]])
    names = [e["short_name"] for e in tw_entries] + [no_entries[i]["short_name"] for i in free]
    return images, [f"a photo of {n.replace('_', ' ')}" for n in names]
