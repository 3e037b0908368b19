"""What the attack recovers from one LoRA file: a PNG grid, and the identification score among candidates.

``leak_scan(lora, attack)`` predicts the conditioning from the LoRA's weights, generates ``k``
images with the LoRA applied and ``k`` with the base model under the SAME conditioning (what the
weights add), and writes them side by side. With ``candidates`` (a folder of one sub-folder of
images per candidate identity) it ranks the candidates by the fixed embedding
(``lora_wise.leak.embedding``) of the recovered images.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from lora_wise.errors import InvalidLoraFile, LeakError
from lora_wise.factory.backbones import load_backbone
from lora_wise.leak import embedding as em
from lora_wise.leak.attack import generate
from lora_wise.leak.encoder import load_encoder
from lora_wise.leak.victims import load_lora

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def packaged_attack(backbone: str = "tiny-sd") -> Path:
    """The attack shipped in the wheel for a backbone (``lora_wise/data/leak/<backbone>.safetensors``)."""
    path = Path(str(resources.files("lora_wise") / "data" / "leak" / f"{backbone}.safetensors"))
    if not path.is_file():
        raise LeakError(f"no packaged attack for backbone {backbone!r}: train one with lora-wise leak train")
    return path


def leak_scan(
    lora: Path,
    attack: Path | None = None,
    out: Path | None = None,
    k: int = 4,
    seed: int = 0,
    step: int | None = None,
    candidates: Path | None = None,
) -> dict:
    """Generate from the LoRA's predicted conditioning; write the grid; score candidates if given.
    Without ``attack``, the packaged attack of the LoRA's backbone."""
    backbone = _backbone_of(Path(lora))
    model, header = load_encoder(attack or packaged_attack("tiny-sd" if backbone == "unknown" else backbone))
    # a LoRA of another base with the same shapes (tiny-sd-v2) would run, and draw with the wrong UNet
    if backbone not in ("unknown", header["backbone"]):
        raise LeakError(
            f"{lora}: a {backbone} LoRA, but the attack was trained on {header['backbone']} LoRAs "
            f"(give --attack one of {backbone}'s, from lora-wise leak train)"
        )
    weights = _lora_for(model.cfg.layers, Path(lora))
    step = step if step is not None else _declared_step(Path(lora)) or int(header["recipe"]["steps"])
    bb = load_backbone(header["backbone"])
    with torch.no_grad():
        cond = model([weights], torch.tensor([step]))[0]
    index = torch.tensor([1] * k + [0] * k)
    images = generate(bb, [weights], 1.0, index, cond.expand(2 * k, -1, -1), seed=seed)
    out = Path(out) if out else Path(lora).with_name(Path(lora).stem + "-leak.png")
    _write_pair_grid(out, images[:k], images[k:])
    report = {
        "lora": str(lora),
        "attack": str(attack or "packaged"),
        "backbone": header["backbone"],
        "step": step,
        "k": k,
        "grid": str(out),
    }
    if candidates is not None:
        report["candidates"] = rank_candidates(images[:k], Path(candidates))
    return report


def rank_candidates(recovered: np.ndarray, folder: Path) -> list[dict]:
    """Candidates (sub-folders of images) by cosine of their mean embedding to the recovered images'."""
    from PIL import Image

    subs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not subs:
        raise LeakError(f"{folder}: expected one sub-folder of images per candidate identity")
    q = em.embed(recovered).mean(0)
    rows = []
    for sub in subs:
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise LeakError(f"{sub}: no images ({', '.join(IMAGE_SUFFIXES)})")
        imgs = []
        for f in files:
            with Image.open(f) as im:
                imgs.append(np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.uint8))
        g = em.embed(np.stack(imgs)).mean(0)
        rows.append(
            {
                "candidate": sub.name,
                "images": len(files),
                "similarity": float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g))),
            }
        )
    rows.sort(key=lambda r: -r["similarity"])
    return [{"rank": i + 1, **r} for i, r in enumerate(rows)]


def _lora_for(layers: tuple[str, ...], path: Path) -> dict:
    try:
        weights = load_lora(path)
    except KeyError as e:
        raise InvalidLoraFile(f"{path}: unpaired LoRA factor {e}") from None
    missing = [n for n in layers if n not in weights]
    if missing:
        raise LeakError(
            f"{path}: the attack reads {len(layers)} layers (to_q/to_v of its UNet, diffusers keys); "
            f"this LoRA lacks {len(missing)} of them, e.g. {missing[0]}"
        )
    want = {n: weights[n] for n in layers}
    return want


def _backbone_of(path: Path) -> str:
    """The LoRA's backbone as the scanner tells it (shapes, names, then metadata)."""
    from lora_wise.lora.reader import read_lora

    return read_lora(path).backbone.name


def _declared_step(path: Path) -> int | None:
    import json

    from lora_wise.lora.safetensors_io import read_header

    raw = read_header(path).metadata.get("lora_wise")
    try:
        return int(json.loads(raw)["step"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


def _write_pair_grid(path: Path, recovered: np.ndarray, base: np.ndarray) -> Path:
    from PIL import Image

    gap = np.full((64, 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([*recovered, gap, *base], axis=1)).save(path)
    return path
