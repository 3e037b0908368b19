"""The attention projections a UNet LoRA targets, with their real shapes, for the benchmark scripts.

One owner for the SD1.5 and SDXL layouts, so that the synthetic LoRAs of every ``bench_*.py`` script
have the shapes of real ones: name (canonical ``unet.<module>``) -> (out, in).
"""

from __future__ import annotations

PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

#: SD1.5 UNet attentions: (module prefix, channels); one transformer block each.
SD15_ATTENTIONS = (
    [(f"down_blocks.{b}.attentions.{a}", c) for b, c in enumerate((320, 640, 1280)) for a in range(2)]
    + [("mid_block.attentions.0", 1280)]
    + [(f"up_blocks.{b}.attentions.{a}", c) for b, c in ((1, 1280), (2, 640), (3, 320)) for a in range(3)]
)

#: SDXL UNet attentions: (module prefix, channels, transformer blocks).
SDXL_ATTENTIONS = (
    [(f"down_blocks.1.attentions.{a}", 640, 2) for a in range(2)]
    + [(f"down_blocks.2.attentions.{a}", 1280, 10) for a in range(2)]
    + [("mid_block.attentions.0", 1280, 10)]
    + [(f"up_blocks.0.attentions.{a}", 1280, 10) for a in range(3)]
    + [(f"up_blocks.1.attentions.{a}", 640, 2) for a in range(3)]
)


def _block(block: str, channels: int, cross_dim: int) -> dict[str, tuple[int, int]]:
    """attn1 (self) and attn2 (cross: k and v read the text encoder's width) of one transformer block."""
    return {
        f"unet.{block}.{attn}.{proj}": (
            channels,
            cross_dim if attn == "attn2" and proj in ("to_k", "to_v") else channels,
        )
        for attn in ("attn1", "attn2")
        for proj in PROJECTIONS
    }


def sd15_attention_shapes(cross_dim: int = 768) -> dict[str, tuple[int, int]]:
    """SD1.5's 128 LoRA-targeted attention projections (16 transformer blocks)."""
    shapes: dict[str, tuple[int, int]] = {}
    for prefix, c in SD15_ATTENTIONS:
        shapes |= _block(f"{prefix}.transformer_blocks.0", c, cross_dim)
    return shapes


def sdxl_attention_shapes(cross_dim: int = 2048) -> dict[str, tuple[int, int]]:
    """SDXL's 560 attention projections (70 transformer blocks)."""
    shapes: dict[str, tuple[int, int]] = {}
    for prefix, c, depth in SDXL_ATTENTIONS:
        for t in range(depth):
            shapes |= _block(f"{prefix}.transformer_blocks.{t}", c, cross_dim)
    return shapes
