"""The NAS-Bench-201 macro network: stem, 3 stages of cells, residual reductions, classifier."""

from __future__ import annotations

import torch
from torch import nn

from .nb201_plan import EDGES
from .pooling import GlobalAvgPool


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def make_op(op: str, channels: int, affine: bool = True) -> nn.Module:
    """One cell operation; `affine=False` (the search supernets' candidate operations, as
    in DARTS) gives its BatchNorm no learned scale and shift."""
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine)
    if op == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NAS-Bench-201 operation {op!r}")


class Cell(nn.Module):
    """Node j = sum of op(i -> j)(node i) over i < j; the output is node 3."""

    def __init__(self, ops: list[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for target in (1, 2, 3):
            inputs = [self.edges[e](nodes[src]) for e, (src, dst) in enumerate(EDGES)
                      if dst == target]
            total = inputs[0]
            for extra in inputs[1:]:
                total = total + extra
            nodes.append(total)
        return nodes[3]


class ResidualReduction(nn.Module):
    """NAS-Bench-201's ResNet basic block with stride 2, between stages."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    def __init__(
        self, ops: list[str], channels: int = 16, cells_per_stage: int = 5,
        num_classes: int = 10, input_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers.extend(Cell(ops, c) for _ in range(cells_per_stage))
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.cells(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
