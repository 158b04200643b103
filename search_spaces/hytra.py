"""BossNAS's HyTra space (Li et al., ICCV 2021): hybrid CNN-transformers on a fabric of scales.

The network is a stem, `layers` layers and a classifier (global average pooling, linear).
The fabric has one scale per entry of `widths`: scale 0 is the stem's resolution, each next
scale halves the side and has its own width (`widths[s]`). Every layer makes two decisions:

* `down[i]` (0 or 1): stay at the scale of the previous layer, or go down one scale (a
  stride-2 entry and shortcut). The downsampling path is monotone by construction: never up,
  at most one scale per layer. Once the last scale is reached, `down[i]` is inactive (0).
* `ops[i]`: `resconv` (ResConv, a residual bottleneck convolution block) or `resatt`
  (ResAtt, a residual bottleneck self-attention block, BoTNet-like), see
  `layers.hytra_net`. As in the paper, ResAtt exists only at the scales in
  `attention_scales` (default: the two lowest resolutions; attention at high resolution is
  too costly); at any other scale `ops[i]` is inactive (`resconv`).

So the space is conditional (OFA's convention, see `_base`): an architecture always lists
every decision, the inactive ones at their first candidate. The paper's space has 16 layers
and 4 scales (1/4 to 1/32 of ImageNet's 224 px) with widths 256..2048; the defaults here are
a small instance (8 layers, widths 16..128) for 32x32 inputs, and `input_size: 8,
input_channels: 1, stem_stride: 1` makes it train on 8x8 digits.

Canonical key: one token per layer, the op's letter (`C` ResConv, `A` ResAtt) and the scale
the layer outputs, joined by `-`: `C0-C1-C1-A2-A2-C3-A3-A3`.

space_args: `num_classes`, `input_channels`, `input_size`, `layers` (default 8), `widths`
(one width per scale, at least two scales, multiples of 4; default [16, 32, 64, 128]),
`attention_scales` (scale indices; default the last two), `head_dim` (8; the inner width
`widths[s] // 4` of an attention scale must be a multiple of it), `stem_stride` (1 or 2;
default 2). `flops()` (2 x MACs of convolutions, the linear layer and the two attention
matmuls) equals `torch.utils.flop_counter`'s count exactly; `params()` the model's count.
"""

from __future__ import annotations

from typing import Any

from ._base import Arch, SearchSpace, register_space
from .layers.hytra_plan import EXPANSION, LayerSpec
from .validation import ArgumentError, positive_int

OPS: tuple[str, ...] = ("resconv", "resatt")
LETTERS = {"resconv": "C", "resatt": "A"}
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
_ARCH_FIELDS = ("down", "ops")


def half(side: int) -> int:
    """Output side of a stride-2 3x3 conv with padding 1."""
    return (side - 1) // 2 + 1


def _check_widths(widths: Any) -> tuple[int, ...]:
    if not isinstance(widths, list | tuple) or len(widths) < 2:
        raise ArgumentError("widths", f"must be a list of at least 2 widths (one per scale), "
                                      f"got {widths!r}")
    for s, w in enumerate(widths):
        if not isinstance(w, int) or isinstance(w, bool) or w < EXPANSION or w % EXPANSION:
            raise ArgumentError(f"widths[{s}]", f"must be a positive multiple of {EXPANSION}, "
                                                f"got {w!r}")
    return tuple(widths)


def _check_attention_scales(value: Any, scales: int) -> tuple[int, ...]:
    if value is None:
        return tuple(range(max(0, scales - 2), scales))
    if not isinstance(value, list | tuple):
        raise ArgumentError("attention_scales", f"must be a list of scale indices, got "
                                                f"{value!r}")
    for s in value:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < scales:
            raise ArgumentError("attention_scales", f"must hold scale indices in "
                                                    f"[0, {scales - 1}], got {s!r}")
    if len(set(value)) != len(value):
        raise ArgumentError("attention_scales", f"has repeated scales: {list(value)}")
    return tuple(sorted(value))


@register_space
class HyTraSpace(SearchSpace):
    """BossNAS's HyTra: per layer ResConv or ResAtt, and stay or go down one scale of a
    fabric of resolutions (monotone downsampling path); pooled linear classifier."""

    name = "hytra"
    description = ("BossNAS HyTra: per layer ResConv/ResAtt on a fabric of scales, monotone "
                   "downsampling path (stay or down one per layer)")
    conditional = True

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        layers: int = 8,
        widths: Any = DEFAULT_WIDTHS,
        attention_scales: Any = None,
        head_dim: int = 8,
        stem_stride: int = 2,
    ) -> None:
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_channels = positive_int("input_channels", input_channels)
        self.input_size = positive_int("input_size", input_size)
        self.layers = positive_int("layers", layers)
        self.widths = _check_widths(widths)
        self.head_dim = positive_int("head_dim", head_dim)
        self.attention_scales = _check_attention_scales(attention_scales, len(self.widths))
        for s in self.attention_scales:
            if (self.widths[s] // EXPANSION) % self.head_dim:
                raise ArgumentError("head_dim", f"must divide the inner width widths[{s}] // "
                                                f"{EXPANSION} = {self.widths[s] // EXPANSION} "
                                                f"of attention scale {s}, got {head_dim}")
        if stem_stride not in (1, 2) or isinstance(stem_stride, bool):
            raise ArgumentError("stem_stride", f"must be 1 or 2, got {stem_stride!r}")
        self.stem_stride = int(stem_stride)

    @property
    def scales(self) -> int:
        return len(self.widths)

    # ---- decisions ------------------------------------------------------------------------
    def template(self) -> Any:
        import pyglove as pg

        return pg.Dict(down=pg.List([pg.oneof([0, 1]) for _ in range(self.layers)]),
                       ops=pg.List([pg.oneof(list(OPS)) for _ in range(self.layers)]))

    def choice_counts(self) -> list[int]:
        return [2] * (2 * self.layers)

    def layer_scales(self, down: list[int]) -> list[int]:
        """The scale each layer outputs (downs past the last scale count as stays)."""
        scale, out = 0, []
        for d in down:
            scale = min(self.scales - 1, scale + int(d))
            out.append(scale)
        return out

    def active(self, dna: list[int]) -> list[bool]:
        n = self.layers
        before = [0, *self.layer_scales(dna[:n])[:-1]]  # the scale each layer starts at
        scales = self.layer_scales(dna[:n])
        return ([b < self.scales - 1 for b in before]
                + [s in self.attention_scales for s in scales])

    def size(self) -> int:
        """Paths through the fabric, each weighted by its op choices (dynamic programming
        over the scale after each layer)."""
        counts = {0: 1}
        for _ in range(self.layers):
            nxt: dict[int, int] = {}
            for scale, ways in counts.items():
                for s in {scale, min(scale + 1, self.scales - 1)}:
                    ops = 2 if s in self.attention_scales else 1
                    nxt[s] = nxt.get(s, 0) + ways * ops
            counts = nxt
        return sum(counts.values())

    def to_dna(self, arch: Arch) -> list[int]:
        if not isinstance(arch, dict) or set(arch) != set(_ARCH_FIELDS):
            got = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
            raise ValueError("a hytra architecture is {'down': [0 or 1 per layer], 'ops': "
                             f"[resconv or resatt per layer]}}, got {got}")
        down, ops = arch["down"], arch["ops"]
        for field, values in (("down", down), ("ops", ops)):
            if not isinstance(values, list) or len(values) != self.layers:
                raise ValueError(f"hytra architecture field {field!r} must be a list of "
                                 f"{self.layers} values, got {values!r}")
        for i, d in enumerate(down):
            if type(d) is not int or d not in (0, 1):
                raise ValueError(f"down[{i}] = {d!r} is not 0 or 1")
        for i, op in enumerate(ops):
            if not isinstance(op, str) or op not in OPS:
                raise ValueError(f"ops[{i}] = {op!r} is not one of {list(OPS)}")
        dna = [*down, *(OPS.index(op) for op in ops)]
        for i, (value, on) in enumerate(zip(dna, self.active(dna), strict=True)):
            if value and not on:
                field, j = ("down", i) if i < self.layers else ("ops", i - self.layers)
                why = ("the path is already at the last scale" if field == "down" else
                       f"ResAtt exists only at scales {list(self.attention_scales)}")
                raise ValueError(f"{field}[{j}] = {arch[field][j]!r} is not allowed: {why}")
        return dna

    def from_dna(self, dna: list[int]) -> Arch:
        dna = self.canonical_dna(list(dna))
        n = self.layers
        return {"down": [int(d) for d in dna[:n]], "ops": [OPS[int(i)] for i in dna[n:]]}

    # ---- canonical key ---------------------------------------------------------------------
    def key(self, arch: Arch) -> str:
        scales = self.layer_scales(arch["down"])
        return "-".join(f"{LETTERS[op]}{s}" for op, s in zip(arch["ops"], scales, strict=True))

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str):
            raise ValueError(f"a hytra key must be a string, got {type(key).__name__}")
        tokens = key.split("-")
        if len(tokens) != self.layers:
            raise ValueError(f"hytra key {key!r} needs {self.layers} layers separated by '-', "
                             f"got {len(tokens)}")
        letters = {v: k for k, v in LETTERS.items()}
        down, ops, scale = [], [], 0
        for i, token in enumerate(tokens):
            digits = token[1:]
            if not token or token[0] not in letters or not (digits.isascii() and digits.isdigit())\
                    or str(int(digits)) != digits:
                raise ValueError(f"layer {i} of hytra key {key!r} must read C<scale> or "
                                 f"A<scale>, got {token!r}")
            step = int(digits) - scale
            if step not in (0, 1) or int(digits) >= self.scales:
                raise ValueError(f"layer {i} of hytra key {key!r} is at scale {digits} after "
                                 f"scale {scale}: a layer stays or goes down one scale (of "
                                 f"{self.scales})")
            scale = int(digits)
            down.append(step)
            ops.append(letters[token[0]])
        arch = {"down": down, "ops": ops}
        self.to_dna(arch)  # ResAtt only at attention scales
        return arch

    # ---- the network ---------------------------------------------------------------------------
    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        return (self.input_channels, self.input_size, self.input_size)

    def stem_side(self) -> int:
        return self.input_size if self.stem_stride == 1 else half(self.input_size)

    def plan(self, arch: Arch) -> list[LayerSpec]:
        """The layers of `arch` with their widths, strides and spatial sides (validates)."""
        self.to_dna(arch)
        out, scale, side = [], 0, self.stem_side()
        for down, op in zip(arch["down"], arch["ops"], strict=True):
            new_scale = scale + down
            new_side = half(side) if down else side
            out.append(LayerSpec(op, self.widths[scale], self.widths[new_scale], bool(down),
                                 side, new_side))
            scale, side = new_scale, new_side
        return out

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        from .layers.hytra_net import HyTraNetwork

        return HyTraNetwork(self.plan(arch), input_channels=self.input_channels,
                            stem_width=self.widths[0], stem_stride=self.stem_stride,
                            num_classes=kwargs.get("num_classes", self.num_classes),
                            head_dim=self.head_dim)

    # ---- analytic cost model (exact for the network `build` returns) ---------------------
    def params(self, arch: Arch) -> int:
        c0, plan = self.widths[0], self.plan(arch)
        total = self.input_channels * c0 * 9 + 2 * c0
        total += sum(layer_params(spec) for spec in plan)
        return total + plan[-1].c_out * self.num_classes + self.num_classes

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions, the linear layer and attention matmuls (the
        `torch.utils.flop_counter` rule: norms, activations, softmax, adds count 0)."""
        c0, side, plan = self.widths[0], self.stem_side(), self.plan(arch)
        macs = self.input_channels * c0 * 9 * side * side
        macs += sum(layer_macs(spec) for spec in plan)
        return 2 * (macs + plan[-1].c_out * self.num_classes)


def _projects(spec: LayerSpec) -> bool:
    return spec.down or spec.c_in != spec.c_out


def layer_params(spec: LayerSpec) -> int:
    """Parameters of one layer (`hytra_net.HyTraLayer`)."""
    c_in, c = spec.c_in, spec.c_out
    mid = c // EXPANSION
    entry = c_in * mid + 9 * mid + 2 * mid
    shortcut = c_in * c * 9 + 2 * c if _projects(spec) else 0
    core = mid * mid * 9 if spec.op == "resconv" else 3 * mid * mid
    return entry + shortcut + core + 2 * mid + mid * c + 2 * c


def layer_macs(spec: LayerSpec) -> int:
    """Multiply-accumulates of one layer for one input."""
    c_in, c = spec.c_in, spec.c_out
    mid = c // EXPANSION
    area_in, area = spec.side_in ** 2, spec.side_out ** 2
    entry = c_in * mid * area_in + 9 * mid * area
    shortcut = c_in * c * 9 * area if _projects(spec) else 0
    if spec.op == "resconv":
        core = mid * mid * 9 * area
    else:  # q/k/v 1x1 convs, then q^T k and v attn^T: tokens^2 x width each
        core = 3 * mid * mid * area + 2 * area * area * mid
    return entry + shortcut + core + mid * c * area
