"""Torch modules of the hybrid CNN-transformer space (`search_spaces.hybrid`).

Attention uses explicit matmuls (not a fused kernel) so that ONNX export with the
TorchScript exporter and `torch.utils.flop_counter` both see two plain batched matmuls.
"""

from __future__ import annotations

import torch
from torch import nn

from .hybrid_plan import BOTTLENECK_REDUCTION, BlockSpec


class ConvBN(nn.Sequential):
    """Conv (no bias, 'same' padding for odd kernels) followed by BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        )


def _projection(c_in: int, c_out: int, stride: int, kernel: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return ConvBN(c_in, c_out, kernel, stride)


class BasicBlock(nn.Module):
    """ResNet basic block; the first 3x3 conv carries the stride."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, 3, stride)
        self.conv2 = ConvBN(c_out, c_out, 3)
        self.shortcut = _projection(c_in, c_out, stride, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 reduce, 3x3 with the stride as in ResNet v1.5, 1x1 expand)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = c_out // BOTTLENECK_REDUCTION
        self.reduce = ConvBN(c_in, mid, 1)
        self.conv = ConvBN(mid, mid, 3, stride)
        self.expand = ConvBN(mid, c_out, 1)
        self.shortcut = _projection(c_in, c_out, stride, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(self.relu(self.reduce(x))))
        return self.relu(self.expand(y) + self.shortcut(x))


class Attention(nn.Module):
    """Multi-head self-attention over (batch, tokens, width); heads = width // head_dim."""

    def __init__(self, width: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on a feature map.

    A strided 3x3 conv-BN (patch merging) changes resolution/width when needed; CPVT's
    positional encoding generator (x + depthwise 3x3 conv(x)) adds position information
    that adapts to any input size.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.merge = _projection(c_in, c_out, stride, 3)
        self.pos = nn.Conv2d(c_out, c_out, 3, padding=1, groups=c_out)
        self.norm1 = nn.LayerNorm(c_out)
        self.attn = Attention(c_out, head_dim)
        self.norm2 = nn.LayerNorm(c_out)
        hidden = mlp_ratio * c_out
        self.mlp = nn.Sequential(nn.Linear(c_out, hidden), nn.GELU(), nn.Linear(hidden, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(x)
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


def make_block(spec: BlockSpec, head_dim: int, mlp_ratio: int) -> nn.Module:
    if spec.kind == "basic":
        return BasicBlock(spec.c_in, spec.c_out, spec.stride)
    if spec.kind == "bottleneck":
        return Bottleneck(spec.c_in, spec.c_out, spec.stride)
    if spec.kind == "transformer":
        return TransformerBlock(spec.c_in, spec.c_out, spec.stride, head_dim, mlp_ratio)
    raise ValueError(f"unknown hybrid block type {spec.kind!r}")


class HybridNetwork(nn.Module):
    """Stem (3x3 conv-BN-ReLU), the planned blocks, BatchNorm, global pooling, linear."""

    def __init__(
        self,
        plan: list[BlockSpec],
        *,
        input_channels: int,
        stem_channels: int,
        stem_stride: int,
        num_classes: int,
        head_dim: int,
        mlp_ratio: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBN(input_channels, stem_channels, 3, stem_stride),
                                  nn.ReLU())
        self.blocks = nn.Sequential(*(make_block(s, head_dim, mlp_ratio) for s in plan))
        width = plan[-1].c_out
        self.norm = nn.BatchNorm2d(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.stem(x)))
        return self.classifier(x.mean(dim=(2, 3)))
