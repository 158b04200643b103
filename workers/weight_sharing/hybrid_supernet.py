"""A weight-sharing supernet for the `hybrid` space (BigNAS-style slicing).

Every block position holds one module per block type (basic, bottleneck, transformer), each
built at the largest width that position can have under any downsampling choice; a subnet
runs on slices of them: the first `c` channels of a stage width `c` (bottleneck inner width
`c // 4`, MLP hidden width `mlp_ratio * c`, attention heads `c // head_dim`, the first heads),
and BN/LayerNorm parameters and BN running statistics sliced like the channels. Strides are
given at run time (the same weights serve a block with stride 1 or 2), and every position
that may start a stage owns the shortcut / patch-merging projection. `extract(arch)` copies
the slices into the network `HybridSpace.build(arch)` returns; both compute the same function.

"Largest" and "smallest" subnets (the sandwich rule's ends) are defined by FLOPs here,
because the block types own separate weights and no subnet holds all of them:
`extreme_archs(space)` searches the downsampling choices exhaustively and picks the block
type per position greedily (exact: with the plan fixed, the FLOPs are a sum over blocks).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.hybrid import BLOCK_TYPES, BOTTLENECK_REDUCTION, BlockSpec, HybridSpace
from search_spaces.layers.hybrid_net import ConvBN, make_block

Arch = dict[str, Any]


def _position_widths(space: HybridSpace) -> list[int]:
    """The largest output width block i can have (over every downsampling choice)."""
    out = []
    for i in range(space.blocks):
        low = sum(1 for w in space.downsample_windows if max(w) <= i)  # earliest stage
        high = sum(1 for w in space.downsample_windows if min(w) <= i)  # latest stage
        out.append(max(max(space.widths[s]) for s in range(low, high + 1)))
    return out


class HybridSupernet(nn.Module):
    """Supernet of a `HybridSpace`: `supernet(x, arch)` runs `arch` on shared weight slices;
    `extract(arch)` returns the equivalent standalone network."""

    def __init__(self, space: HybridSpace) -> None:
        super().__init__()
        self.space = space
        stem = max(space.widths[0])
        self.stem = nn.Sequential(ConvBN(space.input_channels, stem, 3, space.stem_stride),
                                  nn.ReLU())
        c_in = stem
        self.blocks = nn.ModuleList()
        for i, c_out in enumerate(_position_widths(space)):
            # stride 2 at positions that may start a stage: it makes the projection exist
            stride = 1 if i == 0 else 2
            kinds = {kind: make_block(BlockSpec(kind, c_in, c_out, stride, 1, 1),
                                      space.head_dim, space.mlp_ratio)
                     for kind in BLOCK_TYPES}
            self.blocks.append(nn.ModuleDict(kinds))
            c_in = c_out
        self.norm = nn.BatchNorm2d(c_in)
        self.classifier = nn.Linear(c_in, space.num_classes)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        plan = self.space.plan(arch)
        x = F.relu(_conv_bn(self.stem[0], x, arch["widths"][0], self.space.stem_stride))
        for i, spec in enumerate(plan):
            module = self.blocks[i][spec.kind]
            project = spec.stride != 1 or spec.c_in != spec.c_out
            if spec.kind == "basic":
                x = _basic(module, x, spec, project)
            elif spec.kind == "bottleneck":
                x = _bottleneck(module, x, spec, project)
            else:
                x = self._transformer(module, x, spec, project)
        c = plan[-1].c_out
        x = _batch_norm(self.norm, x, c)
        return F.linear(x.mean(dim=(2, 3)), self.classifier.weight[:, :c], self.classifier.bias)

    def _transformer(self, block: nn.Module, x: torch.Tensor, spec: BlockSpec,
                     project: bool) -> torch.Tensor:
        c = spec.c_out
        if project:
            x = _conv_bn(block.merge, x, c, spec.stride)
        pos = block.pos
        x = x + F.conv2d(x, pos.weight[:c], pos.bias[:c], 1, 1, 1, c)
        b, _, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self._attention(block.attn, _layer_norm(block.norm1, t, c), c)
        hidden = self.space.mlp_ratio * c
        fc1, fc2 = block.mlp[0], block.mlp[2]
        y = F.gelu(F.linear(_layer_norm(block.norm2, t, c), fc1.weight[:hidden, :c],
                            fc1.bias[:hidden]))
        t = t + F.linear(y, fc2.weight[:c, :hidden], fc2.bias[:c])
        return t.transpose(1, 2).reshape(b, c, h, w)

    def _attention(self, attn: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
        b, n, _ = x.shape
        head_dim = self.space.head_dim
        weight, bias = _qkv_slice(attn.qkv, c)
        qkv = F.linear(x, weight, bias).reshape(b, n, 3, c // head_dim, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        weights = torch.softmax(torch.matmul(q * attn.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, c)
        return F.linear(out, attn.proj.weight[:c, :c], attn.proj.bias[:c])

    @torch.no_grad()
    def extract(self, arch: Arch) -> nn.Module:
        """`space.build(arch)` holding copies of the slices `forward(x, arch)` uses (same
        train/eval mode as the supernet)."""
        net = self.space.build(arch)
        _copy_slices(net.stem, self.stem)
        for i, spec in enumerate(self.space.plan(arch)):
            _copy_slices(net.blocks[i], self.blocks[i][spec.kind])
        _copy_slices(net.norm, self.norm)
        _copy_slices(net.classifier, self.classifier)
        return net.to(self.classifier.weight.device).train(self.training)


# ---- sliced functional ops ------------------------------------------------------------------
def _batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, c: int) -> torch.Tensor:
    """BN on the first `c` channels; a train-mode call updates only that slice of the running
    statistics (the slices are views). Needs a numeric momentum, as in `MBConvSupernet`."""
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                        bn.training, bn.momentum, bn.eps)


def _conv_bn(layer: ConvBN, x: torch.Tensor, c_out: int, stride: int) -> torch.Tensor:
    conv = layer[0]
    kernel = conv.kernel_size[0]
    y = F.conv2d(x, conv.weight[:c_out, :x.shape[1]], None, stride, kernel // 2)
    return _batch_norm(layer[1], y, c_out)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, c: int) -> torch.Tensor:
    return F.layer_norm(x, (c,), norm.weight[:c], norm.bias[:c], norm.eps)


def _qkv_slice(qkv: nn.Linear, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The q, k and v rows of the first `c` channels (the layout `Attention` reshapes to)."""
    full = qkv.in_features
    weight = qkv.weight.view(3, full, full)[:, :c, :c].reshape(3 * c, c)
    return weight, qkv.bias.view(3, full)[:, :c].reshape(3 * c)


def _basic(block: nn.Module, x: torch.Tensor, spec: BlockSpec, project: bool) -> torch.Tensor:
    y = F.relu(_conv_bn(block.conv1, x, spec.c_out, spec.stride))
    y = _conv_bn(block.conv2, y, spec.c_out, 1)
    shortcut = _conv_bn(block.shortcut, x, spec.c_out, spec.stride) if project else x
    return F.relu(y + shortcut)


def _bottleneck(block: nn.Module, x: torch.Tensor, spec: BlockSpec,
                project: bool) -> torch.Tensor:
    mid = spec.c_out // BOTTLENECK_REDUCTION
    y = F.relu(_conv_bn(block.reduce, x, mid, 1))
    y = F.relu(_conv_bn(block.conv, y, mid, spec.stride))
    shortcut = _conv_bn(block.shortcut, x, spec.c_out, spec.stride) if project else x
    return F.relu(_conv_bn(block.expand, y, spec.c_out, 1) + shortcut)


def _copy_slices(dst: nn.Module, src: nn.Module) -> None:
    """Copy into every tensor of `dst` the leading slice of the same-named tensor of `src`
    (the q/k/v rows of an attention projection are sliced per part)."""
    source = src.state_dict()
    for name, tensor in dst.state_dict().items():
        value = source[name]
        if name.endswith("qkv.weight"):
            c = tensor.shape[1]
            full = value.shape[1]
            value = value.view(3, full, full)[:, :c, :c].reshape(3 * c, c)
        elif name.endswith("qkv.bias"):
            c = tensor.shape[0] // 3
            value = value.view(3, -1)[:, :c].reshape(3 * c)
        elif tensor.dim() > 0:
            value = value[tuple(slice(0, d) for d in tensor.shape)]
        tensor.copy_(value)


# ---- the sandwich rule's ends -----------------------------------------------------------------
def extreme_archs(space: HybridSpace) -> tuple[Arch, Arch]:
    """(the architecture with the most FLOPs, the one with the fewest)."""
    return _extreme(space, max), _extreme(space, min)


def _extreme(space: HybridSpace, pick: Any) -> Arch:
    widths = [pick(w) for w in space.widths]
    best: Arch | None = None
    for downsample in itertools.product(*space.downsample_windows):
        arch = {"blocks": [BLOCK_TYPES[0]] * space.blocks, "downsample": list(downsample),
                "widths": widths}
        for i in range(space.blocks):  # block costs add up: one pass per position is exact
            options = [{**arch, "blocks": arch["blocks"][:i] + [kind] + arch["blocks"][i + 1:]}
                       for kind in BLOCK_TYPES]
            arch = pick(options, key=space.flops)
        if best is None or pick(best, arch, key=space.flops) is arch:
            best = arch
    assert best is not None
    return best
