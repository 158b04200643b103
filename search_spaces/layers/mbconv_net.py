"""Torch modules of the `mbconv` space: the standalone subnet and the weight-sharing supernet.

`MBConvNet(spec)` is a plain network of one architecture (what `MBConvSpace.build` returns).
`MBConvSupernet` holds the largest weights (max width, depth, kernel, expand ratio) in the
same modules and runs any architecture on slices of them, the once-for-all way: the first
channels for a width or an expand ratio, the centre crop of a depthwise kernel for a smaller
kernel, the first `depth` blocks of a stage, and BN affine parameters and running statistics
sliced like the channels (a train-mode forward updates only the slice it used). Slices are
views: a step copies no weights. `extract(arch)` copies the slices into an `MBConvNet`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .mbconv_plan import ElasticSpace, NetSpec
from .pooling import GlobalAvgPool

if TYPE_CHECKING:
    from .._base import Arch


class ConvBN(nn.Module):
    """Conv (no bias, "same" padding) -> BN -> Hardswish (or no activation)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 depthwise: bool = False, act: bool = True) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2,
                              groups=c_out if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableBlock(nn.Module):
    """The fixed first block: depthwise 3x3 then pointwise projection (residual if shapes
    match)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.dw = ConvBN(c_in, c_in, 3, depthwise=True)
        self.pw = ConvBN(c_in, c_out, 1, act=False)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (stride) -> 1x1 project (linear)."""

    def __init__(self, c_in: int, mid: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.expand = ConvBN(c_in, mid, 1)
        self.depthwise = ConvBN(mid, mid, kernel, stride, depthwise=True)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MBConvNet(nn.Module):
    """The standalone network of one architecture (see `search_spaces.mbconv`)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.stem = ConvBN(spec.input_channels, spec.stem, 3)
        self.first = SeparableBlock(spec.stem, spec.first)
        self.blocks = nn.Sequential(*(MBConvBlock(b.c_in, b.mid, b.c_out, b.kernel, b.stride)
                                      for b in spec.blocks))
        self.head = ConvBN(spec.last_channels, spec.head, 1)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(spec.head, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.first(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


# ---- slicing shared weights ---------------------------------------------------------------------
def conv_weight(layer: ConvBN, c_out: int, c_in: int, kernel: int) -> torch.Tensor:
    """The slice of `layer`'s (largest) conv weight a smaller conv uses: the first `c_out`
    filters over the first `c_in` inputs, the centre `kernel` x `kernel` of the kernel."""
    weight = layer.conv.weight
    weight = weight[:c_out] if layer.depthwise else weight[:c_out, :c_in]
    full = weight.shape[-1]
    if kernel < full:
        start = (full - kernel) // 2
        weight = weight[:, :, start:start + kernel, start:start + kernel]
    return weight


def conv_bn_slice(layer: ConvBN, x: torch.Tensor, c_out: int, kernel: int | None = None,
                  stride: int = 1) -> torch.Tensor:
    """`layer` run on `x` with its first `c_out` output channels (and `kernel`)."""
    kernel = layer.conv.kernel_size[0] if kernel is None else kernel
    weight = conv_weight(layer, c_out, x.shape[1], kernel)
    y = F.conv2d(x, weight, None, stride, kernel // 2, 1, c_out if layer.depthwise else 1)
    bn = layer.bn
    y = F.batch_norm(y, bn.running_mean[:c_out], bn.running_var[:c_out], bn.weight[:c_out],
                     bn.bias[:c_out], bn.training, bn.momentum, bn.eps)
    return layer.act(y)


def _copy_slice(dst: ConvBN, src: ConvBN) -> None:
    conv = dst.conv
    dst.conv.weight.copy_(conv_weight(src, conv.out_channels, conv.in_channels,
                                      conv.kernel_size[0]))
    c = conv.out_channels
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.bn, name).copy_(getattr(src.bn, name)[:c])
    dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)


class MBConvSupernet(nn.Module):
    """Once-for-all supernet of an `MBConvSpace`: `supernet(x, arch)` runs `arch` on shared
    weight slices; `extract(arch)` returns the equivalent standalone `MBConvNet`.

    BN layers must keep a numeric `momentum` (the default 0.1): the sliced forward does not
    count batches, so the cumulative average of `momentum=None` is not supported.
    """

    def __init__(self, space: ElasticSpace) -> None:
        super().__init__()
        self.space = space
        spec = space.net_spec(space.max_arch())
        self.stem = ConvBN(spec.input_channels, spec.stem, 3)
        self.first = SeparableBlock(spec.stem, spec.first)
        self.stages = nn.ModuleList(nn.ModuleList() for _ in space.stage_channels)
        for b in spec.blocks:  # strides depend on the arch's resolution: given at run time
            self.stages[b.stage].append(MBConvBlock(b.c_in, b.mid, b.c_out, b.kernel, 1))
        self.head = ConvBN(spec.last_channels, spec.head, 1)
        self.classifier = nn.Linear(spec.head, spec.num_classes)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        spec = self.space.net_spec(arch)
        expected = (spec.input_channels, spec.resolution, spec.resolution)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"architecture {self.space.key(arch)} takes inputs of shape "
                             f"{expected}, got {tuple(x.shape[1:])}")
        return self.run(x, spec)

    def run(self, x: torch.Tensor, spec: NetSpec) -> torch.Tensor:
        """Forward of the subnet `spec` (from `space.net_spec(arch)`, which callers may cache)."""
        x = conv_bn_slice(self.stem, x, spec.stem)
        y = conv_bn_slice(self.first.dw, x, spec.stem)
        y = conv_bn_slice(self.first.pw, y, spec.first)
        x = x + y if spec.stem == spec.first else y
        for b in spec.blocks:
            block = self.stages[b.stage][b.index]
            y = conv_bn_slice(block.expand, x, b.mid)
            y = conv_bn_slice(block.depthwise, y, b.mid, b.kernel, b.stride)
            y = conv_bn_slice(block.project, y, b.c_out)
            x = x + y if b.residual else y
        x = conv_bn_slice(self.head, x, spec.head)
        x = x.mean(dim=(2, 3))  # as GlobalAvgPool: deterministic on CUDA
        return F.linear(x, self.classifier.weight[:, :spec.head], self.classifier.bias)

    @torch.no_grad()
    def extract(self, arch: Arch) -> MBConvNet:
        """A standalone `MBConvNet` of `arch` whose weights and BN statistics are copies of the
        slices `forward(x, arch)` uses (same train/eval mode as the supernet)."""
        spec = self.space.net_spec(arch)
        net = MBConvNet(spec)
        _copy_slice(net.stem, self.stem)
        _copy_slice(net.first.dw, self.first.dw)
        _copy_slice(net.first.pw, self.first.pw)
        for sub, b in zip(net.blocks, spec.blocks, strict=True):
            block = self.stages[b.stage][b.index]
            for name in ("expand", "depthwise", "project"):
                _copy_slice(getattr(sub, name), getattr(block, name))
        _copy_slice(net.head, self.head)
        net.classifier.weight.copy_(self.classifier.weight[:, :spec.head])
        net.classifier.bias.copy_(self.classifier.bias)
        return net.train(self.training)
