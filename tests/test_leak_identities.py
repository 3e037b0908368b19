"""lora_wise.leak.identities on the committed emoji fixture (real entries and PNGs), offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_wise.errors import MicroDatasetError
from lora_wise.factory import pool_emoji as pe
from lora_wise.factory.micro_datasets import open_micro_dataset
from lora_wise.leak import identities as li

FIXTURES = Path(__file__).parent / "data" / "emoji"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_WISE_CACHE", str(tmp_path))
    pe.source_images.cache_clear()
    for name, s in pe.SOURCES.items():
        pe.materialise(name, FIXTURES / f"{s.package}-{s.version}-mini.tgz")
    yield tmp_path
    pe.source_images.cache_clear()


def test_identities_are_shared_code_points_split_disjointly(cache):
    ids = li.build_identities(5, seed=1)
    shared = {e["unified"] for e in pe.source_images("noto")[1]} & {
        e["unified"] for e in pe.source_images("twemoji")[1]
    }
    assert {i.unified for i in ids} <= shared
    assert [i.split for i in ids].count("shadow") == 4 and [i.split for i in ids].count("victim") == 1
    assert len({i.token for i in ids}) == 5 and all(i.token in i.prompt for i in ids)
    assert li.build_identities(5, seed=1) == ids  # seeded
    assert li.build_identities(5, seed=2) != ids
    with pytest.raises(MicroDatasetError, match="only"):
        li.build_identities(len(shared) + 1)


def test_views_are_distinct_vendor_art_and_never_a_flip(cache):
    ident = li.build_identities(3, seed=0)[0]
    views = li.view_images(ident)
    assert views.shape == (li.VIEWS, 64, 64, 3) and views.dtype == np.uint8
    noto = pe.source_images("noto")[0][
        [e["unified"] for e in pe.source_images("noto")[1]].index(ident.unified)
    ]
    assert np.array_equal(views[0], noto)
    for a in range(len(views)):
        for b in range(a + 1, len(views)):
            assert np.abs(views[a].astype(int) - views[b].astype(int)).mean() > 1.0
        assert not np.array_equal(views[a], views[0][:, ::-1])
    assert li.licences(ident)[0].startswith("Apache-2.0") and li.licences(ident)[1].startswith("CC-BY-4.0")


def test_folders_feed_the_factory_with_the_identity_token(cache, tmp_path):
    ids = li.build_identities(2, seed=0)
    specs = li.write_identity_folders(ids, tmp_path / "ids")
    md = open_micro_dataset(specs[ids[0].key])
    assert md.instance_prompt == ids[0].prompt
    assert len(md.ids) == li.VIEWS and md.load(md.choose(li.VIEWS), 64).shape == (li.VIEWS, 3, 64, 64)
    li.save_identities(ids, tmp_path / "ids.json")
    assert li.load_identities(tmp_path / "ids.json") == ids
