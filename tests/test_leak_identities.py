"""lora_wise.leak.identities on the committed emoji fixture (real entries, PNGs and SVGs), offline."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import runpy
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from lora_wise.errors import MicroDatasetError
from lora_wise.factory import emoji_sources as es
from lora_wise.factory import pool_emoji as pe
from lora_wise.factory.micro_datasets import open_micro_dataset
from lora_wise.leak import identities as li
from lora_wise.leak.victims import Recipe

FIXTURES = Path(__file__).parent / "data" / "emoji"
ROOT = Path(__file__).resolve().parents[1]

#: The committed OpenMoji fixture shares no code point with the Noto one, so the v2 tests give some of
#: its rows (artwork unchanged) the code points of Noto fixture emoji, written as OpenMoji might.
RECODED = {
    "1F436": "1F405",  # tiger2: plain match
    "1F431": "1f402-FE0F",  # ox, Noto's "1F402": case and a variation selector on OpenMoji's side
    "1F68C": "1F3CE",  # racing_car, Noto's "1F3CE-FE0F": the selector on Noto's side
    "1F42D": "1F401",  # mouse2
    "1F697": "1F550",  # clock1: Noto's clock faces are pre-training images, so never an identity
    "1F44B-1F3FB": "1F404",  # cow2, but a skin-tone row: skin tones never stand in for a base emoji
}
V2_QUALIFY = ["1F405", "1F402", "1F401", "1F3CE-FE0F"]  # Noto's sort order

#: tiny-sd v1's identities on the fixture before the vendor choice existed (fingerprint, views' digest).
V1_PINNED = ("0e8531376a2d", "03735077a0ed0c8e0624758f05a87c21e22c7a3d9bbb3d0606e5889fd4a81b09")


def mini(name: str) -> Path:
    s = es.SOURCES[name]
    return FIXTURES / f"{s.package}-{s.version}-mini.tgz"


def recoded_openmoji(path: Path) -> Path:
    """The OpenMoji fixture with :data:`RECODED` applied to its CSV rows and their SVG file names."""
    image_dir = es.SOURCES["openmoji"].image_dir
    with tarfile.open(mini("openmoji")) as src, tarfile.open(path, "w:gz") as out:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("openmoji.csv"):
                rows = list(csv.DictReader(io.StringIO(data.decode())))
                text = io.StringIO()
                writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
                writer.writeheader()
                writer.writerows({**r, "hexcode": RECODED.get(r["hexcode"], r["hexcode"])} for r in rows)
                data = text.getvalue().encode()
            elif m.isfile() and m.name.startswith(image_dir):
                code = m.name.removeprefix(image_dir).removesuffix(".svg")
                m.name = f"{image_dir}{RECODED.get(code, code)}.svg"
            if data is not None:
                m.size = len(data)
            out.addfile(m, None if data is None else io.BytesIO(data))
    return path


def materialise_all(cache: Path, monkeypatch, openmoji: Path) -> Path:
    monkeypatch.setenv("LORA_WISE_CACHE", str(cache))
    es.source_images.cache_clear()
    for name in es.SOURCES:
        es.materialise(name, openmoji if name == "openmoji" else mini(name))
    return cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    yield materialise_all(tmp_path, monkeypatch, mini("openmoji"))
    es.source_images.cache_clear()


@pytest.fixture
def v2_cache(tmp_path, monkeypatch):
    yield materialise_all(tmp_path / "cache", monkeypatch, recoded_openmoji(tmp_path / "openmoji.tgz"))
    es.source_images.cache_clear()


def digest(identities: list[li.Identity]) -> tuple[str, str]:
    h = hashlib.sha256(json.dumps([asdict(i) for i in identities]).encode())
    for ident in identities:
        h.update(li.view_images(ident).tobytes())
    return li.fingerprint(identities), h.hexdigest()


def test_identities_are_shared_code_points_split_disjointly(cache):
    ids = li.build_identities(5, seed=1)
    shared = {e["unified"] for e in es.source_images("noto")[1]} & {
        e["unified"] for e in es.source_images("twemoji")[1]
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
    noto = es.source_images("noto")[0][
        [e["unified"] for e in es.source_images("noto")[1]].index(ident.unified)
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


def test_v1_default_is_unchanged(cache, tmp_path):
    ids = li.build_identities(8, seed=0)
    assert digest(ids) == V1_PINNED and li.build_identities(8, seed=0, vendors=li.VENDORS) == ids
    assert li.qualifying() == li.qualifying(("noto", "twemoji"))  # no pre-training filter for v1
    li.write_identity_folders(ids[:1], tmp_path / "ids")
    assert "attribution" not in (tmp_path / "ids" / ids[0].key / "concept.txt").read_text()
    old_recipe = {k: v for k, v in Recipe().__dict__.items() if k != "vendors"}  # a recipe.json of v1
    assert Recipe(**old_recipe).vendors == li.VENDORS


def test_vendor_choice_is_honoured_and_defaults_by_backbone(v2_cache, tmp_path):
    ids = li.build_identities(4, seed=0, vendors=li.V2_VENDORS)
    assert {v for i in ids for v, _ in i.views} == {"noto", "openmoji"}
    assert ids[0].views == (("noto", -1), ("openmoji", -1), ("noto", 0), ("openmoji", 1), ("noto", 2))
    assert li.licences(ids[0])[1].startswith("CC-BY-SA-4.0")
    li.write_identity_folders(ids[:1], tmp_path / "ids")
    meta = (tmp_path / "ids" / ids[0].key / "concept.txt").read_text()
    assert "CC-BY-SA-4.0" in meta and "attribution = OpenMoji – the open-source emoji" in meta
    recipe = Recipe(backbone="tiny-sd-v2")
    assert recipe.vendors == li.V2_VENDORS and Recipe().vendors == li.VENDORS
    assert Recipe(**json.loads(json.dumps(recipe.__dict__))) == recipe  # recipe.json round trip
    assert Recipe(vendors=["noto", "openmoji"]).vendors == li.V2_VENDORS  # explicit beats the backbone
    for bad in ("noto", "noto,noto", "noto,apple", "noto,twemoji,openmoji"):
        with pytest.raises(ValueError, match="two distinct"):
            li.parse_vendors(bad)
    pilot = runpy.run_path(str(ROOT / "scripts" / "leak_pilot.py"))
    with pytest.raises(SystemExit):
        pilot["main"](["out", "--vendors", "noto,apple"])


def test_openmoji_matches_by_code_point_across_fe0f_and_case(v2_cache):
    noto = es.source_images("noto")[1]
    assert [noto[i]["unified"] for i in li.qualifying(li.V2_VENDORS)] == V2_QUALIFY
    assert li.code_point("1f3ce-FE0F") == li.code_point("1F3CE") == "1F3CE"
    om_images, om_entries = es.source_images("openmoji")
    dog = om_images[[e["short_name"] for e in om_entries].index("dog face")]  # recoded to 1F405
    tiger = next(i for i in li.build_identities(4, vendors=li.V2_VENDORS) if i.unified == "1F405")
    assert np.array_equal(li.view_images(tiger)[1], dog)


def test_v2_views_are_never_in_the_pretraining_pool(v2_cache, monkeypatch):
    pool = pe.pretrain_images()[0]
    ids = li.build_identities(len(V2_QUALIFY), vendors=li.V2_VENDORS)
    views = np.concatenate([li.view_images(i) for i in ids])
    assert not es.near_copies(views, pool).any()
    assert not (views[:, None] == pool[None]).all((2, 3, 4)).any()  # not one pixel-exact copy either
    # a Noto image of a benchmark subcategory that the pool holds (as Noto's families are) is dropped too
    images, entries = es.source_images("noto")
    mouse = images[[e["unified"] for e in entries].index("1F401")]
    near = np.clip(mouse.astype(int) + 1, 0, 255).astype(np.uint8)[None]
    monkeypatch.setattr(pe, "pretrain_images", lambda: (np.concatenate([pool, near]), []))
    assert [entries[i]["unified"] for i in li.qualifying(li.V2_VENDORS)] == ["1F405", "1F402", "1F3CE-FE0F"]
    with pytest.raises(MicroDatasetError, match="only 3 emoji qualify"):
        li.build_identities(4, vendors=li.V2_VENDORS)
