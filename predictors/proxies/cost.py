"""Cost proxies: parameter count and FLOPs of the built model (a strong baseline on NB201)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy


@register_proxy("params", data=False)
def params(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
           loss_fn: Callable[..., Any]) -> float:
    """Trainable parameters of the model."""
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


@register_proxy("flops", data=False)
def flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
          loss_fn: Callable[..., Any]) -> float:
    """Forward FLOPs for one example (torch's FlopCounterMode: 2 x MACs of conv/linear/matmul),
    the figure `SearchSpace.flops` computes analytically."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(inputs[:1])
    return float(counter.get_total_flops())
