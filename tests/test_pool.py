"""The offline pool and micro-dataset specs: real bundled images, deterministic, nested sizes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from lora_wise.errors import MicroDatasetError
from lora_wise.factory import pool
from lora_wise.factory.micro_datasets import choose_images, open_micro_dataset


def test_pool_has_50_concepts_of_50_distinct_images():
    cs = pool.concepts()
    assert len(cs) >= 50
    for name, c in cs.items():
        imgs = pool.concept_images(name)
        assert imgs.shape == (c.size, 64, 64, 3) and imgs.dtype == np.uint8
        assert len({im.tobytes() for im in imgs}) == c.size >= 50, name
        assert imgs.std() > 5, f"{name} is nearly blank"


def test_concepts_are_visually_distinct():
    # no two concepts are near-duplicates: their mean images differ by > 3 grey levels on average
    means = {n: pool.concept_images(n).astype(np.float32).mean(0) for n in pool.concepts()}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(means[a] - means[b]).mean() > 3.0, (a, b)


def test_pool_is_deterministic():
    first = hashlib.sha256(pool.concept_images("photo-chelsea").tobytes()).hexdigest()
    pool._concept_images.cache_clear()
    pool._digits.cache_clear()
    again = hashlib.sha256(pool.concept_images("photo-chelsea").tobytes()).hexdigest()
    assert first == again
    assert pool.image_ids("face")[:2] == ["face/0000", "face/0001"]


def test_sizes_are_nested_and_deterministic():
    six = choose_images("pool:digit-7-sun", 6)
    assert choose_images("pool:digit-7-sun", 6) == six
    for n in range(1, 6):
        assert choose_images("pool:digit-7-sun", n) == six[:n]
    assert choose_images("pool:digit-7-rose", 6) != six  # another concept, another permutation
    fifty = choose_images("pool:face", 50)
    assert len(set(fifty)) == 50 and all(i.startswith("face/") for i in fifty)


def test_pool_images_load_as_dreambooth_tensors():
    md = open_micro_dataset("pool:photo-coffee")
    assert md.instance_prompt == "a photo of sks coffee cup"
    x = md.load(md.choose(3), 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    assert -1.0 <= x.min() < x.max() <= 1.0


def _write_images(folder, n, size=(48, 40)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
            folder / f"img{i:02d}.png"
        )


def test_folder_imagenet_and_concept101_layouts(tmp_path):
    _write_images(tmp_path / "red_car", 5)
    md = open_micro_dataset(f"folder:{tmp_path / 'red_car'}")
    assert md.class_noun == "red car" and len(md.ids) == 5
    assert md.load(md.choose(2), 16).shape == (2, 3, 16, 16)  # 48x40 resized then centre-cropped

    root = tmp_path / "imagenet"
    _write_images(root / "n01440764", 4)
    (root / "LOC_synset_mapping.txt").write_text(
        "n01443537 goldfish, Carassius auratus\nn01440764 tench, Tinca tinca\n"
    )
    md = open_micro_dataset(f"imagenet:{root / 'n01440764'}")
    assert md.class_noun == "tench" and md.key == "imagenet:n01440764"

    c101 = tmp_path / "benchmark_dataset"
    _write_images(c101 / "pet_dog1", 3)
    entry = {"instance_data_dir": "./benchmark_dataset/pet_dog1", "class_prompt": "dog"}
    (c101 / "dataset.json").write_text(json.dumps([entry]))
    md = open_micro_dataset(f"concept101:{c101 / 'pet_dog1'}")
    assert md.instance_prompt == "a photo of sks dog"
    # the choice depends on the key, not on where the folder lives
    moved = tmp_path / "elsewhere" / "benchmark_dataset"
    _write_images(moved / "pet_dog1", 3)
    assert open_micro_dataset(f"concept101:{moved / 'pet_dog1'}").choose(3) == md.choose(3)


@pytest.mark.parametrize("spec", ["pool", "pool:", "pool:no-such", "zip:x", "folder:/no/such/dir"])
def test_bad_specs_raise_one_line_errors(spec):
    with pytest.raises(MicroDatasetError) as e:
        open_micro_dataset(spec)
    assert "\n" not in str(e.value)


def test_too_many_images_is_an_error():
    with pytest.raises(MicroDatasetError, match="asked for 101"):
        choose_images("pool:face", 101)
