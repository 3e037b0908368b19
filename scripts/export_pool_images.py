"""Write images of an offline-pool concept to a folder, for use as a ``folder:`` micro-dataset.

tiny-sd was pre-trained on the first 64 images of every pool concept (scripts/pretrain_tiny_sd.py);
``--start 64`` exports only images it never saw, with a ``concept.txt`` that keeps the concept's
class noun (so the instance prompt is the pool's). The README's unseen-image check:

    .venv/bin/python scripts/export_pool_images.py digit-3-ink digit-7-sun --start 64 --out runs/unseen-images
    # then a grid with micro_datasets: [folder:runs/unseen-images/digit-3-ink-from64, ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from lora_wise.factory import pool


def export(concept: str, start: int, out: Path) -> Path:
    images = pool.concept_images(concept)[start:]
    folder = out / f"{concept}-from{start}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "concept.txt").write_text(f"class = {pool.concepts()[concept].class_noun}\n")
    for i, image in enumerate(images, start=start):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("concepts", nargs="+", help="pool concept names, e.g. digit-3-ink face")
    parser.add_argument("--start", type=int, default=0, help="first image index to export")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    unknown = [c for c in args.concepts if c not in pool.concepts()]
    if unknown:
        print(f"error: unknown pool concept(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    for concept in args.concepts:
        folder = export(concept, args.start, args.out)
        print(f"{folder}: {len(list(folder.glob('*.png')))} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
