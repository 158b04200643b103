"""TE-NAS's expressivity (Chen et al., ICLR 2021), the second measure of As-ViT's topology
search: the number of linear regions an untrained network cuts its input into.

TE-NAS (VITA-Group/TENAS, `lib/procedures/linear_region_counter.py`) gives every input sample
the binary code of which rectifier units are on and counts the distinct codes among 3,000
tiny 1 x 3 x 3 crops, so that the count does not saturate at the number of samples. Networks
here take full-size inputs (a ViT's patch embedding needs them), where every sample has its
own code (measured: 256 of 256 on a grid through CIFAR images, NB201 and ViT alike), so the
count is taken along segments instead, as Hanin & Rolnick (ICML 2019) count regions on a
line: the number of regions a segment crosses is 1 plus the number of unit boundaries it
crosses, i.e. 1 plus the sum over consecutive points of a fine grid of the Hamming distance of
their codes. The segments join consecutive examples of the minibatch (x0 -> x1 -> x2; with one
example, x0 to x0 plus a seeded random direction of its norm), `POINTS` points each, and the
score is the mean count per segment. Rectifiers are the modules of `RECTIFIERS` (ReLU and GELU
alike: GELU's input sign is its soft gate); the model runs in eval mode, so that no sample's
code depends on the others through BatchNorm's batch statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._state import kept_state
from ._util import RECTIFIERS

#: Points per segment, and segments (between consecutive examples) per score.
POINTS = 32
SEGMENTS = 2


def segments(inputs: torch.Tensor, points: int = POINTS,
             count: int = SEGMENTS) -> torch.Tensor:
    """`count` x `points` inputs: evenly spaced points of the segments x_i -> x_{i+1} (random
    directions of x0's norm when the batch is too small; torch's generator, seeded by the
    caller), segment after segment."""
    ends = [inputs[i] for i in range(min(len(inputs), count + 1))]
    while len(ends) < count + 1:
        noise = torch.randn_like(inputs[0])
        norm = inputs[0].norm()
        ends.append(inputs[0] + (noise * norm / noise.norm().clamp_min(1e-12) if norm > 0
                                 else noise))
    t = torch.linspace(0.0, 1.0, points, dtype=inputs.dtype).reshape((-1,) + (1,) * ends[0].dim())
    return torch.cat([a + t * (b - a) for a, b in zip(ends, ends[1:], strict=False)]).detach()


def count_linear_regions(model: nn.Module, samples: torch.Tensor, points: int = POINTS) -> float:
    """Mean over the segments of `samples` (consecutive runs of `points`) of 1 + the number of
    rectifier sign changes between consecutive points (one forward pass)."""
    n = len(samples)
    flips = torch.zeros((), dtype=torch.float64)
    handles = []

    def on_forward(_module: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        codes = (inp[0].detach().reshape(n // points, points, -1) > 0)
        flips.add_((codes[:, 1:] != codes[:, :-1]).sum().double())

    for module in model.modules():
        if isinstance(module, RECTIFIERS):
            handles.append(module.register_forward_hook(on_forward))
    try:
        with torch.no_grad():
            model(samples)
    finally:
        for handle in handles:
            handle.remove()
    return 1.0 + float(flips) / max(n // points, 1)


@register_proxy("linear_regions")
def linear_regions(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   loss_fn: Callable[..., Any]) -> float:
    """TE-NAS's number of linear regions, counted along segments between examples (1 + unit
    boundaries crossed, mean per segment; 1 for a network without rectifiers)."""
    with kept_state(model):
        model.eval()
        return count_linear_regions(model, segments(inputs))
