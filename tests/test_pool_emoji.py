"""lora_wise.factory.pool_emoji and emoji_sources on the committed fixture (real entries, PNGs and SVGs
of the pinned tarballs), offline; the tests taking ``real`` check the whole pool on the real sources
where they are cached (``~/.cache/lora-wise`` or ``$LORA_WISE_CACHE``) and skip otherwise."""

from __future__ import annotations

import hashlib
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from lora_wise.errors import EmojiSourceError
from lora_wise.factory import emoji_sources as es
from lora_wise.factory import pool_emoji as pe
from lora_wise.factory.micro_datasets import open_micro_dataset

FIXTURES = Path(__file__).parent / "data" / "emoji"


def mini(name: str) -> Path:
    s = es.SOURCES[name]
    return FIXTURES / f"{s.package}-{s.version}-mini.tgz"


#: The pre-training pool of tiny-sd-v2 on the real sources: its base is trained on exactly these images.
PRETRAIN_LEN = 2484
PRETRAIN_SHA256 = "5c0861ab8282cf45371312c08cc8b563958e632bdff6b4c9a4b3aae51a93797a"
PROMPTS_SHA256 = "865d05e085e6f9ae9d93e9ce1199b099de08e2b3201e8637a654c7f248664e24"  # "\n".join(prompts)


def clear_caches():
    for f in (es.source_images, pe._concept_index, pe._v2_index):
        f.cache_clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_WISE_CACHE", str(tmp_path))
    clear_caches()
    yield tmp_path
    clear_caches()


@pytest.fixture
def fixture_pool(cache, monkeypatch):
    """Every source decoded from its mini fixture; concepts of any size."""
    monkeypatch.setattr(pe, "MIN_IMAGES", 0)
    for name in es.SOURCES:
        es.materialise(name, tarball=mini(name))
    return cache


@pytest.fixture
def real():
    missing = [
        s.tarball for s in es.SOURCES.values() if not (es.cache_dir() / "sources" / s.tarball).is_file()
    ]
    if missing:
        pytest.skip(f"real sources not cached: {', '.join(missing)}")
    clear_caches()
    yield
    clear_caches()


def test_decode_keeps_base_emoji_on_white():
    images, entries = es.decode_tarball(mini("noto"), es.SOURCES["noto"])
    assert images.shape == (19, 64, 64, 3) and images.dtype == np.uint8
    assert all(e["category"] != "Component" for e in entries)  # the skin-tone swatch is dropped
    assert (images[:, 0, 0] == 255).all()  # transparent corners composited on white
    assert [e["sort_order"] for e in entries] == sorted(e["sort_order"] for e in entries)


def test_dedupe_drops_near_copies_only():
    images, _ = es.decode_tarball(mini("noto"), es.SOURCES["noto"])
    copy = np.clip(images[3].astype(int) + 2, 0, 255).astype(np.uint8)  # 2 grey levels off image 3
    alone = es.dedupe(images)
    assert 3 in alone and es.dedupe(np.concatenate([images, copy[None]])) == alone  # the copy goes
    _, entries = es.decode_tarball(mini("noto"), es.SOURCES["noto"])
    dropped = {entries[i]["subcategory"] for i in set(range(len(images))) - set(alone)}
    assert dropped and dropped <= {"time", "geometric"}  # clock faces, coloured squares: not animals


def test_concepts_and_a_disjoint_pretraining_pool(fixture_pool, monkeypatch):
    monkeypatch.setattr(pe, "CAP", 4)
    cs = pe.concepts()
    assert cs["emoji-animal"].size == 4 and cs["emoji-vehicle"].size == 4  # 6 each, capped
    md = open_micro_dataset("pool:emoji-animal")
    assert md.instance_prompt == "a photo of sks animal" and len(md.ids) == 4
    pixels = md.load(md.choose(2), 64)
    assert pixels.shape == (2, 3, 64, 64) and -1 <= pixels.min() < pixels.max() <= 1
    pretrain, prompts = pe.pretrain_images()
    assert (
        len(pretrain) == len(prompts) == 8 + 7
    )  # all Twemoji (the swatch dropped) + Noto "time" and "geometric"
    noto, entries = es.source_images("noto")
    used = {
        noto[i].tobytes()
        for i, e in enumerate(entries)
        if e["subcategory"] in ("animal-mammal", "transport-ground")
    }
    assert len(used) == 12 and not used & {
        im.tobytes() for im in pretrain
    }  # chosen AND unchosen ones excluded


def test_too_few_images_is_a_clear_error(cache):
    for name in es.SOURCES:
        es.materialise(name, tarball=mini(name))
    with pytest.raises(EmojiSourceError, match="fewer than 50"):
        pe.concepts()


def test_fetch_errors_are_one_line(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    with pytest.raises(EmojiSourceError, match="npm is not installed"):
        es.fetch("noto")
    (cache / "sources").mkdir()
    (cache / "sources" / es.SOURCES["noto"].tarball).write_bytes(b"not the package")
    with pytest.raises(EmojiSourceError, match="SHA-256") as err:
        es.fetch("noto")
    assert "\n" not in str(err.value)


def test_openmoji_decode_drops_skin_tones_and_components():
    images, entries = es.decode_tarball(mini("openmoji"), es.SOURCES["openmoji"])
    assert images.shape == (11, 64, 64, 3) and images.dtype == np.uint8  # 13 rows in the cut CSV
    hexcodes = {e["unified"] for e in entries}
    assert "1F44B" in hexcodes and not {"1F44B-1F3FB", "1F3FB"} & hexcodes  # skin-tone variant, swatch
    assert (images[:, 0, 0] == 255).all() and (images.reshape(11, -1).min(1) < 64).all()  # drawn on white
    assert [e["sort_order"] for e in entries] == sorted(e["sort_order"] for e in entries)
    mouse = entries[[e["unified"] for e in entries].index("1F42D")]
    assert (mouse["category"], mouse["subcategory"], mouse["short_name"]) == (
        "animals-nature",
        "animal-mammal",
        "mouse face",
    )


def test_v2_concepts_are_disjoint_resolvable_and_outside_pretraining(fixture_pool):
    cs = pe.v2_concepts()
    assert list(cs) == list(pe.V2_CONCEPT_NAMES) and len(cs) == 50
    assert cs["noto-animal-mammal"].size == 6 and cs["openmoji-animal-mammal"].size == 3
    flags = [cs[f"openmoji-flag-{k}"].size for k in (1, 2, 3)]
    assert flags == [1, 1, 0]  # Germany, France; Italy is a near-copy of France in grey
    images = {n: {im.tobytes() for im in pe.concept_images(n)} for n in cs}
    assert all(not images[a] & images[b] for a, b in combinations(cs, 2))
    pretrain = {im.tobytes() for im in pe.pretrain_images()[0]}
    assert not set().union(*images.values()) & pretrain
    md = open_micro_dataset("pool:openmoji-animal-mammal")
    assert md.instance_prompt == "a photo of sks animal" and len(md.ids) == 3
    assert md.load(md.choose(2), 64).shape == (2, 3, 64, 64)
    assert pe.concept_names("openmoji-animal-mammal") == ["dog face", "cat face", "mouse face"]
    assert "CC-BY-SA-4.0" in pe.concept_licence("openmoji-hand") and "openmoji.org" in pe.concept_licence(
        "openmoji-hand"
    )
    assert pe.concept_licence("noto-flag-1") == pe.concept_licence("emoji-flag") == es.SOURCES["noto"].licence


def reached_outside_pilots() -> list[dict]:
    """Noto entries a v2 selector matches that no pilot selector does (they are pre-training images)."""
    noto = [c for c in pe.V2_CONCEPTS.values() if c.source == "noto"]
    _, entries = es.source_images("noto")
    reached = [e for e in entries if any(pe.selected(e, c.selectors) for c in noto)]
    assert reached
    return [e for e in reached if not pe.selected(e, pe._pilot_selectors())]


def test_noto_v2_concepts_only_recut_the_pilots_subcategories(fixture_pool):
    assert reached_outside_pilots() == []


def test_openmoji_errors_are_one_line(cache, monkeypatch, tmp_path):
    bad = tmp_path / "openmoji-17.0.0.tgz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(EmojiSourceError, match="not a readable openmoji@17.0.0 tarball") as err:
        es.materialise("openmoji", tarball=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(EmojiSourceError, match="KeyError"):  # a tarball without data/openmoji.csv
        es.decode_tarball(mini("noto"), es.SOURCES["openmoji"])
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # what an environment without resvg-py sees
    with pytest.raises(EmojiSourceError, match="pip install 'resvg-py==0.5.0'") as err:
        es.materialise("openmoji", tarball=mini("openmoji"))
    assert "\n" not in str(err.value)


def test_real_pretraining_pool_is_pinned(real):
    images, prompts = pe.pretrain_images()
    assert len(images) == len(prompts) == PRETRAIN_LEN
    assert hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest() == PRETRAIN_SHA256
    assert hashlib.sha256("\n".join(prompts).encode()).hexdigest() == PROMPTS_SHA256


def test_real_v2_concepts_have_50_disjoint_images_each(real):
    sizes = {n: c.size for n, c in pe.v2_concepts().items()}  # raises below MIN_IMAGES
    assert len(sizes) == 50 and min(sizes.values()) >= 50
    assert (
        sum(n.startswith("noto-") for n in sizes) == 18
        and sum(n.startswith("openmoji-") for n in sizes) == 32
    )
    for source in ("noto", "openmoji"):
        index = pe._v2_index(source)
        assert sum(len(ix) for ix in index.values()) == len(set().union(*index.values()))
    # no near-copy across the 50 concepts (the two sources included), nor of a pre-training image
    v2 = np.concatenate([pe.concept_images(n) for n in sizes])
    assert es.dedupe(v2, seen=pe.pretrain_images()[0]) == list(range(len(v2)))
    assert reached_outside_pilots() == []
