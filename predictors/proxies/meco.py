"""MeCo (Jiang et al., NeurIPS 2023): the minimum eigenvalue of the Pearson correlation
matrix of each layer's feature map, summed over layers.

As the reference code (HamsterMimi/MeCo, `correlation/NAS_Bench_201.py`) does it: one
forward pass of a single example (the paper's batch size 1: the first example of the
minibatch), in the mode the model is in as built (training: BatchNorm on the example's own
statistics); every module's output is read by a forward hook; for a feature map of C
channels the C x C correlation matrix of the channels over the spatial positions is formed
(NaN and inf entries, from constant channels, set to 0) and its smallest eigenvalue kept;
the score is the sum over modules (NaN and inf terms dropped). The model is left as found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._state import kept_state


def min_correlation_eigenvalue(features: torch.Tensor) -> float:
    """The smallest eigenvalue of the correlation matrix of the rows of `features` (rows:
    channels, columns: positions), with undefined correlations (a constant row) as 0."""
    rows = features.reshape(features.shape[0], -1).double()
    if rows.shape[1] < 2:  # one position: every correlation undefined, the zero matrix
        return 0.0
    if rows.shape[0] == 1:  # one channel: the 1 x 1 matrix [1] (or [0] when constant)
        return float(rows.std() > 0)
    corr = torch.nan_to_num(torch.corrcoef(rows), nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.linalg.eigvalsh(corr)[0])  # symmetric: eigvalsh, ascending


@register_proxy("meco")
def meco(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """MeCo: sum over modules of the smallest eigenvalue of the channel correlation matrix of
    the module's output for one example (the minibatch's first)."""
    terms: list[float] = []

    def on_forward(_module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            terms.append(min_correlation_eigenvalue(out[0].detach()))

    handles = [m.register_forward_hook(on_forward) for m in model.modules()]
    try:
        with torch.no_grad(), kept_state(model):  # BatchNorm's running statistics put back
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    values = torch.tensor(terms, dtype=torch.float64)
    return float(values[torch.isfinite(values)].sum())
