"""A hierarchical vision-transformer space after As-ViT (Chen et al., ICLR 2022, "Auto-scaling
Vision Transformers without Training"; reference: VITA-Group/AsViT).

The network (`layers/vit_net.py`): an overlapping patch embedding (k x k conv of stride
`patch_stride`, LayerNorm), then `stages` stages of pre-norm transformer blocks; before every
stage but the first, a token reduction (LayerNorm, k x k conv of stride 2) halves the token
grid and doubles the width. Final LayerNorm, mean over tokens, linear classifier. No position
embedding: as in As-ViT, the overlapping, zero-padded kernels carry position.

Decisions (all single choices, a flat DNA in this order), As-ViT's topology per stage plus
its two scaling dimensions:

* `kernels[s]`: stage 0, the patch-embedding kernel (As-ViT's patch size K1: kernel >= stride,
  overlapping patches); stage s > 0, the token-reduction kernel K_s;
* `splits[s]`: attention split S_s: the token grid of the stage is cut into S_s x S_s windows
  and attention runs within each (1: global attention);
* `ratios[s]`: MLP expansion ratio E_s;
* `depths[s]`: number of blocks L_s of the stage;
* `heads`: heads of the last stage, H; stage s has H / 2^(stages-1-s) heads, so the head
  dimension is the same in every stage (As-ViT: H/8, H/4, H/2, H);
* `width`: the embedding width C of stage 0; stage s has width C * 2^s.

The token grid of stage s has side floor(input_size / patch_stride / 2^s), at least 1; every
split must divide its stage's side. Attention is written with explicit matmuls, so `flops()`
(2 x MACs of convolutions, linear layers and the two attention matmuls) equals
`torch.utils.flop_counter`'s count exactly, and `params()` the parameter count.

space_args: `num_classes` (10), `input_channels` (3), `input_size` (32), `patch_stride` (4),
`stages` (3), `widths` (candidates of C, default [16, 24, 32, 40, 48, 64]), `heads`
(candidates of H, default [4, 8, 16]), `ratios` (MLP ratios, [2, 3, 4, 5, 6] as As-ViT),
`depths` ([1, 2, 3, 4]), `patch_kernels` (default patch_stride..2 x patch_stride, [1, 2, 3]
for stride 1), `reduction_kernels` ([2, 3, 4] as As-ViT), `splits` (one list per stage;
default those of 1, 2, 4 that divide the stage's side into windows of side >= 2; 1
only in the last stage, as As-ViT).

Canonical key: As-ViT's genotype string, `K,S,E,L|K,S,E,L|...|H,C`, for example
`4,2,3,1|2,1,4,2|3,1,6,1|8,32`.
"""

from __future__ import annotations

from typing import Any

from ._base import Arch, SearchSpace, register_space
from .layers.vit_plan import StageSpec
from .validation import ArgumentError, positive_int

_ARCH_FIELDS = ("kernels", "splits", "ratios", "depths", "heads", "width")
_PER_STAGE = ("kernels", "splits", "ratios", "depths")


def _candidates(field: str, values: Any, low: int = 1) -> tuple[int, ...]:
    """A non-empty list of distinct integers >= low."""
    if not isinstance(values, list | tuple) or not values:
        raise ArgumentError(field, f"must be a non-empty list of integers, got {values!r}")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ArgumentError(field, f"must hold integers >= {low}, got {v!r}")
    if len(set(values)) != len(values):
        raise ArgumentError(field, f"has repeated values: {list(values)}")
    return tuple(values)


def _parse_int(text: str) -> int | None:
    """A canonical non-negative decimal integer (ASCII digits, no sign, no leading zero)."""
    if not (text.isascii() and text.isdigit()) or str(int(text)) != text:
        return None
    return int(text)


@register_space
class ViTSpace(SearchSpace):
    """As-ViT's hierarchical ViT: per stage the token-reduction/patch kernel, attention split,
    MLP ratio and depth; the heads and the embedding width."""

    name = "vit"
    description = ("hierarchical vision transformer (As-ViT): per stage patch/reduction kernel, "
                   "attention split, MLP ratio and depth; heads and embedding width")

    def __init__(
        self,
        num_classes: int = 10,
        input_channels: int = 3,
        input_size: int = 32,
        patch_stride: int = 4,
        stages: int = 3,
        widths: Any = (16, 24, 32, 40, 48, 64),
        heads: Any = (4, 8, 16),
        ratios: Any = (2, 3, 4, 5, 6),
        depths: Any = (1, 2, 3, 4),
        patch_kernels: Any = None,
        reduction_kernels: Any = (2, 3, 4),
        splits: Any = None,
    ) -> None:
        self.num_classes = positive_int("num_classes", num_classes)
        self.input_channels = positive_int("input_channels", input_channels)
        self.input_size = positive_int("input_size", input_size)
        self.patch_stride = positive_int("patch_stride", patch_stride)
        self.stages = positive_int("stages", stages)
        self.sides = tuple(self.input_size // self.patch_stride // 2 ** s
                           for s in range(self.stages))
        if self.sides[-1] < 1:
            raise ArgumentError("stages", f"leaves no token: input_size {self.input_size} / "
                                f"patch_stride {self.patch_stride} / 2^{self.stages - 1} < 1; "
                                f"use fewer stages or a smaller patch_stride")
        self.ratio_options = _candidates("ratios", ratios)
        self.depth_options = _candidates("depths", depths)
        self.head_options = self._check_heads(heads)
        self.width_options = self._check_widths(widths)
        if patch_kernels is None:
            p = self.patch_stride
            patch_kernels = list(range(p, 2 * p + 1)) if p > 1 else [1, 2, 3]
        self.patch_kernels = _candidates("patch_kernels", patch_kernels, low=self.patch_stride)
        self.reduction_kernels = _candidates("reduction_kernels", reduction_kernels, low=2)
        self.split_options = self._check_splits(splits)
        self.kernel_options = (self.patch_kernels,) + (self.reduction_kernels,) * (self.stages - 1)

    # ---- arguments --------------------------------------------------------------------------
    def _check_heads(self, heads: Any) -> tuple[int, ...]:
        options = _candidates("heads", heads)
        step = 2 ** (self.stages - 1)
        for h in options:
            if h % step:
                raise ArgumentError("heads", f"holds {h}, which is not a multiple of "
                                    f"2^(stages-1) = {step} (stage s has H / 2^(stages-1-s) "
                                    "heads)")
        return options

    def _check_widths(self, widths: Any) -> tuple[int, ...]:
        options = _candidates("widths", widths)
        top = 2 ** (self.stages - 1)
        for c in options:
            for h in self.head_options:
                if (c * top) % h:
                    raise ArgumentError("widths", f"holds {c}: the last stage's width {c * top} "
                                        f"is not a multiple of {h} heads")
        return options

    def _check_splits(self, splits: Any) -> tuple[tuple[int, ...], ...]:
        if splits is None:
            return tuple((1,) if s == self.stages - 1 else
                         tuple(d for d in (1, 2, 4) if side % d == 0 and (d == 1 or side // d >= 2))
                         for s, side in enumerate(self.sides))
        if not isinstance(splits, list | tuple) or len(splits) != self.stages:
            raise ArgumentError("splits", f"must be a list of {self.stages} lists (one per "
                                f"stage), got {splits!r}")
        out = []
        for s, options in enumerate(splits):
            options = _candidates(f"splits[{s}]", options)
            for d in options:
                if self.sides[s] % d:
                    raise ArgumentError(f"splits[{s}]", f"holds {d}, which does not divide the "
                                        f"stage's token grid side {self.sides[s]}")
            out.append(options)
        return tuple(out)

    # ---- decisions ------------------------------------------------------------------------
    def _options(self) -> list[tuple[str, list[tuple[int, ...]]]]:
        n = self.stages
        return [("kernels", list(self.kernel_options)), ("splits", list(self.split_options)),
                ("ratios", [self.ratio_options] * n), ("depths", [self.depth_options] * n)]

    def template(self) -> Any:
        import pyglove as pg

        fields = {name: pg.List([pg.oneof(list(o)) for o in options])
                  for name, options in self._options()}
        return pg.Dict(**fields, heads=pg.oneof(list(self.head_options)),
                       width=pg.oneof(list(self.width_options)))

    def choice_counts(self) -> list[int]:
        counts = [len(o) for _, options in self._options() for o in options]
        return counts + [len(self.head_options), len(self.width_options)]

    def to_dna(self, arch: Arch) -> list[int]:
        if not isinstance(arch, dict) or set(arch) != set(_ARCH_FIELDS):
            got = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
            raise ValueError("a vit architecture is {'kernels', 'splits', 'ratios', 'depths': "
                             "[one per stage], 'heads': int, 'width': int}, got " + str(got))
        dna: list[int] = []
        for name, options in self._options():
            values = arch[name]
            if not isinstance(values, list) or len(values) != len(options):
                raise ValueError(f"vit architecture field {name!r} must be a list of "
                                 f"{len(options)} values, got {values!r}")
            dna += [self._index(f"{name}[{i}]", v, o)
                    for i, (v, o) in enumerate(zip(values, options, strict=True))]
        dna.append(self._index("heads", arch["heads"], self.head_options))
        dna.append(self._index("width", arch["width"], self.width_options))
        return dna

    @staticmethod
    def _index(field: str, value: Any, options: tuple[int, ...]) -> int:
        if type(value) is not int or value not in options:  # True == 1 must not pass
            raise ValueError(f"{field} = {value!r} is not one of {list(options)}")
        return options.index(value)

    def from_dna(self, dna: list[int]) -> Arch:
        arch: Arch = {}
        i = 0
        for name, options in self._options():
            arch[name] = [o[d] for o, d in zip(options, dna[i:i + len(options)], strict=True)]
            i += len(options)
        arch["heads"] = self.head_options[dna[i]]
        arch["width"] = self.width_options[dna[i + 1]]
        return arch

    # ---- canonical key (As-ViT's genotype string) ----------------------------------------------
    def key(self, arch: Arch) -> str:
        stages = ("|".join(",".join(str(arch[f][s]) for f in _PER_STAGE)
                           for s in range(self.stages)))
        return f"{stages}|{arch['heads']},{arch['width']}"

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str):
            raise ValueError(f"a vit key must be a string, got {type(key).__name__}")
        parts = key.split("|")
        if len(parts) != self.stages + 1:
            raise ValueError(f"vit key {key!r} needs {self.stages} stages and 'heads,width' "
                             f"separated by '|', got {len(parts)} parts")
        arch: Arch = {f: [] for f in _PER_STAGE}
        for s, part in enumerate(parts[:-1]):
            values = [_parse_int(t) for t in part.split(",")]
            if len(values) != 4 or None in values:
                raise ValueError(f"stage {s} of vit key {key!r} must read 'kernel,split,ratio,"
                                 f"depth' (integers), got {part!r}")
            for f, v in zip(_PER_STAGE, values, strict=True):
                arch[f].append(v)
        tail = [_parse_int(t) for t in parts[-1].split(",")]
        if len(tail) != 2 or None in tail:
            raise ValueError(f"the last part of vit key {key!r} must read 'heads,width', got "
                             f"{parts[-1]!r}")
        arch["heads"], arch["width"] = tail
        self.to_dna(arch)  # every value among its candidates
        return arch

    # ---- the network ---------------------------------------------------------------------------
    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        return (self.input_channels, self.input_size, self.input_size)

    def plan(self, arch: Arch) -> list[StageSpec]:
        """The stages of `arch` with widths, heads and token grid sides (validates)."""
        self.to_dna(arch)
        n = self.stages
        return [StageSpec(kernel=arch["kernels"][s], split=arch["splits"][s],
                          ratio=arch["ratios"][s], depth=arch["depths"][s],
                          width=arch["width"] * 2 ** s, heads=arch["heads"] // 2 ** (n - 1 - s),
                          side=self.sides[s]) for s in range(n)]

    def build(self, arch: Arch, **kwargs: Any) -> Any:
        from .layers.vit_net import ViTNetwork

        return ViTNetwork(self.plan(arch), input_channels=self.input_channels,
                          patch_stride=self.patch_stride,
                          num_classes=kwargs.get("num_classes", self.num_classes))

    # ---- analytic cost model (exact for the network `build` returns) ---------------------
    def params(self, arch: Arch) -> int:
        plan = self.plan(arch)
        first, last = plan[0], plan[-1]
        total = first.kernel ** 2 * self.input_channels * first.width + first.width  # conv
        total += 2 * first.width  # its LayerNorm
        for s, spec in enumerate(plan):
            c = spec.width
            if s > 0:
                prev = plan[s - 1].width
                total += 2 * prev + spec.kernel ** 2 * prev * c  # LayerNorm + conv (no bias)
            hidden = spec.ratio * c
            block = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c \
                + (c * hidden + hidden) + (hidden * c + c)
            total += spec.depth * block
        return total + 2 * last.width + last.width * self.num_classes + self.num_classes

    def flops(self, arch: Arch) -> int:
        """2 x MACs of convolutions, linear layers and attention matmuls (the
        `torch.utils.flop_counter` rule: norms, activations, softmax, adds, pooling count 0)."""
        plan = self.plan(arch)
        first = plan[0]
        macs = first.kernel ** 2 * self.input_channels * first.width * first.side ** 2
        for s, spec in enumerate(plan):
            c, tokens = spec.width, spec.side ** 2
            if s > 0:
                macs += spec.kernel ** 2 * plan[s - 1].width * c * tokens
            window_tokens = (spec.side // spec.split) ** 2
            attention = 2 * tokens * window_tokens * c  # q k^T and weights v, every window
            block = 4 * c * c * tokens + attention + 2 * spec.ratio * c * c * tokens
            macs += spec.depth * block
        return 2 * (macs + plan[-1].width * self.num_classes)
