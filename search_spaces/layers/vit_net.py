"""Torch modules of the hierarchical ViT space (`search_spaces.vit`), after As-ViT's network
(Chen et al., ICLR 2022): an overlapping patch embedding, stages of pre-norm transformer
blocks with window ("split") attention, and a strided token reduction between stages that
doubles the width.

Attention uses explicit matmuls (not a fused kernel) so that the TorchScript ONNX exporter
and `torch.utils.flop_counter` both see plain batched matmuls; windows are cut with
reshape/permute only (static window sizes), which export as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from .vit_plan import StageSpec  # noqa: F401 (re-exported)


def asymmetric_padding(kernel: int, stride: int) -> nn.ZeroPad2d:
    """Zero padding (left/top (k-s)//2, right/bottom (k-s+1)//2) so that a k x k conv of
    stride s maps a side n to floor(n / s) for any k >= s (As-ViT's patch embedding)."""
    low, high = (kernel - stride) // 2, (kernel - stride + 1) // 2
    return nn.ZeroPad2d((low, high, low, high))


class PatchEmbedding(nn.Module):
    """k x k conv of stride `stride` (k >= stride: overlapping patches), then LayerNorm."""

    def __init__(self, c_in: int, width: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.pad = asymmetric_padding(kernel, stride)
        self.proj = nn.Conv2d(c_in, width, kernel, stride=stride)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.pad(x))  # (B, C, H, W)
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H, W, C)


class TokenReduction(nn.Module):
    """LayerNorm, then a k x k conv of stride 2 (no bias) from width to 2 x width: each new
    token mixes a k x k neighbourhood of old ones (As-ViT's unfold + linear patch merging)."""

    def __init__(self, width: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.pad = asymmetric_padding(kernel, 2)
        self.proj = nn.Conv2d(width, 2 * width, kernel, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        return self.proj(self.pad(x)).permute(0, 2, 3, 1)


class WindowAttention(nn.Module):
    """Multi-head self-attention within each of split x split windows of the token grid."""

    def __init__(self, width: int, heads: int, side: int, split: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.scale = self.head_dim ** -0.5
        self.split, self.window = split, side // split
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s, n = self.split, self.window
        # (B, s, n, s, n, C) -> (B * s * s, n * n, C): one row of tokens per window
        t = x.reshape(b, s, n, s, n, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n * n, c)
        qkv = self.qkv(t).reshape(-1, n * n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(-1, n * n, c)
        out = self.proj(out).reshape(b, s, s, n, n, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h, w, c)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), x + MLP(LN(x)) (GELU)."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        c = spec.width
        self.norm1 = nn.LayerNorm(c)
        self.attn = WindowAttention(c, spec.heads, spec.side, spec.split)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, spec.ratio * c), nn.GELU(),
                                 nn.Linear(spec.ratio * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTNetwork(nn.Module):
    """Patch embedding, the stages (a token reduction before each but the first), final
    LayerNorm, mean over tokens, linear classifier."""

    def __init__(self, stages: list[StageSpec], *, input_channels: int, patch_stride: int,
                 num_classes: int) -> None:
        super().__init__()
        first = stages[0]
        self.embed = PatchEmbedding(input_channels, first.width, first.kernel, patch_stride)
        layers: list[nn.Module] = []
        for i, spec in enumerate(stages):
            if i > 0:
                layers.append(TokenReduction(stages[i - 1].width, spec.kernel))
            layers.extend(Block(spec) for _ in range(spec.depth))
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(stages[-1].width)
        self.classifier = nn.Linear(stages[-1].width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.stages(self.embed(x)))
        return self.classifier(x.mean(dim=(1, 2)))
