"""Pruning-at-initialisation saliencies summed over a network (Abdelfattah et al., ICLR 2021).

Each uses one real minibatch, the cross-entropy loss (or the caller's `loss_fn`) and the
model in training mode (BatchNorm on batch statistics), and sums a per-weight saliency over
the weights of every convolution and linear layer, as NASLib's zero-cost implementations do.
grad_norm, snip and fisher need the same backward pass: `loss_saliencies` computes the three
at once (the `loss_gradient` group), and each registered proxy is its one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_group, register_proxy
from ._util import clear_grads, grads_or_zeros, weight_param, weighted_layers

GROUP = "loss_gradient"


def loss_saliencies(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: Callable[..., Any]) -> dict[str, float]:
    """grad_norm, snip and fisher from one forward/backward pass of the loss.

    - grad_norm: sum over layers of the L2 norm of dL/dw.
    - snip (Lee et al., 2019): sum of |w * dL/dw| (the gradient of the loss by a weight mask).
    - fisher (Theis et al., 2018; Turner et al., 2020): per output channel of every conv and
      linear layer, 0.5 * mean over the batch of (sum over positions of activation x its
      gradient)^2; as in NASLib (whose channel saliency is broadcast to every weight of the
      channel before the network sum) each channel counts once per weight feeding it
      (c_in x kernel area), then everything is summed.
    """
    model.train()
    clear_grads(model)
    fisher = torch.zeros((), dtype=torch.float64, device=inputs.device)

    def on_forward(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if not out.requires_grad:
            return
        act = out.detach()
        fan_in = weight_param(module)[0].numel()

        def on_grad(grad: torch.Tensor) -> None:
            nonlocal fisher
            prod = act * grad
            g_nk = prod.sum(dim=tuple(range(2, prod.dim()))) if prod.dim() > 2 else prod
            fisher = fisher + 0.5 * fan_in * g_nk.pow(2).mean(0).sum().double()

        out.register_hook(on_grad)

    layers = weighted_layers(model)
    handles = [layer.register_forward_hook(on_forward) for layer in layers]
    try:
        loss = loss_fn(model(inputs), targets)
        if loss.requires_grad:  # a model without parameters: every saliency is an empty sum
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = grads_or_zeros(layers)
    norm = sum(g.norm().item() for g in grads)
    snip = sum((weight_param(m).detach() * g).abs().sum().item() for m, g in zip(layers, grads,
                                                                          strict=True))
    return {"grad_norm": float(norm), "snip": float(snip), "fisher": float(fisher)}


register_group(GROUP, loss_saliencies)


@register_proxy("grad_norm", group=GROUP)
def grad_norm(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              loss_fn: Callable[..., Any]) -> float:
    """Sum over layers of the L2 norm of the loss gradient of the layer's weight."""
    return loss_saliencies(model, inputs, targets, loss_fn)["grad_norm"]


@register_proxy("snip", group=GROUP)
def snip(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
         loss_fn: Callable[..., Any]) -> float:
    """SNIP (Lee et al., 2019): sum of |w * dL/dw| over conv and linear weights."""
    return loss_saliencies(model, inputs, targets, loss_fn)["snip"]


@register_proxy("fisher", group=GROUP)
def fisher(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
           loss_fn: Callable[..., Any]) -> float:
    """Fisher: channel saliency 0.5 * E[(sum activation x gradient)^2] x fan-in, summed."""
    return loss_saliencies(model, inputs, targets, loss_fn)["fisher"]


@register_proxy("grasp")
def grasp(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
          loss_fn: Callable[..., Any]) -> float:
    """GraSP (Wang et al., 2020): sum of -w * (H g), a Hessian-gradient product by double
    backward (temperature 1, one minibatch, NASLib's sign: larger is better)."""
    model.train()
    clear_grads(model)
    layers = weighted_layers(model)
    weights = [weight_param(m) for m in layers]
    if not weights:  # the sum over no weight
        return 0.0
    loss = loss_fn(model(inputs), targets)
    g = torch.autograd.grad(loss, weights, allow_unused=True)
    g = [x.detach() if x is not None else torch.zeros_like(w) for x, w in zip(g, weights,
                                                                             strict=True)]
    loss = loss_fn(model(inputs), targets)
    g_graph = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    z = sum((a * b).sum() for a, b in zip(g, g_graph, strict=True) if b is not None)
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        return 0.0
    z.backward()
    hg = grads_or_zeros(layers)
    return float(sum((-w.detach() * h).sum().item() for w, h in zip(weights, hg, strict=True)))
