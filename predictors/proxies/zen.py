"""Zen-score (Lin et al., ICCV 2021): the expressivity of the pre-pooling feature map."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._util import BATCHNORMS, gaussian_init

#: Size of the input perturbation (the paper's alpha).
ZEN_ALPHA = 0.01
#: Floor inside the logarithms, so that a network whose output ignores its input stays finite.
_TINY = 1e-300


def _feature_module(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose input is the pre-GAP feature map: the last adaptive/global average
    pooling (input), else the last linear layer (its input, the pooled features)."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if pools:
        return pools[-1], True
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1], True
    return model, False


@register_proxy("zen", data=False)
def zen(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
        loss_fn: Callable[..., Any]) -> float:
    """log E|f(x) - f(x + alpha * eps)| + sum over BatchNorm layers of log sqrt(mean variance).

    Data-free: x and eps are standard Gaussian batches of the input's shape (torch's seeded
    generator); weights are re-drawn from N(0, 1) as the paper prescribes (so this proxy
    overwrites the model's weights); f is the feature map before global pooling; the model is
    in training mode. The BatchNorm rescaling uses each layer's batch variance on x (read by a
    hook), the quantity the paper defines; Zen-NAS's code reads `running_var` after a forward,
    which momentum blends with the initial 1. BatchNorm layers whose input is identically zero
    (behind a `none` edge) are skipped: they scale nothing that reaches the output.
    """
    gaussian_init(model)
    model.train()
    target, is_input = _feature_module(model)
    feats: list[torch.Tensor] = []
    log_bn: list[float] = []

    def on_feature(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        feats.append((inp[0] if is_input else out).detach())

    def on_bn(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        if len(feats) == 0:  # first pass only
            x = inp[0].detach()
            dims = [d for d in range(x.dim()) if d != 1]
            var = x.double().var(dim=dims, unbiased=False).mean().item()
            if var > 0:  # a BatchNorm fed zeros (a dead branch) rescales nothing
                log_bn.append(0.5 * math.log(var))

    handles = [target.register_forward_hook(on_feature)]
    handles += [m.register_forward_hook(on_bn) for m in model.modules()
                if isinstance(m, BATCHNORMS)]
    x = torch.randn(inputs.shape, dtype=inputs.dtype).to(inputs.device)  # the CPU's draws
    eps = torch.randn(inputs.shape, dtype=inputs.dtype).to(inputs.device)
    try:
        with torch.no_grad():
            model(x)
            model(x + ZEN_ALPHA * eps)
    finally:
        for handle in handles:
            handle.remove()
    a, b = feats[0], feats[-1]
    diff = (a - b).abs().double().reshape(len(a), -1).sum(dim=1).mean().item()
    return float(math.log(max(diff, _TINY)) + sum(log_bn))
