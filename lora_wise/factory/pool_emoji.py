"""The v2 image pool: the emoji of :mod:`lora_wise.factory.emoji_sources` (the pinned packages) as
benchmark concepts and a disjoint pre-training pool.

Pilot concepts (``pool:emoji-<name>``, :data:`CONCEPTS`, the pilot grids) are Noto images of a set of
emoji subcategories, near-duplicates removed (mean absolute difference of 16x16 thumbnails under
``emoji_sources.NEAR_DUPLICATE`` grey levels, e.g. the clock faces), then at most :data:`CAP` chosen by a
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

A concept of fewer than :data:`MIN_IMAGES` distinct images raises :class:`EmojiSourceError`, as does any
failure to fetch or decode a source, with one line that says what to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

from lora_wise.errors import EmojiSourceError
from lora_wise.factory.emoji_sources import SOURCES, dedupe, source_images
from lora_wise.factory.pool import Concept

CAP = 64
MIN_IMAGES = 50
PREFIX = "emoji-"


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


def selected(entry: dict, selectors: tuple[str, ...]) -> bool:
    key = f"{entry['category']}/{entry['subcategory']}"
    return any(key.startswith(s[:-1]) if s.endswith("*") else key == s for s in selectors)


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
