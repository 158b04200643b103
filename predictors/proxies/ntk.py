"""TE-NAS's trainability (Chen et al., ICLR 2021): the condition number of the empirical
neural tangent kernel on one minibatch.

As `get_ntk_n` of the reference code (VITA-Group/TENAS, `lib/procedures/ntk.py`), in training
mode (TE-NAS calls it with `train_mode=True`): for each example i, the gradient of the sum of
its logits with respect to every parameter whose name contains "weight" (conv, linear and
BatchNorm scales) is one row of J; the NTK is J J^T and its condition number is the largest
eigenvalue over the smallest. A small condition number means trainable, so the registered
score is its negation (larger is better); `combine.transform` compares it by -log(-x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._state import kept_state

#: The condition number given to a kernel that is singular (the smallest eigenvalue is not
#: positive, e.g. a network whose output ignores its input), instead of inf.
WORST_CONDITION = 1e30


def ntk_condition_number(model: nn.Module, inputs: torch.Tensor) -> float:
    """lambda_max / lambda_min of the per-example weight-gradient kernel (training mode)."""
    weights = [p for name, p in model.named_parameters() if "weight" in name and p.requires_grad]
    if not weights:
        raise ValueError("TE-NAS NTK needs a model with weights")
    rows = []
    with kept_state(model):
        model.train()
        logits = model(inputs)
        for i in range(len(inputs)):
            grads = torch.autograd.grad(logits[i].sum(), weights, retain_graph=True,
                                        allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(w)).reshape(-1)
                                   for g, w in zip(grads, weights, strict=True)]))
    jac = torch.stack(rows).double()
    eig = torch.linalg.eigvalsh(jac @ jac.t())  # ascending
    largest, smallest = float(eig[-1]), float(eig[0])
    if not smallest > 0 or largest / smallest > WORST_CONDITION:
        return WORST_CONDITION
    return largest / smallest


@register_proxy("te_ntk")
def te_ntk(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
           loss_fn: Callable[..., Any]) -> float:
    """TE-NAS NTK: minus the condition number of the empirical NTK of the summed logits."""
    return -ntk_condition_number(model, inputs)
