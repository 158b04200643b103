"""SWAP-Score (Peng et al., ICLR 2024): the number of distinct sample-wise activation patterns.

As the reference code (pym1024/SWAP, `src/metrics/swap.py`, `correlation.py`): the outputs of
every `nn.ReLU` module fed a 4-D feature map, for a batch of 16 examples (the reference's
`input_samples`), are flattened and concatenated per example; each neuron's pattern is the
sign of its output over the 16 examples; the score is the number of distinct patterns,
averaged over re-initialisations of the weights (conv and linear N(0, 1), biases 0,
BatchNorm 1/0) in the model's mode as built (training): 8 draws, where the reference averages
32 (`repeats`), a quarter of its cost for a small loss of precision. The model's
own weights are put back afterwards. `swap_reg` multiplies by the paper's size regulariser
exp(-(P - mu)^2 / sigma), P in thousands of parameters (the reference's `count_parameters`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_group, register_proxy
from ._state import kept_state
from ._util import gaussian_init

GROUP = "swap"
#: Examples (`input_samples` of the reference code) and weight draws (reference: 32).
SWAP_SAMPLES = 16
SWAP_REPEATS = 8
#: The size regulariser's centre and width, in thousands of parameters. The paper sets them
#: per search space to steer the model size; we chose them without looking at any accuracy:
#: mu is the largest NAS-Bench-201 CIFAR-10 network (1,531 k parameters, all 3x3 convs), and
#: sigma = mu^2, so the factor falls from 1 there to exp(-0.91) = 0.40 at the smallest one.
SWAP_MU = 1531.0
SWAP_SIGMA = SWAP_MU ** 2


def pattern_keys(active: torch.Tensor) -> torch.Tensor:
    """Each neuron's pattern over at most 16 examples as an integer (bit i: example i is
    active): `active` is (examples x neurons) boolean."""
    bits = torch.pow(2, torch.arange(active.shape[0], dtype=torch.int64))
    return (active.to(torch.int64) * bits[:, None]).sum(dim=0)


def swap_score(model: nn.Module, inputs: torch.Tensor) -> float:
    """The mean SWAP count over `SWAP_REPEATS` Gaussian draws of the weights (restored after)."""
    x = inputs[:SWAP_SAMPLES]
    keys: list[torch.Tensor] = []

    def on_forward(_module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if inp and isinstance(inp[0], torch.Tensor) and inp[0].dim() == 4:
            keys.append(pattern_keys((out.detach() > 0).reshape(len(x), -1)))

    counts = []
    with kept_state(model):
        handles = [m.register_forward_hook(on_forward) for m in model.modules()
                   if isinstance(m, nn.ReLU)]
        try:
            for _ in range(SWAP_REPEATS):
                gaussian_init(model)
                keys.clear()
                with torch.no_grad():
                    model(x)
                distinct = torch.bincount(torch.cat(keys)).count_nonzero() if keys else 0
                counts.append(int(distinct))
        finally:
            for handle in handles:
                handle.remove()
    return float(statistics.fmean(counts))


def size_factor(model: nn.Module, mu: float = SWAP_MU, sigma: float = SWAP_SIGMA) -> float:
    """SWAP's regulariser exp(-(P - mu)^2 / sigma), P the parameters in thousands."""
    thousands = sum(p.numel() for p in model.parameters()) / 1e3
    return math.exp(-((thousands - mu) ** 2) / sigma)


def swap_scores(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                loss_fn: Callable[..., Any]) -> dict[str, float]:
    """swap and swap_reg from one set of draws (the `swap` group)."""
    score = swap_score(model, inputs)
    return {"swap": score, "swap_reg": score * size_factor(model)}


register_group(GROUP, swap_scores)


@register_proxy("swap", group=GROUP)
def swap(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """SWAP-Score: distinct sign patterns of ReLU outputs over 16 examples, mean of 8 draws."""
    return swap_score(model, inputs)


@register_proxy("swap_reg", group=GROUP)
def swap_reg(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             loss_fn: Callable[..., Any]) -> float:
    """Regularised SWAP-Score: swap x exp(-(kparams - mu)^2 / sigma) (model-size prior)."""
    return swap_score(model, inputs) * size_factor(model)
