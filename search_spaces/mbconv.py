"""Elastic MBConv space (MobileNetV3 / once-for-all / BigNAS style) with a weight-sharing supernet.

Network: a 3x3 stem conv, a fixed depthwise-separable block, then `len(stage_channels)`
stages of inverted-residual (MBConv) blocks, a 1x1 head conv, global average pooling and a
linear classifier (conv-BN-Hardswish everywhere; the projection conv of a block has no
activation; a block is residual when it keeps shape). Decisions, in DNA order:

- `resolution`: the input side (`space_args.resolutions`, default just `input_size`);
- `width`: a global width multiplier; every channel count c becomes
  `max(8, round_half_up(c * width / 8) * 8)` (multiples of 8);
- per stage: `depth` (default {2, 3, 4}) and, for each of the `max(depths)` blocks, `kernel`
  (default {3, 5, 7}) and `expand` ratio (default {3, 4, 6}; hidden channels = input
  channels x ratio).

Conditional decisions (OFA's convention): the arch always lists `max(depths)` blocks per
stage; blocks at index >= depth are inactive and their canonical form is the first kernel
and the first ratio. `size()` counts canonical architectures.

Arch JSON:
    {"resolution": 32, "width": 1.0,
     "stages": [{"depth": 2, "blocks": [{"kernel": 3, "expand": 4}, ... max depth]}, ...]}
Key: `r32|w1.0|k3e4,k5e6|k7e3,k3e3,k3e3|...`: the resolution, the width, then one field
per stage listing its active blocks (the depth is their number).

Downsampling rule: the stem and the first block keep the input side; the first block of a
stage with stride 2 (`space_args.stage_strides`, default 2, 2, 2, 1) halves the side
(3x3..7x7 convs with "same" padding: side -> ceil(side / 2)) only while the side is at least
2, otherwise that stage keeps stride 1. So an 8x8 digit goes 8 -> 4 -> 2 -> 1 -> 1 and a
feature map never shrinks below 1x1.
"""

from __future__ import annotations

from typing import Any

from ._base import Arch, SearchSpace, register_space
from .layers.mbconv_plan import BlockSpec, NetSpec
from .validation import ArgumentError, positive_int

Number = int | float


def scale_channels(channels: int, width: float) -> int:
    """Channels under a width multiplier: nearest multiple of 8 (halves up), at least 8."""
    return max(8, int(channels * width / 8 + 0.5) * 8)


def conv_side(side: int, stride: int) -> int:
    """Output side of a conv with an odd kernel and padding kernel // 2."""
    return (side - 1) // stride + 1


def _increasing(field: str, values: Any, kind: type | tuple[type, ...] = int,
                odd: bool = False) -> tuple[Any, ...]:
    """A non-empty, strictly increasing list of positive numbers (the candidate order)."""
    ok = (isinstance(values, list | tuple) and len(values) > 0
          and all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in values)
          and all(a < b for a, b in zip(values[:-1], values[1:], strict=True))
          and (not odd or all(v % 2 == 1 for v in values)))
    if not ok:
        what = "odd positive integers" if odd else "positive numbers" if kind is not int \
            else "positive integers"
        raise ArgumentError(f"{field}", f"must be a non-empty, strictly increasing list of "
                         f"{what}, got {values!r}")
    return tuple(values)


def _candidate(value: Any, candidates: tuple[Any, ...], what: str) -> int:
    """Index of `value` among `candidates` (numbers; a bool or a string is never one)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        for i, c in enumerate(candidates):
            if value == c:
                return i
    raise ValueError(f"{what} must be one of {list(candidates)}, got {value!r}")


@register_space
class MBConvSpace(SearchSpace):
    """Elastic MobileNetV3-like space: resolution, width, per-stage depth, per-block kernel
    and expand ratio; `supernet()` gives the weight-sharing supernet."""

    name = "mbconv"
    description = ("elastic MBConv (OFA / BigNAS): per-stage depth, per-block kernel and expand "
                   "ratio, width multiplier, input resolution; weight-sharing supernet")
    conditional = True

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        stage_channels: list[int] | tuple[int, ...] = (24, 32, 48, 64),
        stage_strides: list[int] | tuple[int, ...] = (2, 2, 2, 1),
        stem_channels: int = 16,
        head_channels: int = 128,
        depths: list[int] | tuple[int, ...] = (2, 3, 4),
        kernel_sizes: list[int] | tuple[int, ...] = (3, 5, 7),
        expand_ratios: list[int] | tuple[int, ...] = (3, 4, 6),
        width_mults: list[Number] | tuple[Number, ...] = (0.75, 1.0),
        resolutions: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_channels = positive_int("input_channels", input_channels)
        self.input_size = positive_int("input_size", input_size)
        self.stem_channels = positive_int("stem_channels", stem_channels)
        self.head_channels = positive_int("head_channels", head_channels)
        if not (isinstance(stage_channels, list | tuple) and stage_channels
                and all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                        for c in stage_channels)):
            raise ArgumentError("stage_channels", "must be a non-empty list of positive integers "
                                                  f"(one per stage), got {stage_channels!r}")
        if not (isinstance(stage_strides, list | tuple)
                and len(stage_strides) == len(stage_channels)
                and all(type(s) is int and s in (1, 2) for s in stage_strides)):
            raise ArgumentError("stage_strides", "must list a stride 1 or 2 for each of the "
                                                 f"{len(stage_channels)} stages, "
                                                 f"got {stage_strides!r}")
        self.stage_channels = tuple(stage_channels)
        self.stage_strides = tuple(stage_strides)
        self.depths = _increasing("depths", depths)
        self.kernel_sizes = _increasing("kernel_sizes", kernel_sizes, odd=True)
        self.expand_ratios = _increasing("expand_ratios", expand_ratios)
        self.width_mults = tuple(float(w) for w in _increasing("width_mults", width_mults,
                                                                 (int, float)))
        if len({repr(w) for w in self.width_mults}) != len(self.width_mults):
            raise ArgumentError("width_mults", f"must be distinct, got {width_mults!r}")
        self.resolutions = _increasing(
            "resolutions", [input_size] if resolutions is None else resolutions)
        self.max_depth = self.depths[-1]
        self._width_by_text = {repr(w): w for w in self.width_mults}

    # ---- the symbolic definition ------------------------------------------------------------
    def template(self) -> Any:
        import pyglove as pg

        def stage() -> Any:
            blocks = [pg.Dict(kernel=pg.oneof(list(self.kernel_sizes)),
                              expand=pg.oneof(list(self.expand_ratios)))
                      for _ in range(self.max_depth)]
            return pg.Dict(depth=pg.oneof(list(self.depths)), blocks=pg.List(blocks))

        return pg.Dict(resolution=pg.oneof(list(self.resolutions)),
                       width=pg.oneof(list(self.width_mults)),
                       stages=pg.List([stage() for _ in self.stage_channels]))

    def _stage_length(self) -> int:
        return 1 + 2 * self.max_depth

    def choice_counts(self) -> list[int]:
        stage = [len(self.depths)] + [len(self.kernel_sizes), len(self.expand_ratios)] \
            * self.max_depth
        return [len(self.resolutions), len(self.width_mults)] + stage * len(self.stage_channels)

    def active(self, dna: list[int]) -> list[bool]:
        out = [True, True]
        step = self._stage_length()
        for s in range(len(self.stage_channels)):
            depth = self.depths[dna[2 + s * step]]
            out.append(True)
            for j in range(self.max_depth):
                out += [j < depth, j < depth]
        return out

    def size(self) -> int:
        per_block = len(self.kernel_sizes) * len(self.expand_ratios)
        per_stage = sum(per_block ** d for d in self.depths)
        return len(self.resolutions) * len(self.width_mults) * per_stage ** len(self.stage_channels)

    # ---- DNA <-> arch <-> key -----------------------------------------------------------------
    def to_dna(self, arch: Arch) -> list[int]:
        if not isinstance(arch, dict) or set(arch) != {"resolution", "width", "stages"}:
            raise ValueError("an mbconv architecture is {'resolution', 'width', 'stages'}, got "
                             f"{arch!r}")
        stages = arch["stages"]
        if not isinstance(stages, list) or len(stages) != len(self.stage_channels):
            raise ValueError(f"'stages' must be a list of {len(self.stage_channels)} stages, "
                             f"got {stages!r}")
        dna = [_candidate(arch["resolution"], self.resolutions, "resolution"),
               _candidate(arch["width"], self.width_mults, "width")]
        for s, stage in enumerate(stages):
            if not isinstance(stage, dict) or set(stage) != {"depth", "blocks"}:
                raise ValueError(f"stage {s} must be {{'depth', 'blocks'}}, got {stage!r}")
            blocks = stage["blocks"]
            if not isinstance(blocks, list) or len(blocks) != self.max_depth:
                raise ValueError(f"stage {s} must list {self.max_depth} blocks (the inactive "
                                 f"ones too), got {blocks!r}")
            dna.append(_candidate(stage["depth"], self.depths, f"depth of stage {s}"))
            for j, block in enumerate(blocks):
                if not isinstance(block, dict) or set(block) != {"kernel", "expand"}:
                    raise ValueError(f"block {j} of stage {s} must be {{'kernel', 'expand'}}, "
                                     f"got {block!r}")
                dna.append(_candidate(block["kernel"], self.kernel_sizes,
                                      f"kernel of block {j} of stage {s}"))
                dna.append(_candidate(block["expand"], self.expand_ratios,
                                      f"expand of block {j} of stage {s}"))
        return dna

    def from_dna(self, dna: list[int]) -> Arch:
        dna = self.canonical_dna(dna)
        step = self._stage_length()
        stages = []
        for s in range(len(self.stage_channels)):
            part = dna[2 + s * step: 2 + (s + 1) * step]
            blocks = [{"kernel": self.kernel_sizes[part[1 + 2 * j]],
                       "expand": self.expand_ratios[part[2 + 2 * j]]}
                      for j in range(self.max_depth)]
            stages.append({"depth": self.depths[part[0]], "blocks": blocks})
        return {"resolution": self.resolutions[dna[0]], "width": self.width_mults[dna[1]],
                "stages": stages}

    def key(self, arch: Arch) -> str:
        fields = [f"r{arch['resolution']}", f"w{float(arch['width'])!r}"]
        for stage in arch["stages"]:
            blocks = stage["blocks"][:stage["depth"]]
            fields.append(",".join(f"k{b['kernel']}e{b['expand']}" for b in blocks))
        return "|".join(fields)

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str):
            raise ValueError(f"an mbconv key must be a string, got {key!r}")
        fields = key.split("|")
        n = len(self.stage_channels)
        if len(fields) != 2 + n:
            raise ValueError(f"an mbconv key has {2 + n} fields separated by '|' "
                             f"('r<resolution>|w<width>|' and one per stage), got {key!r}")
        res_text, width_text = fields[0], fields[1]
        if not res_text.startswith("r") or res_text[1:] not in {str(r) for r in self.resolutions}:
            raise ValueError(f"the first field of {key!r} must be 'r<resolution>' with a "
                             f"resolution in {list(self.resolutions)}")
        if not width_text.startswith("w") or width_text[1:] not in self._width_by_text:
            raise ValueError(f"the second field of {key!r} must be 'w<width>' with a width in "
                             f"{list(self._width_by_text)}")
        stages = [self._parse_stage(s, text, key) for s, text in enumerate(fields[2:])]
        return self.from_dna(self.to_dna({"resolution": int(res_text[1:]),
                                          "width": self._width_by_text[width_text[1:]],
                                          "stages": stages}))

    def _parse_stage(self, s: int, text: str, key: str) -> dict[str, Any]:
        tokens = text.split(",")
        if len(tokens) not in self.depths:
            raise ValueError(f"stage {s} of {key!r} lists {len(tokens)} blocks; its depth must "
                             f"be one of {list(self.depths)}")
        kernels = {str(k): k for k in self.kernel_sizes}
        ratios = {str(e): e for e in self.expand_ratios}
        blocks = []
        for j, token in enumerate(tokens):
            kernel, sep, ratio = token.removeprefix("k").partition("e")
            if not token.startswith("k") or sep != "e" or kernel not in kernels \
                    or ratio not in ratios:
                raise ValueError(f"block {j} of stage {s} of {key!r} must read 'k<kernel>e<ratio>'"
                                 f" with a kernel in {list(kernels)} and a ratio in "
                                 f"{list(ratios)}, got {token!r}")
            blocks.append({"kernel": kernels[kernel], "expand": ratios[ratio]})
        filler = {"kernel": self.kernel_sizes[0], "expand": self.expand_ratios[0]}
        return {"depth": len(blocks), "blocks": blocks + [filler] * (self.max_depth - len(blocks))}

    # ---- the network ----------------------------------------------------------------------------
    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        side = self.input_size if arch is None else self.net_spec(arch).resolution
        return (self.input_channels, side, side)

    def net_spec(self, arch: Arch) -> NetSpec:
        """Every layer size of `arch`'s network (validates `arch`; inactive blocks ignored)."""
        dna = self.to_dna(arch)
        width = self.width_mults[dna[1]]
        side = self.resolutions[dna[0]]
        stem = scale_channels(self.stem_channels, width)
        c_in = stem
        blocks = []
        for s, stage in enumerate(arch["stages"]):
            c_out = scale_channels(self.stage_channels[s], width)
            for j, block in enumerate(stage["blocks"][:stage["depth"]]):
                stride = 2 if j == 0 and self.stage_strides[s] == 2 and side >= 2 else 1
                side_out = conv_side(side, stride)
                blocks.append(BlockSpec(stage=s, index=j, c_in=c_in, mid=c_in * block["expand"],
                                        c_out=c_out, kernel=block["kernel"], stride=stride,
                                        side_in=side, side_out=side_out))
                c_in, side = c_out, side_out
        return NetSpec(input_channels=self.input_channels, resolution=self.resolutions[dna[0]],
                       stem=stem, first=stem, blocks=tuple(blocks),
                       head=scale_channels(self.head_channels, width),
                       num_classes=self.num_classes)

    def max_arch(self) -> Arch:
        """The largest architecture: its network holds every weight of the supernet."""
        return self.from_dna([c - 1 for c in self.choice_counts()])

    def min_arch(self) -> Arch:
        return self.from_dna([0] * len(self.choice_counts()))

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        from .layers.mbconv_net import MBConvNet

        if kwargs:
            raise TypeError(f"MBConvSpace.build() takes no options, got {sorted(kwargs)}")
        return MBConvNet(self.net_spec(arch))

    def supernet(self) -> Any:
        """The weight-sharing `MBConvSupernet` (largest weights; `supernet(x, arch)` runs a
        subnet on slices of them, `supernet.extract(arch)` copies one out)."""
        from .layers.mbconv_net import MBConvSupernet

        return MBConvSupernet(self)

    # ---- analytic cost model (exact for the network `build` returns) ---------------------------
    def params(self, arch: Arch) -> int:
        spec = self.net_spec(arch)
        c0 = spec.stem
        total = spec.input_channels * c0 * 9 + 2 * c0           # stem conv + BN
        total += c0 * 9 + 2 * c0 + c0 * spec.first + 2 * spec.first  # separable block
        for b in spec.blocks:
            total += b.c_in * b.mid + 2 * b.mid                  # expand 1x1 + BN
            total += b.mid * b.kernel ** 2 + 2 * b.mid           # depthwise + BN
            total += b.mid * b.c_out + 2 * b.c_out               # project 1x1 + BN
        total += spec.last_channels * spec.head + 2 * spec.head  # head 1x1 + BN
        return total + spec.head * spec.num_classes + spec.num_classes

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions and the classifier (the `torch.utils.flop_counter` rule)."""
        spec = self.net_spec(arch)
        c0, area = spec.stem, spec.resolution ** 2
        macs = spec.input_channels * c0 * 9 * area + c0 * 9 * area + c0 * spec.first * area
        for b in spec.blocks:
            out_area = b.side_out ** 2
            macs += b.c_in * b.mid * b.side_in ** 2 + b.mid * b.kernel ** 2 * out_area \
                + b.mid * b.c_out * out_area
        macs += spec.last_channels * spec.head * spec.last_side ** 2
        macs += spec.head * spec.num_classes
        return 2 * macs
