"""The attack's encoder: a LoRA's weights (and its fine-tuning step) -> the UNet's conditioning.

Every LoRA matrix (A of each layer, and B transposed, both rank-major) is one token: a small Conv1d
network shared by all matrices reads its r rows as r channels along the layer width (zero-padded to
the widest layer), pools, and adds the log of the matrix's RMS (the tokens see shape, not scale)
and a learned embedding of the matrix's position. A task token, an embedding of the fine-tuning STEP
and 77 learned query tokens join them; a small transformer encoder maps the sequence, and the query
tokens' outputs become the conditioning (77 x the text encoder's width). ``use_step=False`` is the
ablation without the step embedding.

Saved as safetensors with the configuration in the header (``save_encoder``/``load_encoder``);
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lora_wise.leak.apply import Lora

HEADER_KEY = "lora_wise_leak"


@dataclass(frozen=True)
class EncoderConfig:
    layers: tuple[str, ...]  # module names, in the order the tokens are read
    rank: int
    max_width: int
    tokens: int = 77
    cond_width: int = 32
    hidden: int = 64
    depth: int = 2
    heads: int = 4
    use_step: bool = True

    @classmethod
    def from_lora(cls, lora: Lora, cond_width: int, **kw) -> EncoderConfig:
        widths = [max(a.shape[1], b.shape[0]) for a, b in lora.values()]
        rank = next(iter(lora.values()))[0].shape[0]
        return cls(tuple(lora), rank, max(widths), cond_width=cond_width, **kw)


class LoraEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.conv = nn.Sequential(
            nn.Conv1d(cfg.rank, h, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(h, h, 5, stride=2, padding=2),
            nn.GELU(),
        )
        self.scale_in = nn.Linear(1, h)
        self.position = nn.Parameter(torch.randn(2 * len(cfg.layers), h) * 0.02)
        self.task = nn.Parameter(torch.randn(1, h) * 0.02)
        self.step_mlp = nn.Sequential(nn.Linear(16, h), nn.GELU(), nn.Linear(h, h))
        self.queries = nn.Parameter(torch.randn(cfg.tokens, h) * 0.02)
        layer = nn.TransformerEncoderLayer(
            h, cfg.heads, 2 * h, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, cfg.cond_width))

    def matrices(self, loras: list[Lora]) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, 2L, r, width) rows normalised to unit RMS, and (batch, 2L, 1) log RMS."""
        mats = []
        for lora in loras:
            per = []
            for name in self.cfg.layers:
                a, b = lora[name]
                for m in (a, b.T):
                    per.append(nn.functional.pad(m, (0, self.cfg.max_width - m.shape[1])))
            mats.append(torch.stack(per))
        x = torch.stack(mats).float()
        rms = x.pow(2).mean((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        return x / rms, rms.log().squeeze(-1)

    def forward(self, loras: list[Lora], steps: torch.Tensor) -> torch.Tensor:
        return self.from_matrices(*self.matrices(loras), steps)

    def from_matrices(self, x: torch.Tensor, log_rms: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The conditioning (batch, 77, width) from :meth:`matrices`' output (precomputed in training)."""
        bsz, n, r, w = x.shape
        tok = self.conv(x.reshape(bsz * n, r, w)).mean(-1).reshape(bsz, n, -1)
        tok = tok + self.scale_in(log_rms / 10.0) + self.position
        extra = [self.task.expand(bsz, -1, -1)]
        if self.cfg.use_step:
            extra.append(self.step_mlp(step_features(steps)).unsqueeze(1))
        seq = torch.cat([*extra, tok, self.queries.expand(bsz, -1, -1)], dim=1)
        return self.out(self.transformer(seq)[:, -self.cfg.tokens :])


def step_features(steps: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features of the fine-tuning step (periods 2 to ~20000 steps)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(8) / 8) * math.pi
    angle = steps.float().unsqueeze(-1) * freqs
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def save_encoder(model: LoraEncoder, path: Path, info: dict) -> Path:
    """The weights as safetensors; the configuration and ``info`` as JSON in the header."""
    from safetensors.torch import save_file

    header = {"config": asdict(model.cfg), **info}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={HEADER_KEY: json.dumps(header)})
    tmp.replace(path)
    return path


def load_encoder(path: Path) -> tuple[LoraEncoder, dict]:
    """An encoder saved by :func:`save_encoder`, and its header (config, backbone, training info)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lora_wise.errors import InvalidLoraFile

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(HEADER_KEY)
    if raw is None:
        raise InvalidLoraFile(f"{path}: not a lora-wise leak attack (no {HEADER_KEY} header)")
    header = json.loads(raw)
    cfg = dict(header["config"])
    cfg["layers"] = tuple(cfg["layers"])
    model = LoraEncoder(EncoderConfig(**cfg))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), header
