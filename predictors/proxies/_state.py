"""Leaving a model as it was found: proxies that re-initialise weights (SWAP, AZ-NAS) or
switch the mode restore the parameters, buffers, train/eval mode and gradients afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def kept_state(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body on `model`, then put back its state dict (parameters and buffers, e.g.
    BatchNorm running statistics), each module's training flag and the gradients."""
    # The tensors themselves, not `state_dict()`/`load_state_dict()` (the same values, a
    # fraction of their Python cost: MeCo pays this on every cell).
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    modes = {m: m.training for m in model.modules()}
    grads = {p: (None if p.grad is None else p.grad.detach().clone())
             for p in model.parameters()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved, strict=True):
                if tensor.dtype == value.dtype and tensor.shape == value.shape:
                    tensor.copy_(value)
                else:  # the body changed its dtype (e.g. `.double()`): put the tensor back
                    tensor.data = value
        for module, training in modes.items():
            module.training = training
        for p, grad in grads.items():
            p.grad = grad
