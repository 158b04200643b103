"""AZ-NAS (Lee & Ham, CVPR 2024): four training-free views of a network, combined by ranks.

As the reference code (cvlab-yonsei/AZ-NAS, `NATSBench/ZeroShotProxy/compute_az_nas_score.py`
with `custom/tss_model.py`, its NAS-Bench-201 setting): weights re-drawn by Kaiming normal
(fan-in, ReLU gain; biases 0, normalisation 1/0; put back afterwards), training mode, a
standard Gaussian input batch of 64 (data-free: only the minibatch's example shape is used);
the block features are the trunk's input (the stem's output) and the output of each of its
blocks (the trunk: the model's longest `nn.Sequential`, the NB201 cells and reductions), 4-D
feature maps only.

- expressivity: per block feature, the entropy of the normalised eigenvalues of the channel
  covariance over all examples and positions; summed over blocks;
- progressivity: the smallest increase of that entropy from one block to the next;
- trainability: per consecutive pair of blocks, a random +-1 gradient g_out at the output
  is back-propagated to the input (g_in; pixel-unshuffled to the output's size across a
  reduction) and s = the largest singular value of g_in^T g_out / (b h w) scores
  2 - s - 1/s (best at s = 1, a block preserving the gradient's norm); mean over pairs;
- complexity: FLOPs (the registered `flops` proxy).

The reference's -inf terms (a block whose input gradient equals its output gradient, i.e.
an identity block; an undefined entropy) are kept finite here: `IDENTITY_BLOCK` and 0.

The paper combines the four by ranks within the population, sum of log(rank / N)
(`predictors.combine.log_rank_sum`); `az_nas`, for one architecture alone, places each
component in its NAS-Bench-201 reference quantiles instead (`combine.az_nas_score`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._base import register_group, register_proxy
from ._state import kept_state
from ._util import WEIGHTED, weight_param

GROUP = "az_nas"
#: The Gaussian batch the reference scores NAS-Bench-201 cells with (its loader's batch size).
AZ_BATCH = 64
COMPONENTS = ("az_expressivity", "az_progressivity", "az_trainability")
#: A block's trainability term when it passes the gradient unchanged (the reference: -inf).
IDENTITY_BLOCK = -1e6


def _kaiming_init(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                nn.init.kaiming_normal_(weight_param(m), mode="fan_in", nonlinearity="relu")
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                                nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _trunk(model: nn.Module) -> nn.Sequential | None:
    """The model's longest `nn.Sequential` (the first of the longest), the chain of blocks."""
    best = None
    for m in model.modules():
        if isinstance(m, nn.Sequential) and len(m) >= 2 and (best is None or len(m) > len(best)):
            best = m
    return best


def block_features(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The trunk's input and each of its blocks' outputs (4-D ones), in the autograd graph."""
    trunk = _trunk(model)
    if trunk is None:
        return []
    feats: list[torch.Tensor] = []
    blocks = list(trunk)

    def on_first(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        feats.append(inp[0])

    def on_block(_m: nn.Module, _inp: Any, out: Any) -> None:
        feats.append(out)

    handles = [blocks[0].register_forward_pre_hook(on_first)]
    handles += [b.register_forward_hook(on_block) for b in blocks]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [f for f in feats if isinstance(f, torch.Tensor) and f.dim() == 4]


def covariance_entropy(feat: torch.Tensor) -> float:
    """Entropy of the normalised eigenvalues of the channel covariance of a b x c x h x w map."""
    b, c, h, w = feat.shape
    rows = feat.detach().double().permute(0, 2, 3, 1).reshape(b * h * w, c)
    rows = rows - rows.mean(dim=0, keepdim=True)
    eig = torch.linalg.eigvalsh(rows.t() @ rows / rows.shape[0]).clamp(min=0.0)
    total = eig.sum()
    if not total > 0:
        return 0.0
    prob = eig / total
    return float(-(prob * torch.log(prob + 1e-8)).sum())


def _block_trainability(f_in: torch.Tensor, f_out: torch.Tensor) -> float:
    g_out = (torch.bernoulli(torch.full_like(f_out, 0.5)) - 0.5) * 2
    (g_in,) = torch.autograd.grad(f_out, f_in, g_out, retain_graph=True, allow_unused=True)
    g_in = torch.zeros_like(f_in) if g_in is None else g_in
    if g_in.shape == g_out.shape and torch.equal(g_in, g_out):
        return IDENTITY_BLOCK
    if g_in.shape[2:] != g_out.shape[2:]:
        stride = g_in.shape[2] // g_out.shape[2]
        if stride < 1 or g_in.shape[2] != stride * g_out.shape[2] \
                or g_in.shape[3] != stride * g_out.shape[3]:
            return IDENTITY_BLOCK  # no spatial correspondence to compare (not in the paper)
        g_in = nn.functional.pixel_unshuffle(g_in, stride)
    bo, co, ho, wo = g_out.shape
    flat_out = g_out.permute(0, 2, 3, 1).reshape(bo * ho * wo, co).double()
    flat_in = g_in.permute(0, 2, 3, 1).reshape(bo * ho * wo, -1).double()
    s = float(torch.linalg.svdvals(flat_in.t() @ flat_out / (bo * ho * wo)).max())
    return -s - 1.0 / (s + 1e-6) + 2.0


def az_components(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  loss_fn: Callable[..., Any]) -> dict[str, float]:
    """Expressivity, progressivity and trainability from one forward pass (see the module)."""
    with kept_state(model):
        _kaiming_init(model)
        model.train()
        gaussian = torch.randn((AZ_BATCH, *inputs.shape[1:]), dtype=inputs.dtype).to(inputs.device)
        feats = block_features(model, gaussian)
        entropies = [covariance_entropy(f) for f in feats]
        steps = [b - a for a, b in zip(entropies, entropies[1:], strict=False)]
        terms = [_block_trainability(f_in, f_out)
                 for f_in, f_out in zip(feats, feats[1:], strict=False)
                 if f_out.requires_grad and f_in.requires_grad]
    return {"az_expressivity": float(sum(entropies)),
            "az_progressivity": float(min(steps)) if steps else 0.0,
            "az_trainability": float(sum(terms) / len(terms)) if terms else 0.0}


register_group(GROUP, az_components)


@register_proxy("az_expressivity", data=False, group=GROUP)
def az_expressivity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: Callable[..., Any]) -> float:
    """AZ-NAS expressivity: summed entropy of the block features' covariance spectra."""
    return az_components(model, inputs, targets, loss_fn)["az_expressivity"]


@register_proxy("az_progressivity", data=False, group=GROUP)
def az_progressivity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                     loss_fn: Callable[..., Any]) -> float:
    """AZ-NAS progressivity: the smallest growth of expressivity from one block to the next."""
    return az_components(model, inputs, targets, loss_fn)["az_progressivity"]


@register_proxy("az_trainability", data=False, group=GROUP)
def az_trainability(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: Callable[..., Any]) -> float:
    """AZ-NAS trainability: mean over blocks of 2 - s - 1/s, s the block's gradient gain."""
    return az_components(model, inputs, targets, loss_fn)["az_trainability"]


@register_proxy("az_nas", data=False)
def az_nas(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
           loss_fn: Callable[..., Any]) -> float:
    """AZ-NAS: sum of log(rank / N) of its four components placed among NB201 reference cells."""
    from ..combine import az_nas_score
    from .cost import flops

    with kept_state(model):  # flops switches to eval mode
        values = {"flops": flops(model, inputs, targets, loss_fn)}
    values.update(az_components(model, inputs, targets, loss_fn))
    return az_nas_score(values)
