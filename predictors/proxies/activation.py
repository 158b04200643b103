"""Proxies of how an untrained network separates the inputs of one minibatch.

- `jacov` (Mellor et al., 2020 v1 "jacob_cov"): how uncorrelated the input Jacobians of the
  examples are.
- `nwot` (NASWOT, Mellor et al., ICML 2021): log-determinant of the Hamming-similarity kernel
  of the binary activation codes (which side of zero each rectifier input lies).
Both run the model in training mode (batch statistics), like the reference implementations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import register_proxy
from ._util import RECTIFIERS

#: The eigenvalue offset of the jacob_cov score (as published).
JACOV_K = 1e-5


@register_proxy("jacov")
def jacov(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
          loss_fn: Callable[..., Any]) -> float:
    """-sum(log(v + k) + 1/(v + k)) over the eigenvalues v of the correlation matrix of the
    per-example input Jacobians of the summed outputs (k = 1e-5).

    A Jacobian row that is constant (an example whose output does not depend on the input,
    e.g. a cell of `none` edges) has no correlation; it then counts as eigenvalue 0, the worst
    case, instead of the reference's NaN, so degenerate networks rank last and stay finite.
    """
    model.train()
    for p in model.parameters():  # only the input gradient is needed
        p.requires_grad_(False)
    x = inputs.detach().clone().requires_grad_(True)
    out = model(x)
    out.backward(torch.ones_like(out))
    jac = x.grad.detach().reshape(len(x), -1).double().cpu().numpy()
    worst = -len(x) * (math.log(JACOV_K) + 1.0 / JACOV_K)
    if not np.all(np.isfinite(jac)) or np.any(jac.std(axis=1) == 0):
        return worst
    corr = np.atleast_2d(np.corrcoef(jac))  # one example: the 1 x 1 matrix [1]
    values = np.clip(np.linalg.eigvalsh(corr), 0.0, None)
    return float(-np.sum(np.log(values + JACOV_K) + 1.0 / (values + JACOV_K)))


@register_proxy("nwot")
def nwot(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """NASWOT: log|K|, K[i, j] = number of rectifier units on which examples i and j have the
    same sign of input, over every rectifier module of the network (nn.ReLU and friends;
    activations applied functionally are not seen)."""
    model.train()
    n = len(inputs)
    kernel = torch.zeros((n, n), dtype=torch.float64, device=inputs.device)
    handles = []

    def on_forward(_module: nn.Module, inp: tuple[torch.Tensor, ...], _out: Any) -> None:
        # agreements = both on + both off = D - s_i - s_j + 2 c_i.c_j, with s = units on;
        # one float32 product of 0/1 codes is exact (counts < 2^24 per layer)
        codes = (inp[0].detach().reshape(n, -1) > 0).float()
        on = codes.sum(dim=1).double()
        both = (codes @ codes.t()).double()
        kernel.add_(codes.shape[1] - on[:, None] - on[None, :] + 2.0 * both)

    for module in model.modules():
        if isinstance(module, RECTIFIERS):
            handles.append(module.register_forward_hook(on_forward))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else 0.0
