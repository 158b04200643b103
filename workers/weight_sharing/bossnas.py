"""BossNAS (Li et al., ICCV 2021): block-wise self-supervised search with ensemble bootstrapping.

The supernet of the `hytra` space holds, for every layer, every (scale, op) candidate the
fabric can reach there: one shared body and an entry per input scale (from the same scale,
or from the one above through a stride-2 entry and shortcut); see `search_spaces.hytra`.
Its layers are cut into `blocks` contiguous search blocks (as evenly as possible; the paper:
16 layers in 4 blocks), searched one after the other, `epochs` epochs each (so the run has
`epochs x blocks` epochs; `history` says which block each trained).

Training block b (unlabelled: the labels are never read). Siamese online and target
networks (BYOL): the target is an exponential moving average of the online supernet, its
momentum rising from `base_momentum` to 1 along the block (cosine). The blocks before b are
fixed to their searched best paths and frozen (no gradient). Every step samples `paths`
distinct candidate paths of block b (uniformly, without replacement, among the paths that
start at the scale where the fixed prefix ends) and two augmented views per path (random
scale and shift, contrast, brightness, noise, cutout; the reference's multi-view pairs).
Each path's target output (the block's adapter from the scale the path ends at to the
fabric's last scale, then global pooling and the block's projector MLP, L2-normalised) is
averaged over the sampled paths: the ensemble target of a view. As in the reference code,
every candidate of a block, whatever scale it ends at, is brought to the last scale's width
and side (a strided depthwise conv, a 1x1 conv, BatchNorm) and feeds the block's one
projector, so the candidates' targets, their mean and their losses are in one space and
comparable. Each path's online prediction (adapter, projector, then the block's predictor
MLP) of one view regresses the ensemble target of the other view (2 - 2 cos, both
directions): ensemble bootstrapping, so every path learns towards what the candidates agree
on, not towards itself.

Block-wise evaluation (the paper's ranking, at the end of each block). On `eval_samples`
validation images (two fixed augmented views, through the target network's fixed prefix, as
the reference's), every candidate path of the block is run by the online and the target
network; the ensemble target is the mean of all candidates' target outputs; a path's
score is its online prediction's loss against that ensemble target (lower is better). The
best path is fixed for the following blocks, and the table of every candidate's loss is
kept (`block_losses`). BatchNorm in the evaluation, as the reference's `update_bn_stats`
before each candidate: every BatchNorm's statistics are reset, then set (momentum 1) by one
batch of `calibration_samples` training images (drawn once per run, two augmented views,
each view's forward overwriting the last one's statistics: the second view's stay) run
through the target's prefix and the candidate path of both networks up to the projector;
the evaluation then normalises with those statistics (eval mode), so a path's outputs no
longer depend on which validation images share its batch. As in the reference, the
predictor is not part of that forward, so its BatchNorm evaluates with the reset
statistics (mean 0, variance 1). `calibration_samples: 0` keeps batch statistics in the
evaluation (the behaviour before the recalibration).

Derivation: the best path of every block, then the next `top_k - 1` architectures by the
sum of block losses among those whose blocks start and end at the searched scales (the
architectures the block-wise evaluation ranks; `score` gives that sum for any of them).
Metrics: `bossnas_loss` (the sum), `flops`, `params`. The found network is retrained from
scratch by the job's evaluator, as in the paper.

In training, BatchNorm in the supernet always uses batch statistics (no running averages
are kept: a shared layer sees different paths' features); running statistics exist only
while a candidate is evaluated (above) and are dropped after the block's evaluation.
Determinism: data order, path sampler and augmentation have their own seeded generators
(checkpointed), the evaluation views a generator seeded by (seed, block) and the
recalibration batch one seeded by the seed, so on CPU a resumed run equals an
uninterrupted one. On N ranks (`workers`) each rank trains on its shard of every batch and
the evaluation runs whole on every rank (`ranks.local`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, int_at_least, number_in, positive_number

from ._base import WeightSharingSearch, register_search

#: A block's path: one (down, op) per layer of the block.
Path = tuple[tuple[int, str], ...]


def _no_running_stats(module: Any) -> None:
    """Every BatchNorm normalises with the batch's statistics, in train and eval mode."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def _batch_norms(*modules: Any) -> list[Any]:
    import torch

    return [m for module in modules for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _reset_statistics(norms: list[Any]) -> None:
    """The reference's reset before a candidate's recalibration: running mean 0, variance 1,
    momentum 1 (the next batch's statistics replace them)."""
    import torch

    for m in norms:
        m.running_mean = torch.zeros(m.num_features, device=m.weight.device)
        m.running_var = torch.ones(m.num_features, device=m.weight.device)
        m.num_batches_tracked = torch.tensor(0, device=m.weight.device)
        m.track_running_stats = True
        m.momentum = 1.0


@contextlib.contextmanager
def _running_statistics(*nets: Any) -> Iterator[None]:
    """Inside: the nets' BatchNorms keep running statistics (reset with `_reset_statistics`);
    afterwards back to batch statistics only, the old momentum and train/eval mode."""
    norms = _batch_norms(*nets)
    momenta = [m.momentum for m in norms]
    modes = [net.training for net in nets]
    try:
        _reset_statistics(norms)
        yield
    finally:
        for net, mode in zip(nets, modes, strict=True):
            _no_running_stats(net)
            net.train(mode)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def _mlp(c_in: int, hidden: int, out: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(c_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


def _byol_loss(prediction: Any, target: Any) -> Any:
    """2 - 2 cos(prediction, target), per example."""
    import torch.nn.functional as F

    return 2 - 2 * (F.normalize(prediction, dim=1) * F.normalize(target, dim=1)).sum(dim=1)


class HyTraSupernet:
    """The candidates of every layer of a `hytra` space; per block an adapter per output
    scale to the last scale, one projector and one predictor; a torch `nn.Module` built by
    `build()`."""

    @staticmethod
    def build(space: Any, blocks: list[list[int]], hidden: int, projection: int) -> Any:
        from torch import nn

        from search_spaces.layers.hytra_net import (
            inner_width,
            make_body,
            make_entry,
            make_shortcut,
            make_stem,
        )

        net = nn.Module()
        net.stem = make_stem(space.input_channels, space.widths[0], space.stem_stride)
        net.layers = nn.ModuleList()
        last = space.scales - 1
        for i in range(space.layers):
            cands = nn.ModuleDict()
            for s in range(min(i + 1, last) + 1):
                for op in ("resconv", "resatt") if s in space.attention_scales else ("resconv",):
                    c, mid = space.widths[s], inner_width(space.widths[s])
                    cand = nn.ModuleDict({"body": make_body(op, mid, c, space.head_dim)})
                    if s <= min(i, last):
                        cand["stay"] = make_entry(c, mid, False)
                    if s >= 1:
                        cand["down"] = make_entry(space.widths[s - 1], mid, True)
                        cand["shortcut"] = make_shortcut(space.widths[s - 1], c, True)
                    cands[f"{s}_{op}"] = cand
            net.layers.append(cands)
        net.adapters = nn.ModuleList()
        net.projectors = nn.ModuleList()
        net.predictors = nn.ModuleList()
        for layers in blocks:
            end = min(layers[-1] + 1, last)
            net.adapters.append(nn.ModuleDict({
                str(s): HyTraSupernet.to_last_scale(space, s) for s in range(min(end + 1, last))}))
            net.projectors.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                _mlp(space.widths[last], hidden, projection)))
            net.predictors.append(_mlp(projection, hidden, projection))
        _no_running_stats(net)
        return net

    @staticmethod
    def to_last_scale(space: Any, scale: int) -> Any:
        """The reference's channel fix in front of a block's projector: a feature map of
        `scale` to the fabric's last scale, its width and side (zero padding to a multiple
        of the stride, a depthwise conv with kernel = stride = 2^(scales below), a 1x1 conv,
        BatchNorm), so every candidate of a block, whatever scale it ends at, feeds one
        projector: the candidates' targets live in one space and their ensemble is their
        mean there."""
        from torch import nn

        from search_spaces.hytra import half

        sides = [space.stem_side()]
        for _ in range(space.scales - 1):
            sides.append(half(sides[-1]))
        last = space.scales - 1
        stride = 2 ** (last - scale)
        pad = sides[last] * stride - sides[scale]
        c, out = space.widths[scale], space.widths[last]
        return nn.Sequential(nn.ZeroPad2d((0, pad, 0, pad)),
                             nn.Conv2d(c, c, stride, stride=stride, groups=c, bias=False),
                             nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out))


@register_search
class BossNASSearch(WeightSharingSearch):
    """BossNAS: block-wise self-supervised (BYOL) supernet training with ensemble
    bootstrapping on unlabelled data, block-wise evaluation against the candidates' ensemble
    target, searched block by block on the HyTra space."""

    name = "bossnas"
    description = ("BossNAS: block-wise self-supervised supernet training with ensemble "
                   "bootstrapping (unlabelled), paths ranked block by block by their loss "
                   "against the candidates' ensemble target")
    spaces = ("hytra",)

    def __init__(self, space: SearchSpace, *, blocks: int = 4, paths: int = 4,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 1e-5,
                 base_momentum: float = 0.99, hidden_dim: int = 128,
                 projection_dim: int = 64, eval_samples: int = 256, top_k: int = 5,
                 grad_clip: float = 5.0, calibration_samples: int | None = None,
                 **common: Any) -> None:
        super().__init__(space, **common)
        layers = getattr(space, "layers", 1)
        self.n_blocks = int_at_least("blocks", blocks, 1)
        if self.n_blocks > layers:
            raise ArgumentError("blocks", f"must be at most the space's layers ({layers}), "
                                          f"got {blocks!r}")
        self.paths = int_at_least("paths", paths, 1)
        self.lr = positive_number("lr", lr)
        self.momentum = number_in("momentum", momentum, 0.0, 0.999)
        self.weight_decay = number_in("weight_decay", weight_decay, 0.0, 1.0)
        self.base_momentum = number_in("base_momentum", base_momentum, 0.0, 1.0)
        self.hidden_dim = int_at_least("hidden_dim", hidden_dim, 1)
        self.projection_dim = int_at_least("projection_dim", projection_dim, 1)
        self.eval_samples = int_at_least("eval_samples", eval_samples, 2)
        self.top_k = int_at_least("top_k", top_k, 1)
        self.grad_clip = positive_number("grad_clip", grad_clip)
        if calibration_samples is None:  # the reference: one training batch
            calibration_samples = self.batch_size
        self.calibration_samples = int_at_least("calibration_samples", calibration_samples, 0)
        if self.calibration_samples == 1:
            raise ArgumentError("calibration_samples", "must be 0 (no recalibration) or at "
                                                       "least 2 (BatchNorm statistics), got 1")
        self.epochs_per_block = self.epochs
        self.epochs = self.epochs_per_block * self.n_blocks
        sizes = [layers // self.n_blocks + (b < layers % self.n_blocks)
                 for b in range(self.n_blocks)]
        starts = np.cumsum([0, *sizes]).tolist()
        self.block_layers = [list(range(a, b)) for a, b in zip(starts, starts[1:],
                                                               strict=False)]

    def _config(self) -> dict[str, Any]:
        return {"blocks": self.n_blocks, "epochs_per_block": self.epochs_per_block,
                "paths": self.paths, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "base_momentum": self.base_momentum,
                "hidden_dim": self.hidden_dim, "projection_dim": self.projection_dim,
                "eval_samples": self.eval_samples, "top_k": self.top_k,
                "grad_clip": self.grad_clip, "calibration_samples": self.calibration_samples}

    # ---- paths -------------------------------------------------------------------------------
    def candidates(self, block: int, start: int) -> list[Path]:
        """Every path of `block` from input scale `start`, in a fixed order."""
        space, out = self.space, [()]
        for _ in self.block_layers[block]:
            grown = []
            for path in out:
                scale = start + sum(d for d, _ in path)
                for d in (0, 1) if scale < space.scales - 1 else (0,):
                    ops = ("resconv", "resatt") if scale + d in space.attention_scales \
                        else ("resconv",)
                    grown += [(*path, (d, op)) for op in ops]
            out = grown
        return out

    def _start(self, block: int) -> int:
        """The scale the fixed prefix (best paths of the earlier blocks) ends at."""
        return sum(d for path in self.best_paths[:block] for d, _ in path)

    def path_key(self, path: Path) -> str:
        return ",".join(f"{d}{op}" for d, op in path)

    # ---- setup -------------------------------------------------------------------------------
    def _setup(self) -> None:
        import torch

        data = self.data
        self._check_input_shape()
        self.online = HyTraSupernet.build(self.space, self.block_layers, self.hidden_dim,
                                          self.projection_dim).to(self.device)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self._x_train = torch.from_numpy(data.x_train).to(self.device)
        self._x_val = torch.from_numpy(data.x_val[:self.eval_samples]).to(self.device)
        n = len(self._x_train)
        self._steps_per_epoch = n // self.batch_size + (1 if n % self.batch_size > 1 else 0)
        if self._steps_per_epoch == 0 or len(self._x_val) < 2:
            raise ArgumentError("dataset", f"has {n} training and {len(data.x_val)} "
                                           "validation examples; the search needs at least 2 "
                                           "of each")
        self.optimizer = torch.optim.SGD(
            [p for p in self.online.parameters()], lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay)
        self._order = torch.Generator().manual_seed(self.seed)
        self._augment = torch.Generator().manual_seed(self.seed + 1)
        self._sampler = np.random.default_rng([self.seed, 3])
        self.best_paths: list[Path] = []
        self.block_losses: list[dict[str, float]] = []
        self._step_in_block = 0

    # ---- augmentation ------------------------------------------------------------------------
    def _views(self, x: Any, count: int, generator: Any) -> list[Any]:
        """`count` random augmentations of the batch `x` (each a new draw)."""
        import torch
        import torch.nn.functional as F

        out = []
        n = len(x)
        for _ in range(count):
            u = torch.rand(n, 7, generator=generator).to(x.device)
            scale = 0.8 + 0.25 * u[:, 0]
            theta = torch.zeros(n, 2, 3, device=x.device)
            theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
            theta[:, :, 2] = (u[:, 1:3] - 0.5) * 0.3
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            v = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
            v = v * (0.7 + 0.6 * u[:, 3]).view(-1, 1, 1, 1) + (u[:, 4] - 0.5).view(-1, 1, 1, 1)
            v = v + 0.1 * torch.randn(v.shape, generator=generator).to(x.device)
            side = x.shape[-1]
            cut = max(1, side // 4)
            rows = (u[:, 5] * (side - cut + 1)).long().clamp(max=side - cut)
            cols = (u[:, 6] * (side - cut + 1)).long().clamp(max=side - cut)
            r = torch.arange(side, device=x.device).view(1, -1)
            in_rows = (r >= rows.view(-1, 1)) & (r < (rows + cut).view(-1, 1))
            in_cols = (r >= cols.view(-1, 1)) & (r < (cols + cut).view(-1, 1))
            mask = in_rows.view(n, side, 1) & in_cols.view(n, 1, side)
            out.append(v.masked_fill(mask.unsqueeze(1), 0.0))
        return out

    # ---- forward passes ----------------------------------------------------------------------
    def _layer(self, net: Any, i: int, scale: int, down: int, op: str, x: Any) -> Any:
        import torch

        cand = net.layers[i][f"{scale + down}_{op}"]
        entry = cand["down"] if down else cand["stay"]
        shortcut = cand["shortcut"] if down else None
        main = cand["body"](entry(x))
        return torch.relu(main + (shortcut(x) if shortcut is not None else x))

    def _prefix(self, net: Any, x: Any, block: int) -> Any:
        """The stem and the fixed best paths of the blocks before `block` (no gradient)."""
        import torch

        with torch.no_grad():
            x = net.stem(x)
            scale = 0
            for b in range(block):
                for i, (down, op) in zip(self.block_layers[b], self.best_paths[b], strict=True):
                    x = self._layer(net, i, scale, down, op, x)
                    scale += down
        return x

    def _block(self, net: Any, x: Any, block: int, start: int, path: Path) -> Any:
        """The block's path on the prefix output `x`, brought to the last scale (unless it
        ends there), then the block's projector."""
        scale = start
        for i, (down, op) in zip(self.block_layers[block], path, strict=True):
            x = self._layer(net, i, scale, down, op, x)
            scale += down
        if scale < self.space.scales - 1:
            x = net.adapters[block][str(scale)](x)
        return net.projectors[block](x)

    # ---- training ----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        block = epoch // self.epochs_per_block
        if epoch % self.epochs_per_block == 0:
            self._step_in_block = 0
        start = self._start(block)
        pool = self.candidates(block, start)
        self.online.train()
        self.target.train()
        order = torch.randperm(len(self._x_train), generator=self._order).to(self.device)
        total, seen = 0.0, 0
        for first in range(0, len(order), self.batch_size):
            index = order[first:first + self.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a batch of one
                continue
            chosen = self._sampler.choice(len(pool), size=min(self.paths, len(pool)),
                                          replace=False)
            paths = [pool[int(j)] for j in chosen]
            views = self._views(self._x_train[index], 2 * len(paths), self._augment)
            local = self.ranks.shard(torch.arange(len(index)))
            views = [v[local.to(v.device)] for v in views]
            loss = self._step(views, paths, block, start)
            total += loss * len(local)
            seen += len(local)
        if self.ranks.size > 1:
            total, seen = self.ranks.total([total, float(seen)])
        record: dict[str, Any] = {"block": block + 1, "loss": total / seen,
                                  "candidates": len(pool),
                                  "target_momentum": self._target_momentum(),
                                  "lr": self.optimizer.param_groups[0]["lr"]}
        if (epoch + 1) % self.epochs_per_block == 0:  # the block's evaluation
            with self.ranks.local():
                losses = self.evaluate_block(block)
            best = min(losses, key=lambda k: (losses[k], k))
            self.block_losses.append(losses)
            self.best_paths.append(next(p for p in pool if self.path_key(p) == best))
            record.update(best_path=best, best_loss=losses[best])
        record["seconds"] = time.perf_counter() - started
        return record

    def _block_steps(self) -> int:
        return self.epochs_per_block * self._steps_per_epoch

    def _target_momentum(self) -> float:
        progress = min(1.0, self._step_in_block / max(1, self._block_steps()))
        return 1 - (1 - self.base_momentum) * (math.cos(math.pi * progress) + 1) / 2

    def _step(self, views: list[Any], paths: list[Path], block: int, start: int) -> float:
        import torch

        k = len(paths)
        progress = self._step_in_block / max(1, self._block_steps())
        for group in self.optimizer.param_groups:  # cosine schedule within the block
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * progress))
        with torch.no_grad():
            targets = [[torch.nn.functional.normalize(
                self._block(self.target, self._prefix(self.target, views[2 * j + v], block),
                            block, start, path), dim=1) for v in (0, 1)]
                for j, path in enumerate(paths)]
            ensemble = [torch.stack([t[v] for t in targets]).mean(0) for v in (0, 1)]
        self.optimizer.zero_grad(set_to_none=True)
        predictor = self.online.predictors[block]
        loss_sum = 0.0
        for j, path in enumerate(paths):
            a, b = (predictor(self._block(self.online, self._prefix(self.online,
                                                                     views[2 * j + v], block),
                                          block, start, path)) for v in (0, 1))
            loss = (_byol_loss(a, ensemble[1]) + _byol_loss(b, ensemble[0])).mean() / k
            self.ranks.scaled(loss).backward()
            loss_sum += loss.item()
        params = [p for p in self.online.parameters() if p.grad is not None]
        self.ranks.sync_grads(params)
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self._step_in_block += 1
        tau = self._target_momentum()
        with torch.no_grad():
            for p_t, p_o in zip(self.target.parameters(), self.online.parameters(),
                                strict=True):
                p_t.mul_(tau).add_(p_o.detach(), alpha=1 - tau)
        return loss_sum

    # ---- block-wise evaluation ---------------------------------------------------------------
    def evaluate_block(self, block: int) -> dict[str, float]:
        """Every candidate path's loss against the ensemble target of all candidates (the
        paper's block-wise evaluation), by path key; each candidate with BatchNorm
        statistics recalibrated on one training batch (unless `calibration_samples` is 0)."""
        import torch

        start = self._start(block)
        pool = self.candidates(block, start)
        generator = torch.Generator().manual_seed(self.seed * 1000 + block)
        views = self._views(self._x_val, 2, generator)
        with torch.no_grad():  # both networks read the target's prefix (the reference's)
            if self.calibration_samples:
                targets, predictions = self._calibrated_outputs(block, start, pool, views)
            else:
                inputs = [self._prefix(self.target, v, block) for v in views]
                targets = [[self._target_output(x, block, start, p) for x in inputs]
                           for p in pool]
                predictions = [[self._prediction(x, block, start, p) for x in inputs]
                               for p in pool]
            ensemble = [torch.stack([t[v] for t in targets]).mean(0) for v in (0, 1)]
            return {self.path_key(path): float((_byol_loss(p[0], ensemble[1])
                                                + _byol_loss(p[1], ensemble[0])).mean())
                    for path, p in zip(pool, predictions, strict=True)}

    def _target_output(self, x: Any, block: int, start: int, path: Path) -> Any:
        import torch

        return torch.nn.functional.normalize(self._block(self.target, x, block, start, path),
                                             dim=1)

    def _prediction(self, x: Any, block: int, start: int, path: Path) -> Any:
        return self.online.predictors[block](self._block(self.online, x, block, start, path))

    def calibration_views(self) -> list[Any]:
        """The recalibration batch: `calibration_samples` training images drawn once per run
        (a generator seeded by the search's seed), two augmented views."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + 999)
        n = min(self.calibration_samples, len(self._x_train))
        index = torch.randperm(len(self._x_train), generator=generator)[:n]
        return self._views(self._x_train[index.to(self._x_train.device)], 2, generator)

    def _calibrated_outputs(self, block: int, start: int, pool: list[Path],
                            views: list[Any]) -> tuple[list[Any], list[Any]]:
        """Each candidate's target outputs and online predictions on `views`, BatchNorm
        recalibrated per candidate as the reference's `update_bn_stats`: all statistics
        reset, momentum 1, train mode; the calibration batch's two views through the
        target's prefix, then the candidate and the block's adapter and projector of the
        target and of the online network (not the predictor); then eval mode."""
        nets = (self.target, self.online)
        calibration = self.calibration_views()
        targets, predictions = [], []
        with _running_statistics(*nets):
            for net in nets:
                net.train()
            prefixed = [self._prefix(self.target, v, block) for v in calibration]
            for net in nets:
                net.eval()
            inputs = [self._prefix(self.target, v, block) for v in views]
            own = [m for net in nets for m in _batch_norms(
                *(net.layers[i] for i in self.block_layers[block]), net.adapters[block],
                net.projectors[block], net.predictors[block])]
            for path in pool:
                _reset_statistics(own)
                for net in nets:
                    net.train()
                for net in nets:
                    for x in prefixed:
                        self._block(net, x, block, start, path)
                for net in nets:
                    net.eval()
                targets.append([self._target_output(x, block, start, path) for x in inputs])
                predictions.append([self._prediction(x, block, start, path) for x in inputs])
        return targets, predictions

    # ---- ranking and derivation --------------------------------------------------------------
    def block_paths(self, arch: Arch) -> list[Path]:
        """`arch`'s path in each search block."""
        arch = self.space.validate(arch)
        return [tuple((arch["down"][i], arch["ops"][i]) for i in layers)
                for layers in self.block_layers]

    def score(self, arch: Arch) -> float:
        """The sum of `arch`'s block losses (lower is better); ValueError unless every block
        of `arch` starts where the searched prefix ends (the architectures the block-wise
        evaluation ranks) and every block has been evaluated."""
        if len(self.block_losses) < self.n_blocks:
            raise ValueError("score needs a finished search (every block evaluated)")
        total, scale = 0.0, 0
        for b, path in enumerate(self.block_paths(arch)):
            if scale != self._start(b):
                raise ValueError(f"block {b + 1} of {self.space.key(arch)} starts at scale "
                                 f"{scale}, the searched prefix ends at {self._start(b)}")
            total += self.block_losses[b][self.path_key(path)]
            scale += sum(d for d, _ in path)
        return total

    def _ends(self, block: int) -> int | None:
        """The scale block `block` must end at to stay rankable (None: the last block)."""
        return self._start(block + 1) if block + 1 < self.n_blocks else None

    def _options(self, block: int) -> list[tuple[float, Path]]:
        start, end = self._start(block), self._ends(block)
        out = [(self.block_losses[block][self.path_key(p)], p)
               for p in self.candidates(block, start)
               if end is None or start + sum(d for d, _ in p) == end]
        return sorted(out, key=lambda item: (item[0], self.path_key(item[1])))

    def _arch(self, paths: list[Path]) -> Arch:
        steps = [step for path in paths for step in path]
        return {"down": [d for d, _ in steps], "ops": [op for _, op in steps]}

    def ranked(self, count: int) -> list[tuple[float, Arch]]:
        """The `count` rankable architectures with the lowest summed block loss, best first
        (blocks are independent once their end scales are fixed: a k-best merge)."""
        partial: list[tuple[float, list[Path]]] = [(0.0, [])]
        for block in range(self.n_blocks):
            merged = [(s + loss, [*ps, p]) for s, ps in partial
                      for loss, p in self._options(block)]
            merged.sort(key=lambda item: (item[0], [self.path_key(p) for p in item[1]]))
            partial = merged[:count]
        return [(s, self._arch(ps)) for s, ps in partial]

    def sample_rankable(self, count: int, seed: int) -> list[Arch]:
        """`count` distinct rankable architectures (or all of them when there are fewer):
        each block's path drawn uniformly among those that start and end at the searched
        scales (a population for rank-correlation benchmarks)."""
        rng = np.random.default_rng(seed)
        options = [self._options(b) for b in range(self.n_blocks)]
        total = math.prod(len(o) for o in options)
        found: dict[str, Arch] = {}
        while len(found) < min(count, total):
            arch = self._arch([o[int(rng.integers(len(o)))][1] for o in options])
            found.setdefault(self.space.key(arch), arch)
        return list(found.values())

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        if len(self.best_paths) < self.n_blocks:  # stopped early: finish the search greedily
            return self._derive_partial()
        archs, metrics = [], []
        for loss, arch in self.ranked(self.top_k):
            archs.append(arch)
            metrics.append({"bossnas_loss": loss, "flops": float(self.space.flops(arch)),
                            "params": float(self.space.params(arch))})
        return archs, metrics

    def _derive_partial(self) -> tuple[list[Arch], list[dict[str, float]]]:
        """A run stopped before its last block: the searched prefix, the rest all ResConv at
        the prefix's last scale (no loss to report)."""
        paths = list(self.best_paths)
        for b in range(len(paths), self.n_blocks):
            paths.append(tuple((0, "resconv") for _ in self.block_layers[b]))
        arch = self.space.validate(self._arch(paths))
        return [arch], [{"flops": float(self.space.flops(arch)),
                         "params": float(self.space.params(arch))}]

    # ---- checkpoint state --------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "order": self._order.get_state(),
                "augment": self._augment.get_state(),
                "sampler": self._sampler.bit_generator.state,
                "best_paths": [list(map(list, p)) for p in self.best_paths],
                "block_losses": self.block_losses, "step_in_block": self._step_in_block}

    def _arch_state(self) -> dict[str, Any]:
        return {"sampler": self._sampler.bit_generator.state,
                "best_paths": [list(map(list, p)) for p in self.best_paths]}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._order.set_state(state["order"].cpu())
        self._augment.set_state(state["augment"].cpu())
        self._sampler.bit_generator.state = state["sampler"]
        self.best_paths = [tuple((int(d), str(op)) for d, op in p) for p in state["best_paths"]]
        self.block_losses = [dict(t) for t in state["block_losses"]]
        self._step_in_block = int(state["step_in_block"])
