"""TE-NAS's expressivity (Chen et al., ICLR 2021), the second measure of As-ViT's topology
search: the number of linear regions an untrained network cuts its input into.

As TE-NAS's `LinearRegionCount` (VITA-Group/TENAS, `lib/procedures/linear_region_counter.py`):
every input sample gets the binary code of which rectifier units are on (input > 0) over the
whole network, and the count is the number of distinct codes among the samples. Which samples:
TE-NAS feeds 3,000 tiny 1 x 3 x 3 crops so that the count does not saturate at the number of
samples. A network here takes the full-size input (a ViT's patch embedding needs it), so the
samples are instead a G x G grid on the 2-D plane through three examples of the minibatch
(x0 + a (x1 - x0) + b (x2 - x0), a, b in [-1, 2]; with fewer examples, seeded random
directions of the same norm): the count of regions that the plane crosses at grid resolution,
the 2-D-slice estimate of Hanin & Rolnick (ICML 2019). It grows with expressivity and stays
below G^2. Rectifiers are the modules of `RECTIFIERS` (ReLU and GELU alike: GELU's input sign
is its soft gate); the model runs in training mode on the whole grid as one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._state import kept_state
from ._util import RECTIFIERS

#: Grid points per side: G^2 = 256 samples, the upper bound of the count.
GRID = 16
#: The plane's coordinates run over [LOW, HIGH] in units of (x1 - x0) and (x2 - x0).
LOW, HIGH = -1.0, 2.0


def plane_grid(inputs: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """grid^2 inputs on the plane through the first three examples (random directions of the
    first example's norm when the batch has fewer; torch's generator, seeded by the caller)."""
    x0 = inputs[0]
    directions = [inputs[i] - x0 for i in (1, 2) if i < len(inputs)]
    while len(directions) < 2:
        noise = torch.randn_like(x0)
        scale = x0.norm() / noise.norm().clamp_min(1e-12) if x0.norm() > 0 else 1.0
        directions.append(noise * scale)
    steps = torch.linspace(LOW, HIGH, grid, dtype=inputs.dtype)
    a, b = torch.meshgrid(steps, steps, indexing="ij")
    shape = (-1,) + (1,) * x0.dim()
    return (x0 + a.reshape(shape) * directions[0] + b.reshape(shape) * directions[1]).detach()


def count_linear_regions(model: nn.Module, samples: torch.Tensor) -> int:
    """The number of distinct rectifier on/off codes among `samples` (one forward pass)."""
    n = len(samples)
    labels = torch.zeros(n, dtype=torch.long)
    handles = []

    def on_forward(_module: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        # refine the partition of the samples by this layer's codes (no need to keep them)
        nonlocal labels
        codes = inp[0].detach().reshape(n, -1) > 0
        _, layer = torch.unique(codes, dim=0, return_inverse=True)
        pairs = torch.stack([labels, layer.reshape(-1)], dim=1)
        _, labels = torch.unique(pairs, dim=0, return_inverse=True)
        labels = labels.reshape(-1)

    for module in model.modules():
        if isinstance(module, RECTIFIERS):
            handles.append(module.register_forward_hook(on_forward))
    try:
        with torch.no_grad():
            model(samples)
    finally:
        for handle in handles:
            handle.remove()
    return int(labels.max()) + 1 if n else 0


@register_proxy("linear_regions")
def linear_regions(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   loss_fn: Callable[..., Any]) -> float:
    """TE-NAS's number of linear regions: distinct rectifier codes on a 16 x 16 grid of the
    plane through three examples (1 for a network without rectifiers)."""
    with kept_state(model):
        model.train()
        return float(count_linear_regions(model, plane_grid(inputs)))
