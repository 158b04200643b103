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
    if bool((rows == rows[:, :1]).all()):  # every row constant (a `none` edge's zeros): the
        return 0.0  # zero matrix, without forming it
    corr = torch.nan_to_num(torch.corrcoef(rows), nan=0.0, posinf=0.0, neginf=0.0)
    return float(torch.linalg.eigvalsh(corr)[0])  # symmetric: eigvalsh, ascending


@register_proxy("meco")
def meco(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """MeCo: sum over modules of the smallest eigenvalue of the channel correlation matrix of
    the module's output for one example (the minibatch's first)."""
    terms: list[float] = []
    # A module often returns a tensor another one returned already (a Sequential its last
    # layer's output, an Identity its input): its term is computed once (the same value).
    # Keyed by identity and version (an in-place op changes the version); the tensors are
    # kept alive so that no identity is reused within the pass.
    seen: dict[tuple[int, int], float] = {}
    alive: list[torch.Tensor] = []

    def on_forward(_module: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            key = (id(out), out._version)
            if key not in seen:
                seen[key] = min_correlation_eigenvalue(out[0].detach())
                alive.append(out)
            terms.append(seen[key])

    handles = [m.register_forward_hook(on_forward) for m in model.modules()]
    try:
        with torch.no_grad(), kept_state(model):  # BatchNorm's running statistics put back
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    values = torch.tensor(terms, dtype=torch.float64)
    return float(values[torch.isfinite(values)].sum())
