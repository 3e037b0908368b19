"""Micro-datasets by spec string, and the deterministic choice of n images for dataset size n.

Specs:

- ``pool:<concept>``: a concept of the offline pool (``lora_wise.factory.pool``), or of the v2 emoji pool
  (``lora_wise.factory.pool_emoji``, fetched through npm on first use): a pilot concept
  (``pool:emoji-animal``) or one of the mini LoRA-WiSE v2's (``pool:noto-flag-1``,
  ``pool:openmoji-person-role``, ...).
- ``folder:<path>``: a folder of images of one concept; the class noun is the folder name
  (or the ``class`` line of an optional ``concept.txt``).
- ``concept101:<root>/<concept>``: the CustomConcept101 layout (``<root>/<concept>/*.jpg``,
  optional ``<root>/dataset.json`` whose entries give ``instance_data_dir`` and ``class_prompt``).
- ``imagenet:<root>/<wnid>``: an ImageNet class folder; the class noun comes from
  ``<root>/LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``) when present.

The n images of size n are the first n of a fixed seeded permutation of the micro-dataset's
image ids, seeded by the micro-dataset's key (not its path, so a moved folder keeps its
choice): sizes are nested, a model of size 10 saw the images of the model of size 1.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_wise.errors import MicroDatasetError
from lora_wise.factory import pool, pool_emoji

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".JPEG", ".JPG", ".PNG")


@dataclass(frozen=True)
class MicroDataset:
    """A concept's images: a stable key, the class noun for the prompt, and all image ids."""

    spec: str
    key: str  # what seeds the permutation: "pool:digit-3-ink", "imagenet:n01440764", ...
    class_noun: str
    ids: tuple[str, ...]
    root: Path | None = None  # None for the pool; image ids are paths relative to root
    trigger: str = "sks"  # a folder's concept.txt may name its own (``token = xyz``: the leak's identities)

    @property
    def instance_prompt(self) -> str:
        """DreamBooth's instance prompt with the paper's rare token."""
        return f"a photo of {self.trigger} {self.class_noun}"

    def choose(self, n: int) -> list[str]:
        """The n image ids of dataset size n: the first n of the key-seeded permutation."""
        if not 1 <= n <= len(self.ids):
            raise MicroDatasetError(f"{self.spec}: asked for {n} images, it has {len(self.ids)}")
        seed = int(hashlib.sha256(self.key.encode()).hexdigest()[:16], 16)
        order = np.random.default_rng(seed).permutation(len(self.ids))
        return [self.ids[i] for i in order[:n]]

    def load(self, ids: list[str], resolution: int) -> np.ndarray:
        """Images as float32 (n, 3, res, res) in [-1, 1], as DreamBooth's transforms give them."""
        return np.stack([_to_tensor(self._pil(i), resolution) for i in ids])

    def _pil(self, image_id: str):
        from PIL import Image

        if self.root is None:
            concept, index = image_id.rsplit("/", 1)
            source = pool_emoji if pool_emoji.is_concept(concept) else pool
            return Image.fromarray(source.concept_images(concept)[int(index)])
        with Image.open(self.root / image_id) as img:
            return img.convert("RGB")


def open_micro_dataset(spec: str) -> MicroDataset:
    """Resolve a spec string; raises MicroDatasetError with a one-line reason."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise MicroDatasetError(f"bad micro-dataset spec {spec!r}: expected kind:value, e.g. pool:face")
    if kind == "pool" and pool_emoji.is_concept(rest):  # the v2 pool (fetched through npm once)
        c = pool_emoji.concept(rest)
        return MicroDataset(spec, spec, c.class_noun, tuple(f"{rest}/{i:04d}" for i in range(c.size)))
    if kind == "pool":
        if rest not in pool.concepts():
            raise MicroDatasetError(f"unknown pool concept {rest!r} (see lora_wise.factory.pool.concepts())")
        c = pool.concepts()[rest]
        return MicroDataset(spec, spec, c.class_noun, tuple(pool.image_ids(rest)))
    if kind in ("folder", "concept101", "imagenet"):
        return _folder(spec, kind, Path(rest).expanduser())
    raise MicroDatasetError(
        f"unknown micro-dataset kind {kind!r} in {spec!r}: pool, folder, concept101, imagenet"
    )


def class_noun(spec: str) -> str:
    """A micro-dataset's class noun without loading (or fetching) its images where the name says it."""
    kind, _, rest = spec.partition(":")
    if kind == "pool" and pool_emoji.is_concept(rest):
        return pool_emoji.class_noun(rest)
    if kind == "pool" and rest in pool.concepts():
        return pool.concepts()[rest].class_noun
    return open_micro_dataset(spec).class_noun


def matches(spec: str, patterns: Iterable[str]) -> bool:
    """Does a micro-dataset spec match any of the globs (``pool:photo-*``)? Case-sensitive."""
    return any(fnmatch.fnmatchcase(spec, p) for p in patterns)


def choose_images(spec: str, n: int) -> list[str]:
    """The image ids used for dataset size n of a micro-dataset (nested across n)."""
    return open_micro_dataset(spec).choose(n)


def _folder(spec: str, kind: str, path: Path) -> MicroDataset:
    if not path.is_dir():
        raise MicroDatasetError(f"{spec}: {path} is not a folder")
    ids = tuple(sorted(p.name for p in path.iterdir() if p.suffix in IMAGE_SUFFIXES and p.is_file()))
    if not ids:
        raise MicroDatasetError(f"{spec}: no images ({', '.join(IMAGE_SUFFIXES[:5])}) in {path}")
    noun = {"folder": _folder_noun, "concept101": _concept101_noun, "imagenet": _imagenet_noun}[kind](path)
    return MicroDataset(spec, f"{kind}:{path.name}", noun, ids, root=path, trigger=_folder_token(path))


def _folder_token(path: Path) -> str:
    meta = path / "concept.txt"
    lines = meta.read_text().splitlines() if meta.is_file() else []
    tokens = [line.split("=", 1)[-1].strip() for line in lines if line.replace(" ", "").startswith("token=")]
    return tokens[0] if tokens and tokens[0] else "sks"


def _folder_noun(path: Path) -> str:
    meta = path / "concept.txt"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.startswith("class"):
                return line.split("=", 1)[-1].split(":", 1)[-1].strip()
    return path.name.replace("_", " ").replace("-", " ")


def _concept101_noun(path: Path) -> str:
    meta = path.parent / "dataset.json"
    if meta.is_file():
        try:
            entries = json.loads(meta.read_text())
        except json.JSONDecodeError as e:
            raise MicroDatasetError(f"{meta}: not valid JSON ({e.msg})") from None
        for entry in entries if isinstance(entries, list) else []:
            if Path(str(entry.get("instance_data_dir", ""))).name == path.name and entry.get("class_prompt"):
                return str(entry["class_prompt"])
    return path.name.split("_")[-1] if "_" in path.name else path.name


def _imagenet_noun(path: Path) -> str:
    mapping = path.parent / "LOC_synset_mapping.txt"
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            wnid, _, names = line.partition(" ")
            if wnid == path.name:
                return names.split(",")[0].strip()
    return path.name


def _to_tensor(img, resolution: int) -> np.ndarray:
    # diffusers' DreamBoothDataset: Resize(shortest side, bilinear), crop, ToTensor, Normalize(0.5, 0.5).
    # Its RandomCrop is the identity on square images; other images are centre-cropped here.
    from PIL import Image

    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return arr * 2.0 - 1.0
