"""Many LoRAs applied to one frozen UNet at once: batch row i uses LoRA ``index[i]`` of a bank.

The attack runs every shadow's (or victim's) fine-tuned UNet without copying the UNet: each targeted
Linear is wrapped by :class:`BankLoraLinear`, which holds the stacked factors of every LoRA of the
bank and adds ``scale * B[index[i]] A[index[i]] x`` to row i. LoRA 0 of a bank is all zeros, so row
i with index 0 is the base model: the attack, its baselines and the base model share one batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lora_wise.factory.train import swap_modules

Lora = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A (r, in), B (out, r))


class BankLoraLinear(torch.nn.Module):
    """A frozen Linear plus a bank of M LoRAs; ``index`` (batch,) picks each row's LoRA."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float, state: dict):
        super().__init__()
        self.base = base
        self.register_buffer("a", a, persistent=False)  # (M, r, in)
        self.register_buffer("b", b, persistent=False)  # (M, out, r)
        self.scale = scale
        self.state = state  # shared with the context manager: {"index": LongTensor (batch,)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.state["index"]
        xs = x.reshape(len(idx), -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(xs, self.a[idx].transpose(1, 2)), self.b[idx].transpose(1, 2))
        return self.base(x) + self.scale * delta.reshape(*x.shape[:-1], -1)


def stack_bank(loras: list[Lora]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Stack LoRAs (same layers and rank) into a bank whose entry 0 is the zero LoRA (the base model)."""
    out = {}
    for name in loras[0]:
        a = torch.stack([lo[name][0] for lo in loras])
        b = torch.stack([lo[name][1] for lo in loras])
        out[name] = (torch.cat([torch.zeros_like(a[:1]), a]), torch.cat([torch.zeros_like(b[:1]), b]))
    return out


@contextmanager
def bank_applied(unet: torch.nn.Module, loras: list[Lora], scale: float) -> Iterator[dict]:
    """Wrap the UNet's targeted Linears with the bank; yields the state whose ``index`` rows set.

    Bank entry 0 is the base model, entry j + 1 is ``loras[j]``. The UNet is restored on exit.
    """
    bank = stack_bank(loras)
    modules = dict(unet.named_modules())
    state: dict = {"index": torch.zeros(1, dtype=torch.long)}
    wrapped = {n: BankLoraLinear(modules[n], a, b, scale, state) for n, (a, b) in bank.items()}
    swap_modules(unet, wrapped)
    try:
        yield state
    finally:
        swap_modules(unet, {n: w.base for n, w in wrapped.items()})
