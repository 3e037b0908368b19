"""lora_wise.factory.pool_emoji on the committed fixture (real entries and PNGs of the pinned tarballs),
offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_wise.factory import pool_emoji as pe
from lora_wise.factory.micro_datasets import open_micro_dataset

FIXTURES = Path(__file__).parent / "data" / "emoji"


def mini(name: str) -> Path:
    s = pe.SOURCES[name]
    return FIXTURES / f"{s.package}-{s.version}-mini.tgz"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_WISE_CACHE", str(tmp_path))
    pe.source_images.cache_clear()
    pe._concept_index.cache_clear()
    yield tmp_path
    pe.source_images.cache_clear()
    pe._concept_index.cache_clear()


def test_decode_keeps_base_emoji_on_white():
    images, entries = pe.decode_tarball(mini("noto"), pe.SOURCES["noto"])
    assert images.shape == (19, 64, 64, 3) and images.dtype == np.uint8
    assert all(e["category"] != "Component" for e in entries)  # the skin-tone swatch is dropped
    assert (images[:, 0, 0] == 255).all()  # transparent corners composited on white
    assert [e["sort_order"] for e in entries] == sorted(e["sort_order"] for e in entries)


def test_dedupe_drops_near_copies_only():
    images, _ = pe.decode_tarball(mini("noto"), pe.SOURCES["noto"])
    copy = np.clip(images[3].astype(int) + 2, 0, 255).astype(np.uint8)  # 2 grey levels off image 3
    alone = pe.dedupe(images)
    assert 3 in alone and pe.dedupe(np.concatenate([images, copy[None]])) == alone  # the copy goes
    _, entries = pe.decode_tarball(mini("noto"), pe.SOURCES["noto"])
    dropped = {entries[i]["subcategory"] for i in set(range(len(images))) - set(alone)}
    assert dropped and dropped <= {"time", "geometric"}  # clock faces, coloured squares: not animals


def test_concepts_and_a_disjoint_pretraining_pool(cache, monkeypatch):
    monkeypatch.setattr(pe, "MIN_IMAGES", 0)
    monkeypatch.setattr(pe, "CAP", 4)
    for name in pe.SOURCES:
        pe.materialise(name, tarball=mini(name))
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
    noto, entries = pe.source_images("noto")
    used = {
        noto[i].tobytes()
        for i, e in enumerate(entries)
        if e["subcategory"] in ("animal-mammal", "transport-ground")
    }
    assert len(used) == 12 and not used & {
        im.tobytes() for im in pretrain
    }  # chosen AND unchosen ones excluded


def test_too_few_images_is_a_clear_error(cache):
    for name in pe.SOURCES:
        pe.materialise(name, tarball=mini(name))
    with pytest.raises(pe.EmojiSourceError, match="fewer than 50"):
        pe.concepts()


def test_fetch_errors_are_one_line(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-npm-here"))
    with pytest.raises(pe.EmojiSourceError, match="npm is not installed"):
        pe.fetch("noto")
    (cache / "sources").mkdir()
    (cache / "sources" / pe.SOURCES["noto"].tarball).write_bytes(b"not the package")
    with pytest.raises(pe.EmojiSourceError, match="SHA-256") as err:
        pe.fetch("noto")
    assert "\n" not in str(err.value)
