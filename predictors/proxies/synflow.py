"""SynFlow (Tanaka et al., NeurIPS 2020) as a network score (Abdelfattah et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._util import clear_grads, grads_or_zeros, weight_param, weighted_layers


@register_proxy("synflow", data=False)
def synflow(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
            loss_fn: Callable[..., Any]) -> float:
    """Sum of |w * dR/dw| with R = sum of the outputs for an all-ones input, absolute weights.

    Data-free: only the input's shape is used (one all-ones example). As the definition
    requires, every parameter is made non-negative (signs restored afterwards) and the pass
    runs in float64, because the product of absolute weights over 17+ layers overflows float32.
    BatchNorm: the model runs in eval mode, so a freshly built network's BatchNorm layers
    (running mean 0, variance 1, affine 1/0) are the identity up to 1/sqrt(1 + eps) -- the
    equivalent of NASLib building the network without BatchNorm (`bn=False`); batch statistics
    of a single constant input would be meaningless.
    """
    first = next(model.parameters(), None)
    if first is None:  # no weight: the sum over none
        return 0.0
    was_training = model.training
    dtype = first.dtype
    model.eval().double()
    signs = []
    with torch.no_grad():
        for p in model.parameters():
            signs.append(torch.sign(p))
            p.abs_()
    try:
        clear_grads(model)
        x = torch.ones((1, *inputs.shape[1:]), dtype=torch.float64, device=first.device)
        torch.sum(model(x)).backward()
        layers = weighted_layers(model)
        score = sum((weight_param(m).detach() * g).abs().sum().item()
                    for m, g in zip(layers, grads_or_zeros(layers), strict=True))
    finally:
        with torch.no_grad():
            for p, s in zip(model.parameters(), signs, strict=True):
                p.mul_(s)
        model.to(dtype).train(was_training)
    return float(score)
