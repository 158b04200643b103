"""Transformable Architecture Search (TAS; Dong & Yang, NeurIPS 2019): prune a given network
by searching its width and depth, then distil the full network into the pruned one.

The network to prune is an architecture of the `mbconv` space (`arch`, default the space's
largest). TAS's decisions map onto the space's own: the width of a layer is the hidden width
of an MBConv block (its expand ratio: candidates are the space's `expand_ratios` up to the
block's own; the expand and depthwise convs share it), the depth of a stage is the number of
its active blocks (candidates: the space's `depths` up to the stage's own). Kernels, the
width multiplier, the resolution and the stage output channels stay those of `arch`, so
every pruned network is an architecture of the same space (`space.build(found)` loads the
exported weights). Other spaces are refused: `nb201`/`darts` cells have no width or depth
decision, and `hybrid`'s blocks change kind rather than width.

Three phases, one epoch counter (`epochs` in the record is their sum):

1. teacher (`teacher_epochs`): the unpruned network trains on the labels (SGD, Nesterov,
   cosine schedule per step).
2. search (`epochs`): a copy of the teacher becomes the searchable network, with learnable
   logits over the width candidates of every block and the depth candidates of every stage.
   Each forward draws Gumbel-softmax probabilities (`log_softmax(logits) + gumbel) / tau`);
   per block two distinct widths are sampled from them, the expand conv runs once at the
   larger width and each fragment (its first channels) goes through its own BatchNorm; the
   fragments are brought to the larger width by channel-wise interpolation (CWI: output
   channel o averages the input channels of window [floor(o*m/M), ceil((o+1)*m/M))) and summed
   with the renormalised probabilities of the two; the depthwise conv does the same with the
   same two widths. A stage's output is the probability-weighted sum of the feature maps
   after each candidate depth. Weights train on the first half of the training split, the
   logits (Adam) on the second half with `CE + flops_weight * L_flops`, where the FLOPs loss
   is TAS's: `log E[FLOPs]` when the argmax network is above `target_flops`, `-log E[FLOPs]`
   when it is below `target * (1 - flops_tolerance)`, 0 in between. E[FLOPs] is exact under
   the (non-Gumbel) softmax distributions: FLOPs of a block are linear in its width, and a
   block counts with the probability that its stage's depth reaches it. `tau` anneals from
   `tau_max` to `tau_min` by a cosine over the search epochs (TAS: 10 -> 0.1).
3. distillation (`kd_epochs`): the found network (argmax width per block, depth per stage)
   is built as `space.build(found)` and trained with `(1 - kd_alpha) * CE + kd_alpha * T^2 *
   KL(teacher_T || student_T)` (`kd_temperature` T) from the frozen teacher.

Derivation (at the start of phase 3): the argmax network; when it misses the band
[target * (1 - flops_tolerance), target] (TAS just takes it), single steps of one width or
depth candidate, the least log-probability lost per FLOP changed first, bring it under the
target, then up into the band while they stay under. `outcome.archs` is that one network;
its metrics are `distilled_acc`, `teacher_acc` (validation top-1, percent, BatchNorm
statistics recalibrated on the training split), `flops`, `params`, `target_flops`,
`flops_ratio` (of the given network's), `argmax_flops`, `distilled` (0 when stopped before
phase 3). `subnet-1.pt` beside the checkpoint holds the distilled network's state_dict (BN
recalibrated, with the input standardisation), `subnets.json` indexes it. `distill(arch)`
distils the teacher into any other pruned network the same way (a benchmark's peer).

Data parallel (`workers: N`): every rank trains on the whole batch (no `ranks.shard`), so
the result is one rank's, at N times the compute (not exercised by the tests).

Where we simplify: the search starts from the trained teacher's weights (TAS searches from
scratch); the student starts from the teacher's first channels and blocks (`kd_init:
teacher`; `scratch` is TAS's random initialisation); the width multiplier and the stage
output channels are not searched (the space ties a stage's outputs by its residuals); the
derived network is repaired to the target when the argmax misses it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import Arch, SearchSpace
from search_spaces.validation import (
    ArgumentError,
    int_at_least,
    non_negative,
    number_in,
    one_of,
    positive_number,
)

from ._base import WeightSharingSearch, register_search

KD_INITS = ("teacher", "scratch")


# ---- channel-wise interpolation ------------------------------------------------------------
_CWI_CACHE: dict[tuple[int, int, str], torch.Tensor] = {}


def cwi_matrix(m: int, big: int, device: Any = "cpu") -> torch.Tensor:
    """(big, m) averaging matrix of TAS's channel-wise interpolation: output channel o is
    the mean of input channels floor(o*m/big) .. ceil((o+1)*m/big) - 1. A matmul (not
    adaptive pooling) so that it is deterministic on every device."""
    key = (m, big, str(device))
    if key not in _CWI_CACHE:
        matrix = torch.zeros(big, m)
        for o in range(big):
            start, end = (o * m) // big, -((-(o + 1) * m) // big)
            matrix[o, start:end] = 1.0 / (end - start)
        _CWI_CACHE[key] = matrix.to(device)
    return _CWI_CACHE[key]


def cwi(x: torch.Tensor, big: int) -> torch.Tensor:
    """`x` (N, m, H, W) interpolated along channels to `big` channels."""
    m = x.shape[1]
    if m == big:
        return x
    return torch.einsum("om,nmhw->nohw", cwi_matrix(m, big, x.device), x)


# ---- the searchable network -----------------------------------------------------------------
@dataclass(frozen=True)
class BlockChoices:
    """One block of the network to prune and its width candidates (hidden channels)."""

    stage: int
    index: int
    ratios: tuple[int, ...]  # expand ratios, increasing; the last is the block's own
    mids: tuple[int, ...]  # hidden channels of each
    coef: float  # FLOPs per hidden channel of this block


class TASNet(nn.Module):
    """The network to prune (`MBConvNet` of `arch`, holding the full weights) with a
    BatchNorm per width candidate for the expand and depthwise convs of every block, the
    width logits of every block with several candidates and the depth logits of every
    stage with several."""

    def __init__(self, net: nn.Module, blocks: list[BlockChoices],
                 depths: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.net = net
        self.choices = blocks
        self.depths = depths
        self.bn_expand = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(m) for m in b.mids)
                                       for b in blocks)
        self.bn_depthwise = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(m) for m in b.mids)
                                          for b in blocks)
        self.width_logits = nn.ParameterList(
            nn.Parameter(1e-2 * torch.randn(len(b.mids))) for b in blocks)
        self.depth_logits = nn.ParameterList(
            nn.Parameter(1e-2 * torch.randn(len(d))) for d in depths)
        self._copy_bn()

    @torch.no_grad()
    def _copy_bn(self) -> None:
        """Each candidate's BatchNorms start as the first channels of the full one."""
        for i, block in enumerate(self.net.blocks):
            for bns, full in ((self.bn_expand[i], block.expand.bn),
                              (self.bn_depthwise[i], block.depthwise.bn)):
                for bn in bns:
                    c = bn.num_features
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, name).copy_(getattr(full, name)[:c])

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.width_logits, *self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
        net = self.net
        x = net.first(net.stem(x))
        stage_outputs: list[torch.Tensor] = []
        stage = 0
        for i, (block, info) in enumerate(zip(net.blocks, self.choices, strict=True)):
            if info.stage != stage:
                x = self._merge_depth(stage, stage_outputs, tau, generator)
                stage, stage_outputs = info.stage, []
            x = self._block(i, block, x, tau, generator)
            stage_outputs.append(x)
        if stage_outputs:
            x = self._merge_depth(stage, stage_outputs, tau, generator)
        x = net.head(x)
        return net.classifier(torch.flatten(net.pool(x), 1))

    def _block(self, i: int, block: nn.Module, x: torch.Tensor, tau: float,
               generator: torch.Generator) -> torch.Tensor:
        mids = self.choices[i].mids
        if len(mids) == 1:
            index, probs = [0], None
        else:
            index, probs = sample_two(self.width_logits[i], tau, generator)
        big = max(mids[j] for j in index)
        h = F.conv2d(x, block.expand.conv.weight[:big])
        h = self._aggregate(h, self.bn_expand[i], index, probs, mids, block.expand.act)
        dw = block.depthwise.conv
        h = F.conv2d(h, dw.weight[:big], None, dw.stride, dw.padding, 1, big)
        h = self._aggregate(h, self.bn_depthwise[i], index, probs, mids, block.depthwise.act)
        y = block.project.bn(F.conv2d(h, block.project.conv.weight[:, :big]))
        return x + y if block.residual else y

    @staticmethod
    def _aggregate(h: torch.Tensor, bns: nn.ModuleList, index: list[int],
                   probs: torch.Tensor | None, mids: tuple[int, ...],
                   act: nn.Module) -> torch.Tensor:
        """The fragments of the sampled widths (each through its own BN), interpolated to
        the larger width and weighted by their probabilities."""
        if probs is None:
            return act(bns[index[0]](h))
        big = h.shape[1]
        out = 0
        for p, j in zip(probs, index, strict=True):
            out = out + p * cwi(bns[j](h[:, :mids[j]]), big)
        return act(out)

    def _merge_depth(self, stage: int, outputs: list[torch.Tensor], tau: float,
                     generator: torch.Generator) -> torch.Tensor:
        depths = self.depths[stage]
        if len(depths) == 1:
            return outputs[depths[0] - 1]
        probs = gumbel_probs(self.depth_logits[stage], tau, generator)
        big = max(outputs[d - 1].shape[1] for d in depths)
        return sum(p * cwi(outputs[d - 1], big) for p, d in zip(probs, depths, strict=True))

    # ---- FLOPs and the argmax network ------------------------------------------------------
    def depth_reach(self, stage: int, index: int, probs: torch.Tensor | None) -> Any:
        """P(the depth of `stage` exceeds `index`), under `probs` (None: its one depth)."""
        depths = self.depths[stage]
        if probs is None:
            return float(depths[0] > index)
        return sum(p for p, d in zip(probs, depths, strict=True) if d > index)

    def expected_flops(self, fixed: float) -> torch.Tensor:
        """E[FLOPs] under the softmax of the logits (differentiable)."""
        depth_probs = [torch.softmax(d, 0) if len(d) > 1 else None for d in self.depth_logits]
        total: Any = torch.zeros((), device=self.width_logits[0].device)
        for info, logits in zip(self.choices, self.width_logits, strict=True):
            mids = torch.tensor(info.mids, dtype=logits.dtype, device=logits.device)
            width = (torch.softmax(logits, 0) * mids).sum()
            total = total + info.coef * width * self.depth_reach(
                info.stage, info.index, depth_probs[info.stage])
        return total + fixed

    def argmax(self) -> tuple[list[int], list[int]]:
        """The argmax width index of every block and depth index of every stage."""
        with torch.no_grad():
            return ([int(w.argmax()) for w in self.width_logits],
                    [int(d.argmax()) for d in self.depth_logits])

    def log_probs(self) -> tuple[list[list[float]], list[list[float]]]:
        with torch.no_grad():
            return ([torch.log_softmax(w, 0).tolist() for w in self.width_logits],
                    [torch.log_softmax(d, 0).tolist() for d in self.depth_logits])


def gumbel_probs(logits: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Gumbel-softmax probabilities of `logits` at temperature `tau`."""
    u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-7)
    gumbel = (-torch.log(-torch.log(u))).to(logits.device)
    return torch.softmax((torch.log_softmax(logits, 0) + gumbel) / tau, 0)


def sample_two(logits: torch.Tensor, tau: float,
               generator: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """TAS's width sampling: two distinct candidates drawn from the Gumbel-softmax
    probabilities, and their probabilities renormalised over the two (differentiable)."""
    u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-7)
    scores = (torch.log_softmax(logits, 0) + (-torch.log(-torch.log(u))).to(logits.device)) / tau
    probs = torch.softmax(scores.detach().cpu().double(), 0) + 1e-7
    index = sorted(torch.multinomial(probs, 2, replacement=False, generator=generator).tolist())
    return index, torch.softmax(scores[index], 0)


# ---- the search -------------------------------------------------------------------------------
@register_search
class TASSearch(WeightSharingSearch):
    """Transformable Architecture Search: width (per block) and depth (per stage) of a given
    mbconv network by Gumbel-softmax with channel-wise interpolation and a FLOPs loss toward
    a target, then knowledge distillation into the found network."""

    name = "tas"
    description = ("TAS network pruning: Gumbel-softmax width/depth search with channel-wise "
                   "interpolation and a FLOPs target, then distillation from the full network")
    spaces = ("mbconv",)

    def __init__(self, space: SearchSpace, *, arch: Any = None, target_flops: float = 0.5,
                 flops_tolerance: float = 0.05, flops_weight: float = 2.0,
                 tau_max: float = 10.0, tau_min: float = 0.1, teacher_epochs: int = 10,
                 kd_epochs: int = 10, kd_temperature: float = 4.0, kd_alpha: float = 0.9,
                 kd_init: str = "teacher", lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 5e-5, arch_lr: float = 0.01, grad_clip: float = 5.0,
                 **common: Any) -> None:
        super().__init__(space, **common)
        self.arch = self._given_arch(arch)
        self.search_epochs = self.epochs
        self.teacher_epochs = int_at_least("teacher_epochs", teacher_epochs, 1)
        self.kd_epochs = int_at_least("kd_epochs", kd_epochs, 1)
        self.epochs = self.teacher_epochs + self.search_epochs + self.kd_epochs
        self.flops_tolerance = number_in("flops_tolerance", flops_tolerance, 0.0, 0.5)
        self.flops_weight = non_negative("flops_weight", flops_weight)
        self.tau_max = positive_number("tau_max", tau_max)
        self.tau_min = positive_number("tau_min", tau_min)
        if self.tau_min > self.tau_max:
            raise ArgumentError("tau_min", f"must be <= tau_max ({self.tau_max}), "
                                           f"got {tau_min!r}")
        self.kd_temperature = positive_number("kd_temperature", kd_temperature)
        self.kd_alpha = number_in("kd_alpha", kd_alpha, 0.0, 1.0)
        self.kd_init = one_of("kd_init", kd_init, KD_INITS)
        self.lr = positive_number("lr", lr)
        self.momentum = number_in("momentum", momentum, 0.0, 0.999)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        self.arch_lr = positive_number("arch_lr", arch_lr)
        self.grad_clip = positive_number("grad_clip", grad_clip)
        self.blocks, self.depth_choices = self._choices()
        self.full_flops = float(space.flops(self.arch))
        self.fixed_flops = self.full_flops - sum(b.coef * b.mids[-1] for b in self.blocks)
        self.min_flops = float(space.flops(self._arch_of([0] * len(self.blocks),
                                                         [0] * len(self.depth_choices))))
        self.target_flops = self._target(target_flops)
        self._folder: Path | None = None

    def _config(self) -> dict[str, Any]:
        return {"arch": self.space.key(self.arch), "target_flops": self.target_flops,
                "flops_tolerance": self.flops_tolerance, "flops_weight": self.flops_weight,
                "tau_max": self.tau_max, "tau_min": self.tau_min,
                "teacher_epochs": self.teacher_epochs, "search_epochs": self.search_epochs,
                "kd_epochs": self.kd_epochs, "kd_temperature": self.kd_temperature,
                "kd_alpha": self.kd_alpha, "kd_init": self.kd_init, "lr": self.lr,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "arch_lr": self.arch_lr, "grad_clip": self.grad_clip}

    # ---- arguments ----------------------------------------------------------------------------
    def _given_arch(self, arch: Any) -> Arch:
        if arch is None:
            return self.space.max_arch()
        try:
            return self.space.validate(arch)
        except (ValueError, TypeError) as error:
            raise ArgumentError("arch", f"must be an architecture of the {self.space.name} "
                                        f"space (dict or key): {error}") from None

    def _target(self, value: Any) -> float:
        """`target_flops` < 1 is a fraction of the given network's FLOPs, else absolute; it
        must lie between the smallest prunable network's and the given one's."""
        target = positive_number("target_flops", value)
        assert target is not None
        absolute = target * self.full_flops if target < 1 else target
        if not self.min_flops <= absolute < self.full_flops:
            raise ArgumentError(
                "target_flops", f"must be reachable: between the smallest pruned network "
                f"({self.min_flops:.0f} FLOPs, ratio {self.min_flops / self.full_flops:.3f}) "
                f"and the given one ({self.full_flops:.0f}), got {value!r}")
        return float(absolute)

    def _choices(self) -> tuple[list[BlockChoices], list[tuple[int, ...]]]:
        """Width candidates per block, depth candidates per stage, of the given network."""
        spec = self.space.net_spec(self.arch)
        ratios = self.space.expand_ratios
        blocks = []
        for b in spec.blocks:
            own = self.arch["stages"][b.stage]["blocks"][b.index]["expand"]
            allowed = tuple(r for r in ratios if r <= own)
            coef = 2.0 * (b.c_in * b.side_in ** 2 + b.kernel ** 2 * b.side_out ** 2
                          + b.c_out * b.side_out ** 2)
            blocks.append(BlockChoices(b.stage, b.index, allowed,
                                       tuple(b.c_in * r for r in allowed), coef))
        depths = [tuple(d for d in self.space.depths if d <= stage["depth"])
                  for stage in self.arch["stages"]]
        return blocks, depths

    def _arch_of(self, widths: list[int], depths: list[int]) -> Arch:
        """The mbconv architecture with these width / depth candidate indices."""
        arch = json.loads(json.dumps(self.arch))
        for s, d in enumerate(depths):
            arch["stages"][s]["depth"] = self.depth_choices[s][d]
        for info, w in zip(self.blocks, widths, strict=True):
            arch["stages"][info.stage]["blocks"][info.index]["expand"] = info.ratios[w]
        return self.space.validate(arch)

    # ---- setup ----------------------------------------------------------------------------
    def run(self, checkpoint_dir: str | Path, **kwargs: Any) -> Any:
        """`WeightSharingSearch.run`; also writes the distilled network's weights
        (`subnet-1.pt`, `subnets.json`) to `checkpoint_dir`."""
        self._folder = Path(checkpoint_dir)
        return super().run(checkpoint_dir, **kwargs)

    def _setup(self) -> None:
        data = self.data
        if tuple(data.input_shape)[0] != self.space.input_channels:
            raise ArgumentError("dataset", f"has inputs of shape {data.input_shape}, the space "
                                           f"expects {self.space.input_shape()}")
        side = self.space.input_shape(self.arch)[-1]

        def tensor(array: Any) -> torch.Tensor:
            x = torch.from_numpy(array).to(self.device)
            if x.dim() == 4 and x.shape[-1] != side:
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            return x

        self._x_train, self._y_train = tensor(data.x_train), tensor(data.y_train)
        self._x_val, self._y_val = tensor(data.x_val), tensor(data.y_val)
        if len(self._x_train) < 4:
            raise ArgumentError("dataset", f"has {len(self._x_train)} training examples; "
                                           "TAS needs at least 4")
        self._gen = torch.Generator().manual_seed(self.seed)
        self.teacher = self.space.build(self.arch).to(self.device)
        self.optimizer, self.scheduler = self._sgd(self.teacher.parameters(),
                                                   self.teacher_epochs, len(self._x_train))
        self.searcher: TASNet | None = None
        self.student: nn.Module | None = None
        self.found: Arch | None = None
        self.argmax_flops: float | None = None

    def _sgd(self, params: Any, epochs: int, examples: int) -> tuple[Any, Any]:
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                    nesterov=self.momentum > 0, weight_decay=self.weight_decay)
        steps = epochs * math.ceil(examples / self.batch_size)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    def _start_search(self) -> None:
        net = self.space.build(self.arch).to(self.device)
        net.load_state_dict(self.teacher.state_dict())
        self.searcher = TASNet(net, self.blocks, self.depth_choices).to(self.device)
        half = len(self._x_train) // 2
        self.optimizer, self.scheduler = self._sgd(self.searcher.weight_parameters(),
                                                   self.search_epochs, half)
        self.arch_opt = torch.optim.Adam(self.searcher.arch_parameters(), lr=self.arch_lr,
                                         betas=(0.5, 0.999), weight_decay=1e-3)

    def _start_distillation(self) -> None:
        assert self.searcher is not None
        self.found, self.argmax_flops = self.derive_arch()
        self.student = self._new_student(self.found)
        self.optimizer, self.scheduler = self._sgd(self.student.parameters(), self.kd_epochs,
                                                   len(self._x_train))

    def _new_student(self, arch: Arch) -> nn.Module:
        """`space.build(arch)`, initialised as `kd_init` says."""
        student = self.space.build(arch).to(self.device)
        if self.kd_init == "teacher":
            load_slices(student, self.teacher, self.space.net_spec(arch),
                        self.space.net_spec(self.arch))
        return student

    def distill(self, arch: Arch) -> tuple[nn.Module, float]:
        """Distil the trained teacher into any pruned network `arch` exactly as the found one
        is (same initialisation, epochs, schedule and loss; the search's generator orders
        the data): the peer of a benchmark. Returns the network and its validation
        accuracy. Needs a finished `run`."""
        if self.student is None:
            raise RuntimeError("distill needs a finished run()")
        student = self._new_student(self.space.validate(arch))
        optimizer, scheduler = self._sgd(student.parameters(), self.kd_epochs,
                                         len(self._x_train))
        for _ in range(self.kd_epochs):
            self._supervised_epoch(student, self.teacher, optimizer, scheduler)
        student = self.finalised(student)
        return student, self.accuracy(student)

    def finalised(self, net: nn.Module) -> nn.Module:
        """A copy of `net` with its BatchNorm statistics recalibrated on the training split
        (exact averages under the final weights: a short run's running averages lag far
        behind), in eval mode: what is exported and what the metrics measure."""
        from workers.training import recalibrate_batchnorm

        net = copy.deepcopy(net)
        recalibrate_batchnorm(net, self._x_train, 256)
        return net.eval()

    # ---- training -------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        if epoch < self.teacher_epochs:
            record = {"phase": "teacher", **self._supervised_epoch(
                self.teacher, None, self.optimizer, self.scheduler)}
            record["val_acc"] = self.accuracy(self.teacher)
        elif epoch < self.teacher_epochs + self.search_epochs:
            if self.searcher is None:
                self._start_search()
            record = {"phase": "search", **self._search_epoch(epoch - self.teacher_epochs)}
        else:
            if self.student is None:
                self._start_distillation()
            assert self.student is not None
            record = {"phase": "distill", **self._supervised_epoch(
                self.student, self.teacher, self.optimizer, self.scheduler)}
            record["val_acc"] = self.accuracy(self.student)
        record["seconds"] = time.perf_counter() - started
        return record

    def _batches(self, n: int, offset: int = 0) -> list[torch.Tensor]:
        order = torch.randperm(n, generator=self._gen).to(self.device) + offset
        out = [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
        return [b for b in out if len(b) >= 2]  # BatchNorm cannot train on a batch of one

    def _supervised_epoch(self, net: nn.Module, teacher: nn.Module | None, optimizer: Any,
                          scheduler: Any) -> dict[str, Any]:
        """One epoch on the labels (teacher: None) or distilled from `teacher`."""
        net.train()
        if teacher is not None:
            teacher.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for index in self._batches(len(self._x_train)):
            x, y = self._x_train[index], self._y_train[index]
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                loss = (1 - self.kd_alpha) * loss + self.kd_alpha * kd_loss(
                    logits, target, self.kd_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        return {"loss": loss_sum / seen, "train_acc": 100.0 * correct / seen}

    def tau(self, search_epoch: int) -> float:
        """TAS's cosine schedule from `tau_max` (first search epoch) to `tau_min` (last)."""
        ratio = search_epoch / max(1, self.search_epochs - 1)
        return self.tau_min + (self.tau_max - self.tau_min) * (1 + math.cos(math.pi * ratio)) / 2

    def flops_loss(self, expected: torch.Tensor, current: float) -> torch.Tensor | None:
        """TAS's FLOPs loss: push E[FLOPs] down while the argmax network is above the
        target, up while it is below the tolerance band, nothing inside it."""
        if current > self.target_flops:
            return torch.log(expected)
        if current < self.target_flops * (1 - self.flops_tolerance):
            return -torch.log(expected)
        return None

    def _search_epoch(self, search_epoch: int) -> dict[str, Any]:
        assert self.searcher is not None
        net, tau = self.searcher, self.tau(search_epoch)
        net.train()
        half = len(self._x_train) // 2
        weight_batches = self._batches(half)
        arch_batches = self._batches(len(self._x_train) - half, offset=half)
        totals = {"loss": 0.0, "arch_loss": 0.0, "flops_loss": 0.0, "correct": 0, "seen": 0,
                  "steps": 0}
        weights = net.weight_parameters()
        for w_index, a_index in zip(weight_batches, arch_batches, strict=False):
            x, y = self._x_train[w_index], self._y_train[w_index]
            logits = net(x, tau, self._gen)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(weights, self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.arch_opt.zero_grad(set_to_none=True)
            arch_loss = F.cross_entropy(net(self._x_train[a_index], tau, self._gen),
                                        self._y_train[a_index])
            expected = net.expected_flops(self.fixed_flops)
            penalty = self.flops_loss(expected, self._argmax_flops())
            if penalty is not None:
                arch_loss = arch_loss + self.flops_weight * penalty
                totals["flops_loss"] += penalty.item()
            arch_loss.backward()
            self.arch_opt.step()
            self.optimizer.zero_grad(set_to_none=True)  # the arch step's weight gradients
            totals["loss"] += loss.item() * len(y)
            totals["arch_loss"] += arch_loss.item()
            totals["correct"] += int((logits.argmax(1) == y).sum())
            totals["seen"] += len(y)
            totals["steps"] += 1
        steps = max(1, totals["steps"])
        return {"loss": totals["loss"] / totals["seen"],
                "train_acc": 100.0 * totals["correct"] / totals["seen"],
                "arch_loss": totals["arch_loss"] / steps,
                "flops_loss": totals["flops_loss"] / steps, "tau": tau,
                "expected_flops": float(net.expected_flops(self.fixed_flops).detach()),
                "argmax_flops": self._argmax_flops(), "target_flops": self.target_flops,
                "argmax_key": self.space.key(self._arch_of(*net.argmax()))}

    def _argmax_flops(self) -> float:
        assert self.searcher is not None
        return float(self.space.flops(self._arch_of(*self.searcher.argmax())))

    # ---- derivation ----------------------------------------------------------------------
    def derive_arch(self) -> tuple[Arch, float]:
        """The argmax network, repaired to the target band when it misses it: above the
        target, steps down (one width or depth candidate at a time, the smallest loss of
        log-probability per FLOP saved first) until it is under; below the band, steps up
        the same way while it stays under the target. Also the argmax network's FLOPs."""
        assert self.searcher is not None
        widths, depths = self.searcher.argmax()
        choice = widths + depths
        argmax_flops = float(self.space.flops(self._arch_of(widths, depths)))
        width_lp, depth_lp = self.searcher.log_probs()
        log_probs = width_lp + depth_lp
        sizes = [len(lp) for lp in log_probs]
        low = self.target_flops * (1 - self.flops_tolerance)

        def flops_of(c: list[int]) -> float:
            return float(self.space.flops(self._arch_of(c[:len(widths)], c[len(widths):])))

        def best_step(c: list[int], step: int, current: float) -> list[int] | None:
            """The move of one candidate by `step` with the least log-probability lost
            per FLOP changed (down: any that saves; up: any that stays under the target)."""
            best: tuple[float, int] | None = None
            for i, j in enumerate(c):
                if not 0 <= j + step < sizes[i]:
                    continue
                trial = [*c[:i], j + step, *c[i + 1:]]
                changed = abs(flops_of(trial) - current)
                if changed == 0 or (step > 0 and flops_of(trial) > self.target_flops):
                    continue
                cost = (log_probs[i][j] - log_probs[i][j + step]) / changed
                if best is None or cost < best[0]:
                    best = (cost, i)
            if best is None:
                return None
            return [*c[:best[1]], c[best[1]] + step, *c[best[1] + 1:]]

        flops = argmax_flops
        for step, keep_going in ((-1, lambda f: f > self.target_flops), (1, lambda f: f < low)):
            while keep_going(flops):
                moved = best_step(choice, step, flops)
                if moved is None:
                    break
                choice, flops = moved, flops_of(moved)
        return self._arch_of(choice[:len(widths)], choice[len(widths):]), argmax_flops

    def accuracy(self, net: nn.Module) -> float:
        """Top-1 validation accuracy (percent) of a plain network."""
        was = net.training
        net.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self._x_val), 256):
                logits = net(self._x_val[start:start + 256])
                correct += int((logits.argmax(1) == self._y_val[start:start + 256]).sum())
        net.train(was)
        return 100.0 * correct / max(1, len(self._x_val))

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        if self.student is not None and self.found is not None:
            arch, net, argmax = self.found, self.student, self.argmax_flops
        elif self.searcher is not None:  # stopped during the search
            arch, argmax = self.derive_arch()
            net = self.space.build(arch).to(self.device)
            load_slices(net, self.teacher, self.space.net_spec(arch),
                        self.space.net_spec(self.arch))
        else:  # stopped while training the teacher: the given network as it stands
            arch, net, argmax = self.arch, self.teacher, self.full_flops
        flops = float(self.space.flops(arch))
        net = self.finalised(net)
        metrics = {"distilled_acc": self.accuracy(net),
                   "teacher_acc": self.accuracy(self.finalised(self.teacher)),
                   "flops": flops, "params": float(self.space.params(arch)),
                   "target_flops": self.target_flops, "flops_ratio": flops / self.full_flops,
                   "argmax_flops": float(argmax if argmax is not None else flops),
                   "distilled": float(self.student is not None)}
        if self._folder is not None:
            self._save(self._folder, arch, net, metrics)
        return [arch], [metrics]

    def _save(self, folder: Path, arch: Arch, net: nn.Module, metrics: dict[str, float]) -> None:
        """`subnet-1.pt` (state_dict on CPU, with the input standardisation) and
        `subnets.json`, each written atomically."""
        from ..evaluators.train import NORMALISATION_KEYS

        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        if self.data.normalisation:
            for name, key in NORMALISATION_KEYS.items():
                state[key] = torch.tensor(self.data.normalisation[name], dtype=torch.float32)
        path = folder / "subnet-1.pt"
        torch.save(state, path.with_name(path.name + ".tmp"))
        os.replace(path.with_name(path.name + ".tmp"), path)
        index = [{"rank": 1, "file": path.name, "key": self.space.key(arch), "arch": arch,
                  "metrics": metrics}]
        tmp = folder / "subnets.json.tmp"
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, folder / "subnets.json")

    # ---- checkpoint state ---------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"teacher": self.teacher.state_dict(),
                                 "optimizer": self.optimizer.state_dict(),
                                 "scheduler": self.scheduler.state_dict(),
                                 "generator": self._gen.get_state(), "found": self.found,
                                 "argmax_flops": self.argmax_flops}
        if self.searcher is not None:
            state["searcher"] = self.searcher.state_dict()
            state["arch_opt"] = self.arch_opt.state_dict()
        if self.student is not None:
            state["student"] = self.student.state_dict()
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        if "searcher" in state:
            self._start_search()
            assert self.searcher is not None
            self.searcher.load_state_dict(state["searcher"])
            self.arch_opt.load_state_dict(state["arch_opt"])
        if "student" in state:
            self.found, self.argmax_flops = state["found"], state["argmax_flops"]
            self.student = self.space.build(self.found).to(self.device)
            self.student.load_state_dict(state["student"])
            self.optimizer, self.scheduler = self._sgd(self.student.parameters(),
                                                       self.kd_epochs, len(self._x_train))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._gen.set_state(state["generator"].cpu())


def kd_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(teacher_T || student_T)."""
    return F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(teacher / temperature, 1),
                    reduction="batchmean") * temperature ** 2


@torch.no_grad()
def load_slices(student: nn.Module, teacher: nn.Module, small: Any, big: Any) -> None:
    """Copy into `student` (the network of `small`, a pruned `big`) the teacher's first
    channels of every tensor, block by block (a stage keeps its first blocks)."""
    position = {(b.stage, b.index): i for i, b in enumerate(big.blocks)}
    source = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        key = name
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            b = small.blocks[int(i)]
            key = f"blocks.{position[(b.stage, b.index)]}.{rest}"
        value = source[key]
        tensor.copy_(value[tuple(slice(0, n) for n in tensor.shape)] if tensor.dim() else value)
