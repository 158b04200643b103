"""Torch modules of BossNAS's HyTra space (`search_spaces.hytra`).

Every layer is `relu(body(entry(x)) + shortcut(x))`:

* `entry`: 1x1 conv to the layer's inner width, a depthwise 3x3 conv (BossNAS's
  convolutional position encoding, after CPVT; stride 2 when the layer goes down one scale),
  BatchNorm. The part that depends on where the input comes from (the same scale or the one
  above), so a weight-sharing supernet keeps one `entry` per input scale and shares the body.
* `body`: ResConv (BoTNet's bottleneck: ReLU, 3x3 conv, BN, ReLU, 1x1 conv to the output
  width, BN) or ResAtt (ReLU, multi-head self-attention over the feature map's tokens with
  1x1-conv q/k/v, BN, ReLU, 1x1 conv, BN). The last BN's scale starts at zero, so a fresh
  layer is its shortcut (Goyal et al.).
* `shortcut`: identity at the same scale, a strided 3x3 conv-BN when the layer goes down.

Attention uses explicit matmuls so ONNX export (TorchScript exporter) and
`torch.utils.flop_counter` both see two plain batched matmuls.
"""

from __future__ import annotations

import torch
from torch import nn

from .hytra_plan import EXPANSION, LayerSpec, inner_width  # noqa: F401 (re-exported)


class MultiHeadAttention(nn.Module):
    """Self-attention over the h*w tokens of a (b, c, h, w) map; heads = c // head_dim."""

    def __init__(self, width: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Conv2d(width, 3 * width, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, self.head_dim, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (b, heads, head_dim, tokens)
        weights = torch.softmax(torch.matmul(q.transpose(-2, -1) * self.scale, k), dim=-1)
        out = torch.matmul(v, weights.transpose(-2, -1))  # (b, heads, head_dim, tokens)
        return out.reshape(b, c, h, w)


def _last_bn(width: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(width)
    nn.init.zeros_(bn.weight)
    return bn


def make_entry(c_in: int, mid: int, down: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False),
        nn.Conv2d(mid, mid, 3, stride=2 if down else 1, padding=1, groups=mid, bias=False),
        nn.BatchNorm2d(mid),
    )


def make_shortcut(c_in: int, c_out: int, down: bool) -> nn.Module:
    if not down and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=1,
                                   bias=False), nn.BatchNorm2d(c_out))


def make_body(op: str, mid: int, c_out: int, head_dim: int) -> nn.Sequential:
    if op == "resconv":
        core: list[nn.Module] = [nn.Conv2d(mid, mid, 3, padding=1, bias=False)]
    elif op == "resatt":
        core = [MultiHeadAttention(mid, head_dim)]
    else:
        raise ValueError(f"unknown HyTra op {op!r}")
    return nn.Sequential(nn.ReLU(), *core, nn.BatchNorm2d(mid), nn.ReLU(),
                         nn.Conv2d(mid, c_out, 1, bias=False), _last_bn(c_out))


def residual(entry: nn.Module, body: nn.Module, shortcut: nn.Module,
             x: torch.Tensor) -> torch.Tensor:
    """One HyTra layer: relu(body(entry(x)) + shortcut(x))."""
    return torch.relu(body(entry(x)) + shortcut(x))


class HyTraLayer(nn.Module):
    def __init__(self, spec: LayerSpec, head_dim: int) -> None:
        super().__init__()
        mid = inner_width(spec.c_out)
        self.entry = make_entry(spec.c_in, mid, spec.down)
        self.body = make_body(spec.op, mid, spec.c_out, head_dim)
        self.shortcut = make_shortcut(spec.c_in, spec.c_out, spec.down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual(self.entry, self.body, self.shortcut, x)


def make_stem(input_channels: int, width: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(input_channels, width, 3, stride=stride, padding=1,
                                   bias=False), nn.BatchNorm2d(width), nn.ReLU())


class HyTraNetwork(nn.Module):
    """Stem (3x3 conv-BN-ReLU), the planned layers, global average pooling, linear."""

    def __init__(self, plan: list[LayerSpec], *, input_channels: int, stem_width: int,
                 stem_stride: int, num_classes: int, head_dim: int) -> None:
        super().__init__()
        self.stem = make_stem(input_channels, stem_width, stem_stride)
        self.layers = nn.Sequential(*(HyTraLayer(s, head_dim) for s in plan))
        self.classifier = nn.Linear(plan[-1].c_out, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))
