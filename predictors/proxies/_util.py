"""Helpers shared by the proxy families (torch imported here)."""

from __future__ import annotations

import torch
from torch import nn

#: Layers whose weights the pruning-at-init proxies score (NASLib's convention: conv + linear).
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Piecewise-linear activations whose input sign is a "linear region" code (NASWOT).
RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.GELU, nn.SiLU,
              nn.Hardswish, nn.Mish, nn.ELU)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, WEIGHTED)]


def weight_param(layer: nn.Module) -> torch.Tensor:
    """The trainable weight of a layer: the original behind a `torch.nn.utils.parametrize`
    parametrization (e.g. fake quantization, whose `weight` is computed on every access)."""
    parametrizations = getattr(layer, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations["weight"].original
    return layer.weight


def grads_or_zeros(layers: list[nn.Module]) -> list[torch.Tensor]:
    """Each layer's weight gradient (zeros for a weight the loss does not reach)."""
    out = []
    for layer in layers:
        weight = weight_param(layer)
        out.append(weight.grad if weight.grad is not None else torch.zeros_like(weight))
    return out


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def gaussian_init(model: nn.Module) -> None:
    """Weights from N(0, 1), biases 0, BatchNorm affine at identity (Zen-NAS's and SWAP's
    initialisation before scoring)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                nn.init.normal_(weight_param(m))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, BATCHNORMS) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
