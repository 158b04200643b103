"""A hybrid CNN-transformer macro space, in the spirit of BossNAS's HyTra (Li et al., ICCV 2021).

The network is a stem, `blocks` blocks and a classifier (final BatchNorm, global average
pooling, linear). Three kinds of decisions, all single choices (a flat DNA):

* `blocks[i]`: the type of block i, one of `BLOCK_TYPES`:
  - `basic`: ResNet basic block (3x3 conv-BN-ReLU, 3x3 conv-BN, shortcut, ReLU);
  - `bottleneck`: ResNet bottleneck (1x1 to width/4, 3x3 carrying the stride, 1x1 back,
    BN after each, shortcut, ReLU);
  - `transformer`: pre-norm transformer block on the feature map's tokens: a convolutional
    position encoding (CPVT's PEG: x + depthwise 3x3 conv(x), so position information comes
    from zero padding and works for any input size and exports to ONNX), then
    x + MHSA(LN(x)) and x + MLP(LN(x)) (GELU, hidden width `mlp_ratio` x width). Heads are
    derived from the width with a fixed head dimension: heads = width // `head_dim`.
* `downsample[k]`: the index of the block that starts stage k+1 with a stride-2 step (a conv
  block strides its first 3x3 conv and projects the shortcut with a strided 1x1 conv-BN;
  a transformer block first applies a strided 3x3 conv-BN, a patch merging). The k-th
  downsampling is chosen in window k of `downsample_windows`: block indices 1..blocks-1 cut
  into `len(widths) - 1` contiguous windows as evenly as possible (window k is
  [1 + k*(blocks-1)//D, (k+1)*(blocks-1)//D] for D downsamplings). The windows are disjoint
  and increasing, so every choice is valid and every stage has at least one block.
* `widths[s]`: the channel width of stage s, one of `space_args.widths[s]` (multiples of 8).
  The stem outputs the width of stage 0; widths change only at the downsampling blocks.

Every stride-2 layer (3x3 padding 1, or 1x1 padding 0) maps a side s to ceil(s/2), so any
input size works (8x8 digits end at 1x1 with the default stem stride 2 and two
downsamplings). Attention is written with explicit matmuls, which both ONNX (dynamo=False)
and `torch.utils.flop_counter` handle, so `flops()` (2 x MACs of convolutions, linear layers
and the two attention matmuls) equals FlopCounterMode's count exactly.

space_args: `num_classes`, `input_channels`, `input_size`, `blocks` (default 8), `widths`
(one list of candidate widths per stage, at least two stages; default
[[16, 24, 32], [32, 48, 64], [64, 96, 128]]), `head_dim` (8), `mlp_ratio` (4), `stem_stride`
(1 or 2; default 2).

Canonical key: the stages separated by '/', each `width:type,type,...`, for example
`24:basic,transformer/48:bottleneck,transformer,basic/96:transformer` (the downsampling
positions are the cumulative stage lengths).
"""

from __future__ import annotations

from typing import Any

from ._base import Arch, SearchSpace, register_space
from .layers.hybrid_plan import BOTTLENECK_REDUCTION, BlockSpec
from .validation import ArgumentError, positive_int

BLOCK_TYPES: tuple[str, ...] = ("basic", "bottleneck", "transformer")
DEFAULT_WIDTHS: tuple[tuple[int, ...], ...] = ((16, 24, 32), (32, 48, 64), (64, 96, 128))
_ARCH_FIELDS = ("blocks", "downsample", "widths")


def _half(side: int) -> int:
    """Output side of a stride-2 conv with kernel 3 / padding 1 or kernel 1 / padding 0."""
    return (side - 1) // 2 + 1


def _check_widths(widths: Any, head_dim: int) -> tuple[tuple[int, ...], ...]:
    if not isinstance(widths, list | tuple) or len(widths) < 2:
        raise ArgumentError("widths", "must be a list of at least 2 stages (one downsampling "
                                      "or more), each a list of candidate widths, "
                                      f"got {widths!r}")
    stages = []
    for s, options in enumerate(widths):
        if not isinstance(options, list | tuple) or not options:
            raise ArgumentError(f"widths[{s}]", f"must be a non-empty list of widths, "
                             f"got {options!r}")
        for w in options:
            if not isinstance(w, int) or isinstance(w, bool) or w < 8 or w % 8:
                raise ArgumentError(f"widths[{s}]", f"must hold positive multiples of 8, "
                                 f"got {w!r}")
            if w % head_dim:
                raise ArgumentError(f"widths[{s}]", f"holds {w}, which is not a multiple "
                                 f"of head_dim = {head_dim}")
        if len(set(options)) != len(options):
            raise ArgumentError(f"widths[{s}]", f"has repeated widths: {list(options)}")
        stages.append(tuple(options))
    return tuple(stages)


def _parse_int(text: str) -> int | None:
    """A canonical non-negative decimal integer (ASCII digits, no sign, no leading zero)."""
    if not (text.isascii() and text.isdigit()) or str(int(text)) != text:
        return None
    return int(text)


@register_space
class HybridSpace(SearchSpace):
    """Stem, N blocks of {ResNet basic, ResNet bottleneck, transformer}, searchable
    downsampling positions and stage widths, pooled linear classifier."""

    name = "hybrid"
    description = ("hybrid CNN-transformer (BossNAS HyTra-like): per block basic/bottleneck/"
                   "transformer, searchable downsampling positions and stage widths")

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        blocks: int = 8,
        widths: Any = DEFAULT_WIDTHS,
        head_dim: int = 8,
        mlp_ratio: int = 4,
        stem_stride: int = 2,
    ) -> None:
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_channels = positive_int("input_channels", input_channels)
        self.input_size = positive_int("input_size", input_size)
        self.blocks = positive_int("blocks", blocks)
        self.head_dim = positive_int("head_dim", head_dim)
        self.mlp_ratio = positive_int("mlp_ratio", mlp_ratio)
        if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
            raise ArgumentError("stem_stride", f"must be 1 or 2, got {stem_stride!r}")
        self.stem_stride = int(stem_stride)
        self.widths = _check_widths(widths, self.head_dim)
        if self.blocks < len(self.widths):
            raise ArgumentError("blocks", f"must be at least the number of stages "
                                          f"(len(widths) = {len(self.widths)}), got {blocks}")
        self.downsample_windows = self._windows()

    def _windows(self) -> tuple[tuple[int, ...], ...]:
        """Candidate block indices of each downsampling (see the module docstring)."""
        d, n = len(self.widths) - 1, self.blocks - 1
        return tuple(tuple(range(1 + k * n // d, 1 + (k + 1) * n // d)) for k in range(d))

    # ---- decisions ------------------------------------------------------------------------
    def template(self) -> Any:
        import pyglove as pg

        return pg.Dict(
            blocks=pg.List([pg.oneof(list(BLOCK_TYPES)) for _ in range(self.blocks)]),
            downsample=pg.List([pg.oneof(list(w)) for w in self.downsample_windows]),
            widths=pg.List([pg.oneof(list(w)) for w in self.widths]),
        )

    def choice_counts(self) -> list[int]:
        return ([len(BLOCK_TYPES)] * self.blocks + [len(w) for w in self.downsample_windows]
                + [len(w) for w in self.widths])

    def to_dna(self, arch: Arch) -> list[int]:
        if not isinstance(arch, dict) or set(arch) != set(_ARCH_FIELDS):
            got = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
            raise ValueError("a hybrid architecture is {'blocks': [block types], 'downsample': "
                             f"[block indices], 'widths': [stage widths]}}, got {got}")
        dna = self._indices("blocks", arch["blocks"], [BLOCK_TYPES] * self.blocks)
        dna += self._indices("downsample", arch["downsample"], self.downsample_windows)
        dna += self._indices("widths", arch["widths"], self.widths)
        return dna

    @staticmethod
    def _indices(field: str, values: Any, candidates: Any) -> list[int]:
        if not isinstance(values, list) or len(values) != len(candidates):
            raise ValueError(f"hybrid architecture field {field!r} must be a list of "
                             f"{len(candidates)} values, got {values!r}")
        out = []
        for i, (value, options) in enumerate(zip(values, candidates, strict=True)):
            # exact type: True == 1 and 16.0 == 16 must not pass for integer candidates
            if type(value) is not type(options[0]) or value not in options:
                raise ValueError(f"{field}[{i}] = {value!r} is not one of {list(options)}")
            out.append(options.index(value))
        return out

    def from_dna(self, dna: list[int]) -> Arch:
        n, d = self.blocks, len(self.downsample_windows)
        return {
            "blocks": [BLOCK_TYPES[i] for i in dna[:n]],
            "downsample": [w[i] for w, i in zip(self.downsample_windows, dna[n:n + d],
                                                strict=True)],
            "widths": [w[i] for w, i in zip(self.widths, dna[n + d:], strict=True)],
        }

    # ---- canonical key -----------------------------------------------------------------------
    def _stage_blocks(self, arch: Arch) -> list[list[str]]:
        bounds = [0, *arch["downsample"], self.blocks]
        return [arch["blocks"][a:b] for a, b in zip(bounds, bounds[1:], strict=False)]

    def key(self, arch: Arch) -> str:
        stages = self._stage_blocks(arch)
        return "/".join(f"{w}:{','.join(ops)}"
                        for w, ops in zip(arch["widths"], stages, strict=True))

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str):
            raise ValueError(f"a hybrid key must be a string, got {type(key).__name__}")
        parts = key.split("/")
        if len(parts) != len(self.widths):
            raise ValueError(f"hybrid key {key!r} needs {len(self.widths)} stages separated by "
                             f"'/', got {len(parts)}")
        blocks: list[str] = []
        widths: list[int] = []
        downsample: list[int] = []
        for s, part in enumerate(parts):
            width_text, sep, ops_text = part.partition(":")
            if sep != ":":
                raise ValueError(f"stage {s} of hybrid key {key!r} must read "
                                 f"'width:type,type,...', got {part!r}")
            width = _parse_int(width_text)
            if width is None or width not in self.widths[s]:
                raise ValueError(f"width {width_text!r} of stage {s} in {key!r} is not one of "
                                 f"{list(self.widths[s])}")
            ops = ops_text.split(",")
            for op in ops:
                if op not in BLOCK_TYPES:
                    raise ValueError(f"unknown block type {op!r} in stage {s} of {key!r}; "
                                     f"known: {', '.join(BLOCK_TYPES)}")
            if s > 0:
                window = self.downsample_windows[s - 1]
                if len(blocks) not in window:
                    raise ValueError(f"stage {s} of {key!r} starts at block {len(blocks)}; "
                                     f"it must start at one of {list(window)}")
                downsample.append(len(blocks))
            widths.append(width)
            blocks.extend(ops)
        if len(blocks) != self.blocks:
            raise ValueError(f"hybrid key {key!r} has {len(blocks)} blocks, the space has "
                             f"{self.blocks}")
        return {"blocks": blocks, "downsample": downsample, "widths": widths}

    # ---- the network ---------------------------------------------------------------------------
    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        """The same for every arch: the input resolution is not searched here."""
        return (self.input_channels, self.input_size, self.input_size)

    def stem_side(self) -> int:
        return self.input_size if self.stem_stride == 1 else _half(self.input_size)

    def plan(self, arch: Arch) -> list[BlockSpec]:
        """The blocks of `arch` with their channels, strides and spatial sides (validates)."""
        self.to_dna(arch)
        starts = set(arch["downsample"])
        stage, c, side = 0, arch["widths"][0], self.stem_side()
        out = []
        for i, kind in enumerate(arch["blocks"]):
            stride = 1
            if i in starts:
                stage, stride = stage + 1, 2
            c_out = arch["widths"][stage]
            side_out = _half(side) if stride == 2 else side
            out.append(BlockSpec(kind, c, c_out, stride, side, side_out))
            c, side = c_out, side_out
        return out

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        from .layers.hybrid_net import HybridNetwork

        return HybridNetwork(
            self.plan(arch),
            input_channels=self.input_channels,
            stem_channels=arch["widths"][0],
            stem_stride=self.stem_stride,
            num_classes=kwargs.get("num_classes", self.num_classes),
            head_dim=self.head_dim,
            mlp_ratio=self.mlp_ratio,
        )

    # ---- analytic cost model (exact for the network `build` returns) ---------------------
    def params(self, arch: Arch) -> int:
        plan = self.plan(arch)
        c0, c_last = arch["widths"][0], plan[-1].c_out
        total = self.input_channels * c0 * 9 + 2 * c0  # stem conv + BN
        total += sum(self._block_params(b) for b in plan)
        return total + 2 * c_last + c_last * self.num_classes + self.num_classes

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions, linear layers and attention matmuls (the
        `torch.utils.flop_counter` rule: norms, activations, softmax, adds count 0)."""
        plan = self.plan(arch)
        c0, side = arch["widths"][0], self.stem_side()
        macs = self.input_channels * c0 * 9 * side * side
        macs += sum(self._block_macs(b) for b in plan)
        return 2 * (macs + plan[-1].c_out * self.num_classes)

    @staticmethod
    def _projects(b: BlockSpec) -> bool:
        """Whether the block needs a projection (shortcut or patch merging) conv."""
        return b.stride != 1 or b.c_in != b.c_out

    def _block_params(self, b: BlockSpec) -> int:
        c_in, c = b.c_in, b.c_out
        if b.kind == "transformer":
            hidden = self.mlp_ratio * c
            merge = c_in * c * 9 + 2 * c if self._projects(b) else 0
            pos = 9 * c + c
            attn = 3 * c * c + 3 * c + c * c + c
            mlp = c * hidden + hidden + hidden * c + c
            return merge + pos + 2 * c + attn + 2 * c + mlp
        shortcut = c_in * c + 2 * c if self._projects(b) else 0
        if b.kind == "basic":
            return c_in * c * 9 + 2 * c + c * c * 9 + 2 * c + shortcut
        m = c // BOTTLENECK_REDUCTION
        return c_in * m + 2 * m + m * m * 9 + 2 * m + m * c + 2 * c + shortcut

    def _block_macs(self, b: BlockSpec) -> int:
        c_in, c = b.c_in, b.c_out
        area_in, area = b.side_in * b.side_in, b.side_out * b.side_out
        if b.kind == "transformer":
            tokens = area
            merge = c_in * c * 9 * area if self._projects(b) else 0
            pos = 9 * c * tokens
            qkv_proj = 4 * c * c * tokens
            # q @ k^T and attn @ v: heads x tokens^2 x head_dim each = tokens^2 x width
            attention = 2 * tokens * tokens * c
            mlp = 2 * c * self.mlp_ratio * c * tokens
            return merge + pos + qkv_proj + attention + mlp
        shortcut = c_in * c * area if self._projects(b) else 0
        if b.kind == "basic":
            return c_in * c * 9 * area + c * c * 9 * area + shortcut
        m = c // BOTTLENECK_REDUCTION
        return c_in * m * area_in + m * m * 9 * area + m * c * area + shortcut
