"""Synthetic spectra tables and real factory folders for the estimator, bank and evaluation tests.

The synthetic model follows what the CPU pilot measured (REFERENCE §9): per layer, the scale
of B·A falls with the dataset size as a power law, each concept (micro-dataset) has its own
overall level and a per-layer wobble (the confounder), every singular value has noise, and
the scale grows with the training step. A (the down matrix) barely depends on size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from reader_helpers import tiny_unet

from lora_wise.spectra.table import SpectraTable

SIZES_MEDIUM = (1, 10, 20, 30, 40, 50)


def sd15_layer_names() -> list[str]:
    """The 128 attention projections of an SD1.5-shaped UNet, as canonical names."""
    blocks = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
    blocks += ["mid_block.attentions.0"]
    blocks += [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
    projections = ("to_q", "to_k", "to_v", "to_out.0")
    return [
        f"unet.{blk}.transformer_blocks.0.{attn}.{p}"
        for blk in blocks
        for attn in ("attn1", "attn2")
        for p in projections
    ]


def synthetic_table(
    n_micro: int = 50,
    sizes: tuple[int, ...] = SIZES_MEDIUM,
    n_layers: int = 128,
    rank: int = 8,
    noise: float = 0.05,
    concept_noise: float = 0.1,
    steps: tuple[int, ...] = (1200,),
    size_effect: float = 0.3,
    step_effect: float = 0.5,
    seed: int = 0,
    backbone: str = "tiny-sd",
    layer_seed: int = 1234,
) -> SpectraTable:
    """N = n_micro × len(sizes) × len(steps) models.

    ``layer_seed`` fixes the per-layer structure (the "backbone"): tables made with the same
    ``layer_seed`` and different ``seed`` are new concepts of the same kind of model.
    """
    names = sd15_layer_names()
    layers = names[:n_layers] if n_layers <= len(names) else [f"unet.layer.{i}" for i in range(n_layers)]
    structure = np.random.default_rng(layer_seed)
    decay = 0.75 ** np.arange(rank)
    base = np.exp(structure.normal(0.0, 0.5, (n_layers, 1))) * decay[None]  # (L, r)
    a_base = np.exp(structure.normal(0.0, 0.2, (n_layers, 1))) * (0.9 ** np.arange(rank))[None]
    beta = size_effect * (0.5 + structure.random(n_layers))  # per-layer slope of the power law
    rng = np.random.default_rng(seed)
    level = rng.normal(0.0, concept_noise, n_micro)
    wobble = rng.normal(0.0, concept_noise / 2, (n_micro, n_layers))
    rows = {k: [] for k in ("a", "b", "ba", "size", "micro", "step", "id")}
    for c in range(n_micro):
        for n in sizes:
            for step in steps:
                log_scale = -beta * np.log(n) + level[c] + wobble[c] + step_effect * np.log(step / max(steps))
                ba = base * np.exp(log_scale)[:, None] * np.exp(rng.normal(0.0, noise, (n_layers, rank)))
                b = (
                    np.sqrt(base)
                    * np.exp(0.6 * log_scale)[:, None]
                    * np.exp(rng.normal(0.0, noise, (n_layers, rank)))
                )
                a = (
                    a_base
                    * np.exp(-0.05 * beta * np.log(n))[:, None]
                    * np.exp(rng.normal(0.0, noise, (n_layers, rank)))
                )
                for key, val in (("a", a), ("b", b), ("ba", ba)):
                    rows[key].append(-np.sort(-val, axis=1))
                rows["size"].append(n)
                rows["micro"].append(f"concept-{seed}-{c:03d}")
                rows["step"].append(step)
                rows["id"].append(f"concept-{seed}-{c:03d}/n{n:04d}/step-{step:05d}")
    ba = np.stack(rows["ba"])
    return SpectraTable(
        layers=layers,
        a=np.stack(rows["a"]),
        b=np.stack(rows["b"]),
        ba=ba,
        fro=np.sqrt((ba**2).sum(axis=2)),
        size=np.array(rows["size"], dtype=np.int64),
        micro_dataset=np.array(rows["micro"]),
        step=np.array(rows["step"], dtype=np.int64),
        rank=np.full(len(rows["size"]), rank, dtype=np.int64),
        backbone=np.array([backbone] * len(rows["size"])),
        model_id=np.array(rows["id"]),
    )


def write_factory_folder(
    out: Path,
    concepts: int = 4,
    sizes: tuple[int, ...] = (1, 10, 20),
    steps: tuple[int, ...] = (100, 200),
    rank: int = 4,
) -> list[Path]:
    """A factory output folder written the way the trainer writes it: a PEFT LoRA on a real
    diffusers UNet, its PEFT state dict saved by safetensors with the sidecar JSON in the header
    and beside it (keys ``unet.<module>.lora_A.weight``). LoRA B is set so that its scale falls
    with size.
    """
    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    from lora_wise.factory.jobs import TrainJob

    unet = tiny_unet()
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    written = []
    for c in range(concepts):
        for n in sizes:
            job = TrainJob(
                "tiny-sd", "medium", n, f"pool:concept-{c}", rank=rank, steps=max(steps), snapshot_every=100
            )
            folder = out / job.job_id
            folder.mkdir(parents=True, exist_ok=True)
            for step in steps:
                gen = torch.Generator().manual_seed(hash((c, n, step)) % 2**31)
                with torch.no_grad():
                    for name, p in unet.named_parameters():
                        if "lora_" in name:
                            scale = (step / 100) * n**-0.4 * (1 + 0.1 * c)
                            p.copy_(
                                torch.randn(p.shape, generator=gen)
                                * (0.1 if "lora_A" in name else 0.01 * scale)
                            )
                state = get_peft_model_state_dict(unet)  # what diffusers' save_lora_weights stores
                state = {f"unet.{k}": v.contiguous() for k, v in state.items()}
                sidecar = {
                    "model_id": job.job_id,
                    "job": job.to_dict(),
                    "step": step,
                    "dataset_size": n,
                    "micro_dataset": job.micro_dataset,
                    "image_ids": list(range(n)),
                    "backbone": "tiny-sd",
                    "rank": rank,
                    "alpha": rank,
                    "recipe": {"lr": 1e-4},
                }
                path = folder / f"step-{step:05d}.safetensors"
                save_file(state, str(path), metadata={"lora_wise": json.dumps(sidecar)})
                (folder / f"step-{step:05d}.json").write_text(json.dumps(sidecar))
                written.append(path)
            (folder / "done.json").write_text("{}")
    return written
