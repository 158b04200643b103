"""The DARTS CIFAR network (evaluation form) and its candidate operations.

Stem conv + BN, then `layers` cells (reductions at 1/3 and 2/3 of the depth), global average
pooling and a linear classifier. No auxiliary head and no drop-path. See `search_spaces.darts`
for the operation definitions and the architecture format.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .darts_plan import CELLS, NODES, STEM_MULTIPLIER, CellPlan, edge_stride, network_plan
from .pooling import GlobalAvgPool


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU - depthwise conv (optionally dilated, carrying the stride) - 1x1 conv - BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int,
                 affine: bool = True) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """The DARTS separable conv: the undilated `DilConv` stack twice, the first strided."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int,
                 affine: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, dilation=1, affine=affine),
            DilConv(c_in, c_out, kernel, 1, dilation=1, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the side with two 1x1 stride-2 convs on pixel grids offset by one, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))


class Zero(nn.Module):
    """The `none` operation of the DARTS search network's mixed ops (not an operation of the
    discrete space): zeros of the output's shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return x * 0.0


def make_op(op: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """One edge operation; `affine=False` (the search supernet's candidate operations, as
    in the DARTS search network) gives its BatchNorms no learned scale and shift."""
    if op == "none":
        return Zero(stride)
    if op == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)
    if op in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(channels, channels, int(op[-1]), stride, affine)
    if op in ("dil_conv_3x3", "dil_conv_5x5"):
        return DilConv(channels, channels, int(op[-1]), stride, dilation=2, affine=affine)
    if op == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    raise ValueError(f"unknown DARTS operation {op!r}")


class Cell(nn.Module):
    """States 0 and 1 are the preprocessed cell inputs; node i adds its two edges; the
    output concatenates the nodes."""

    def __init__(self, nodes: list[dict[str, Any]], plan: CellPlan) -> None:
        super().__init__()
        c = plan.c
        self.preprocess0 = (FactorizedReduce(plan.c_prev_prev, c) if plan.reduction_prev
                            else ReLUConvBN(plan.c_prev_prev, c, 1))
        self.preprocess1 = ReLUConvBN(plan.c_prev, c, 1)
        self.inputs = [tuple(node["inputs"]) for node in nodes]
        self.edges = nn.ModuleList(
            make_op(op, c, edge_stride(plan.reduction, state))
            for node in nodes for op, state in zip(node["ops"], node["inputs"], strict=True)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i, (a, b) in enumerate(self.inputs):
            states.append(self.edges[2 * i](states[a]) + self.edges[2 * i + 1](states[b]))
        return torch.cat(states[2:], dim=1)


class DartsNetwork(nn.Module):
    def __init__(
        self,
        arch: dict[str, Any],
        channels: int = 8,
        layers: int = 5,
        num_classes: int = 10,
        input_channels: int = 3,
    ) -> None:
        super().__init__()
        c_stem = STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        plan = network_plan(channels, layers)
        normal, reduce = (arch[name] for name in CELLS)
        self.cells = nn.ModuleList(Cell(reduce if p.reduction else normal, p) for p in plan)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(NODES * plan[-1].c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(self.pool(s1), 1))
