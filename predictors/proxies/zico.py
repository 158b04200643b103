"""ZiCo (Li et al., ICLR 2023): the inverse coefficient of variation of the weight gradients
over minibatches, log-summed over layers.

Per conv/linear layer l: sum over its weights of mean_b |g_b| / std_b(g_b) (the weights whose
gradient varies between minibatches), and the score is the sum over layers of the log of that
sum (layers whose sum is 0 left out), as `caculate_zico` of the reference code
(SLDGroup/ZiCo, `ZeroShotProxy/compute_zico.py`). The paper uses two minibatches; here the
one minibatch given is split into two halves, each scored with the loss in training mode.
The reference records `weight.grad` without zeroing it between batches (the second record is
the sum of both batches' gradients); we record each batch's own gradient, the quantity the
paper defines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_proxy
from ._state import kept_state
from ._util import clear_grads, grads_or_zeros, weighted_layers

#: Minibatches the paper's ZiCo uses (the given batch is split into this many parts).
ZICO_BATCHES = 2


def zico_of_gradients(per_batch: list[list[torch.Tensor]]) -> float:
    """ZiCo from per-batch gradients: `per_batch[b][l]` is layer l's gradient on batch b."""
    score = 0.0
    for layer in zip(*per_batch, strict=True):
        grads = torch.stack([g.reshape(-1) for g in layer]).double()
        std = grads.std(dim=0, unbiased=False)
        varying = std > 0
        ratio = (grads.abs().mean(dim=0)[varying] / std[varying]).sum().item()
        if ratio > 0:
            score += math.log(ratio)
    return score


@register_proxy("zico")
def zico(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """ZiCo: sum over layers of log(sum over weights of mean|grad| / std(grad)), gradients of
    the loss on two halves of the minibatch (0 for a batch of one)."""
    layers = weighted_layers(model)
    parts = min(ZICO_BATCHES, len(inputs))
    per_batch: list[list[torch.Tensor]] = []
    with kept_state(model):
        model.train()
        for x, y in zip(torch.tensor_split(inputs, parts), torch.tensor_split(targets, parts),
                        strict=True):
            clear_grads(model)
            loss = loss_fn(model(x), y)
            if loss.requires_grad:  # a model without parameters has no gradient
                loss.backward()
            per_batch.append([g.detach().clone() for g in grads_or_zeros(layers)])
    return zico_of_gradients(per_batch)
