"""The v2 image pool: emoji artwork fetched through npm, as benchmark concepts and a disjoint pre-training
pool.

Sources (pinned: package, version, SHA-256 of the npm tarball; licences of the ARTWORK, the packages'
own code is MIT):

- ``noto``: ``emoji-datasource-google@16.0.0``, Google's Noto Color Emoji, Apache-2.0.
- ``twemoji``: ``emoji-datasource-twitter@16.0.0``, Twemoji, CC-BY-4.0 (Twitter, Inc. and contributors).

Apple's and Facebook's artwork (the sibling packages) is not openly licensed and is never used.

Benchmark concepts (``pool:emoji-<name>``, :data:`CONCEPTS`) are Noto images of a set of emoji
subcategories: the base emoji only (skin-tone variants are not top-level entries, the skin-tone
swatches are dropped), composited on white at 64x64 (the largest single-image size the packages
ship), near-duplicates removed (mean absolute difference of 16x16 thumbnails under
:data:`NEAR_DUPLICATE` grey levels, e.g. the clock faces), then at most :data:`CAP` chosen by a
seeded permutation per concept. :data:`CAP` > 50 leaves unseen images of the concept at size 50.

The pre-training pool (:func:`pretrain_images`) is DISJOINT from every benchmark image: every Twemoji
image, plus the Noto images of subcategories no concept uses. It never holds a Noto image of a concept's
subcategories, chosen or not, so "unseen" images of a concept are unseen by the base model too.

Fetching: ``npm pack`` into ``<cache>/sources/`` (cache: ``$LORA_WISE_CACHE`` or ``~/.cache/lora-wise``),
checked against the pinned SHA-256; then the images are decoded once into
``<cache>/pool-emoji/<source>-<version>.safetensors`` (uint8 images) + ``.json`` (their emoji entries).
Any failure raises :class:`EmojiSourceError` with one line that says what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lora_wise.errors import EmojiSourceError
from lora_wise.factory.pool import Concept

SIZE = 64
CAP = 64
MIN_IMAGES = 50
NEAR_DUPLICATE = 4.0  # grey levels (0-255), mean |difference| of 16x16 thumbnails
PREFIX = "emoji-"


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    sha256: str
    image_dir: str  # inside the tarball
    has_flag: str  # emoji.json's has_img_<vendor>
    licence: str

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
}

#: Benchmark concepts: name -> (class noun of the prompt, subcategory selectors "Category/subcategory",
#: a trailing "*" matches a prefix). All from the ``noto`` source.
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
    """Every top-level emoji with an image in this vendor's style: (N, 64, 64, 3) uint8 on white, entries."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        entries = json.loads(tar.extractfile(members["package/emoji.json"]).read())
        keep = [
            e
            for e in entries
            if e.get(src.has_flag) and e["category"] != "Component" and src.image_dir + e["image"] in members
        ]
        keep.sort(key=lambda e: e["sort_order"])
        images = [_on_white(tar.extractfile(members[src.image_dir + e["image"]]).read()) for e in keep]
    slim = [
        {k: e[k] for k in ("short_name", "unified", "category", "subcategory", "sort_order")} for e in keep
    ]
    return np.stack(images), slim


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


def dedupe(images: np.ndarray, threshold: float = NEAR_DUPLICATE) -> list[int]:
    """Indices to keep: an image is dropped when it is within ``threshold`` of one kept before it."""
    thumbs = (
        images.astype(np.float32).mean(-1).reshape(len(images), 16, SIZE // 16, 16, SIZE // 16).mean((2, 4))
    )
    kept: list[int] = []
    for i, t in enumerate(thumbs):
        if not kept or np.abs(thumbs[kept] - t).mean((1, 2)).min() >= threshold:
            kept.append(i)
    return kept


@lru_cache(maxsize=1)
def _concept_index() -> dict[str, tuple[int, ...]]:
    """Concept -> indices into the Noto source: deduplicated, then up to CAP by a seeded permutation."""
    images, entries = source_images(CONCEPT_SOURCE)
    out = {}
    for name, (_, selectors) in CONCEPTS.items():
        members = [i for i, e in enumerate(entries) if selected(e, selectors)]
        distinct = [members[j] for j in dedupe(images[members])]
        seed = int(hashlib.sha256(f"{PREFIX}{name}".encode()).hexdigest()[:8], 16)
        order = np.random.default_rng(seed).permutation(len(distinct))[:CAP]
        chosen = tuple(distinct[j] for j in sorted(order))  # sorted: concept order follows sort_order
        if len(chosen) < MIN_IMAGES:
            raise EmojiSourceError(
                f"emoji concept {name!r} has {len(chosen)} distinct images, fewer than {MIN_IMAGES}"
            )
        out[PREFIX + name] = chosen
    return out


def concepts() -> dict[str, Concept]:
    """The benchmark concepts by name (``emoji-animal``, ...); needs the Noto source (fetched once)."""
    return {
        n: Concept(n, CONCEPTS[n.removeprefix(PREFIX)][0], "emoji", len(ix))
        for n, ix in _concept_index().items()
    }


def is_concept(name: str) -> bool:
    """Whether a pool concept name belongs to this module (no fetch needed to answer)."""
    return name.removeprefix(PREFIX) in CONCEPTS and name.startswith(PREFIX)


def concept_images(name: str) -> np.ndarray:
    """A concept's images, (N, 64, 64, 3) uint8, in id order."""
    if not is_concept(name):
        raise KeyError(f"unknown emoji concept {name!r}; see lora_wise.factory.pool_emoji.CONCEPTS")
    return source_images(CONCEPT_SOURCE)[0][list(_concept_index()[name])]


def concept_names(name: str) -> list[str]:
    """The emoji short names of a concept's images, in id order (for the dataset card)."""
    entries = source_images(CONCEPT_SOURCE)[1]
    return [entries[i]["short_name"] for i in _concept_index()[name]]


def pretrain_images() -> tuple[np.ndarray, list[str]]:
    """The disjoint pre-training pool: every Twemoji image and the Noto images of unused subcategories.

    Returns (N, 64, 64, 3) uint8 and one prompt per image, ``a photo of <emoji name>``.
    """
    all_selectors = tuple(s for _, sel in CONCEPTS.values() for s in sel)
    tw_images, tw_entries = source_images("twemoji")
    no_images, no_entries = source_images(CONCEPT_SOURCE)
    free = [i for i, e in enumerate(no_entries) if not selected(e, all_selectors)]
    images = np.concatenate([tw_images, no_images[free]])
    names = [e["short_name"] for e in tw_entries] + [no_entries[i]["short_name"] for i in free]
    return images, [f"a photo of {n.replace('_', ' ')}" for n in names]
