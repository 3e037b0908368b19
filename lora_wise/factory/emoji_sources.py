"""The pinned emoji packages: fetch, verify, decode, cache.

Sources (pinned: package, version, SHA-256 of the npm tarball; licences of the ARTWORK, the packages'
own code is MIT):

- ``noto``: ``emoji-datasource-google@16.0.0``, Google's Noto Color Emoji, Apache-2.0.
- ``twemoji``: ``emoji-datasource-twitter@16.0.0``, Twemoji, CC-BY-4.0 (Twitter, Inc. and contributors).
- ``openmoji``: ``openmoji@17.0.0``, OpenMoji, CC-BY-SA-4.0 ("OpenMoji – the open-source emoji and icon
  project, openmoji.org"). It ships SVG only, rendered at 64x64 with resvg (``resvg-py``).

Apple's and Facebook's artwork (the sibling packages) is not openly licensed and is never used.

Every source is decoded to its base emoji only (skin-tone variants and the ``Component`` group dropped),
composited on white at 64x64 (the largest single-image size the PNG packages ship).

Near-copies (:func:`dedupe`, :func:`near_copies`): mean absolute difference of 16x16 grey thumbnails
under :data:`NEAR_DUPLICATE` grey levels.

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
from functools import lru_cache
from pathlib import Path

import numpy as np

from lora_wise.errors import EmojiSourceError, one_line

SIZE = 64
NEAR_DUPLICATE = 4.0  # grey levels (0-255), mean |difference| of 16x16 thumbnails
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
