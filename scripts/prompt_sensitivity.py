"""Does a backbone listen to its prompt? Same seed, different prompts: how different are the pictures?

    python scripts/prompt_sensitivity.py [--backbones tiny-sd,tiny-sd-v2] [--png docs/leak/prompts.png]

The image-leak attack (docs/leak.md) predicts a conditioning from a LoRA's weights; that can only show
in the pictures if the UNet's output depends on its conditioning. For each backbone, every prompt is
sampled with the same seeds (DDIM, 30 steps, the pipeline's default guidance); printed: the mean
absolute pixel difference (0-255) between pictures of different prompts at one seed, against that
between pictures of one prompt at different seeds. A ratio near 0 means the prompt is ignored.
"""

from __future__ import annotations

import argparse
from itertools import combinations

import numpy as np

PROMPTS = ("a photo of dog face", "a photo of red apple", "a photo of rocket", "a photo of flag: Japan")


def sample(name: str, seeds: int) -> np.ndarray:
    """(prompts, seeds, 64, 64, 3) float pictures of one backbone."""
    import torch
    from diffusers import DDIMScheduler

    from lora_wise.factory.backbones import load_backbone

    bb = load_backbone(name)
    pipe = bb.pipeline()
    pipe.scheduler = DDIMScheduler.from_config(bb.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for prompt in PROMPTS:
        gen = torch.Generator().manual_seed(0)
        res = bb.resolution
        images = pipe(prompt, num_inference_steps=30, generator=gen, height=res, width=res,
                      num_images_per_prompt=seeds, output_type="np").images  # fmt: skip
        out.append(images * 255.0)
    return np.stack(out)


def spread(pictures: np.ndarray) -> tuple[float, float]:
    """(mean |difference| across prompts at one seed, across seeds at one prompt)."""
    prompts = [np.abs(pictures[i] - pictures[j]).mean() for i, j in combinations(range(len(pictures)), 2)]
    seeds = [
        np.abs(pictures[:, i] - pictures[:, j]).mean() for i, j in combinations(range(pictures.shape[1]), 2)
    ]
    return float(np.mean(prompts)), float(np.mean(seeds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="tiny-sd,tiny-sd-v2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--png", default=None, help="also save the pictures: one row per backbone")
    args = ap.parse_args(argv)
    rows = []
    print("| backbone | across prompts, one seed | across seeds, one prompt | ratio |")
    print("|---|---|---|---|")
    for name in args.backbones.split(","):
        pictures = sample(name, args.seeds)
        by_prompt, by_seed = spread(pictures)
        print(f"| {name} | {by_prompt:.1f} | {by_seed:.1f} | {by_prompt / by_seed:.2f} |")
        rows.append(np.concatenate(list(pictures.reshape(-1, *pictures.shape[2:])), axis=1))
    if args.png:
        from PIL import Image

        Image.fromarray(np.concatenate(rows).clip(0, 255).astype(np.uint8)).save(args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
