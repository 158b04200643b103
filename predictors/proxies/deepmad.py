"""DeepMAD's entropy (MAE-NAS, Sun et al., ICML 2022; DeepMAD, Shen et al., ICML 2023),
measured on a built network: the multi-scale entropy of its feature maps at initialisation.

The `deepmad` strategy computes the same quantity analytically from a structure
(`nas.strategies.deepmad`); this proxy measures it on any network: weights from N(0, 1),
BatchNorm removed (an identity, MAE-NAS's setting), a standard Gaussian input, float64 (the
log-std grows by about log sqrt(c k^2) per layer), and the log-std of the signal read where
the network downsamples (the input of each stride > 1 layer, once per resolution) and at the
final feature map (the input of the last global pooling, else of the last linear layer).
Score: sum_s alpha_s log(c_s r_s^2) log std_s, alpha 1 but 8 for the last (the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._util import BATCHNORMS, WEIGHTED, gaussian_init

#: alpha of the last stage (the paper's (1, 1, 1, 1, 8)).
LAST_STAGE_WEIGHT = 8.0
#: Floor of a standard deviation (a network whose output ignores its input stays finite).
_TINY = 1e-300
_POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.AvgPool1d, nn.MaxPool1d)


def _strided(module: nn.Module) -> bool:
    stride = getattr(module, "stride", 1)
    stride = stride if isinstance(stride, tuple | list) else (stride,)
    return isinstance(module, WEIGHTED + _POOLS) and any(int(s) > 1 for s in stride if s)


def _final_module(model: nn.Module) -> nn.Module | None:
    """The module whose input is the final feature map: the last adaptive average pooling,
    else the last linear layer."""
    for kinds in ((nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d), (nn.Linear,)):
        found = [m for m in model.modules() if isinstance(m, kinds)]
        if found:
            return found[-1]
    return None


def _reading(x: torch.Tensor) -> tuple[int, int, float]:
    """(channels, side, log std) of a feature batch (side: sqrt of the spatial size)."""
    channels = x.shape[1] if x.dim() > 1 else 1
    spatial = math.prod(x.shape[2:]) if x.dim() > 2 else 1
    std = float(x.double().std(unbiased=False)) if x.numel() > 1 else abs(float(x.double()))
    return channels, round(math.sqrt(spatial)), math.log(max(std, _TINY))


def multiscale_entropy(readings: list[tuple[int, int, float]],
                       last_weight: float = LAST_STAGE_WEIGHT) -> float:
    """sum_s alpha_s log(c_s r_s^2) log std_s over (channels, side, log std) stage ends."""
    total = 0.0
    for i, (channels, side, log_std) in enumerate(readings):
        alpha = last_weight if i == len(readings) - 1 else 1.0
        total += alpha * math.log(channels * side ** 2) * log_std
    return total


@register_proxy("deepmad_entropy", data=False)
def deepmad_entropy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: Callable[..., Any]) -> float:
    """DeepMAD / MAE-NAS multi-scale entropy: log(c r^2) x log-std at each downsampling and
    (x8) at the final feature map of the BN-free N(0, 1) network on Gaussian inputs.

    Data-free (the input's shape only). Overwrites the weights (N(0, 1)) like Zen-score;
    runs in float64 and casts the model back to its dtype afterwards.
    """
    final = _final_module(model)
    if final is None:
        raise ValueError("deepmad_entropy needs a final feature map (a global pooling or a "
                         "linear layer)")
    dtype = next((p.dtype for p in model.parameters()), inputs.dtype)
    gaussian_init(model)
    model.eval()
    by_side: dict[int, tuple[int, int, float]] = {}
    last: list[tuple[int, int, float]] = []

    def on_strided(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        reading = _reading(inp[0])
        by_side.setdefault(reading[1], reading)

    def on_final(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        last[:] = [_reading(inp[0])]

    def skip_norm(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> torch.Tensor:
        return inp[0]

    handles = [final.register_forward_pre_hook(on_final)]
    handles += [m.register_forward_pre_hook(on_strided) for m in model.modules()
                if _strided(m)]
    handles += [m.register_forward_hook(skip_norm) for m in model.modules()
                if isinstance(m, BATCHNORMS)]
    try:
        model.double()
        with torch.no_grad():
            model(torch.randn(inputs.shape, dtype=torch.float64))
    finally:
        for handle in handles:
            handle.remove()
        model.to(dtype)
    readings = [r for side, r in by_side.items() if not last or side != last[0][1]] + last
    return float(multiscale_entropy(readings))
