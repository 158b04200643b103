"""DARTS, PC-DARTS and RARTS: differentiable searches over the `nb201` and `darts` spaces.

All three train a mixed-op supernet (`mixed.py`) and softmax architecture weights alpha.
The training data is split in two halves with a seeded permutation: the network weights
learn on the first, the architecture on the second (the dataset's validation split only
measures the supernet). Each step does one architecture update, then one weight update
(SGD, momentum 0.9, cosine schedule over the epochs, gradient clipping at 5); alpha uses
Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), as in DARTS.

- `darts` (Liu et al., ICLR 2019): `order: 1` takes the architecture gradient at the
  current weights; `order: 2` at the weights after one virtual SGD step (momentum and
  weight decay included), adding the implicit term `-lr * H v` by central finite
  differences with epsilon = 0.01 / ||v||, as in the paper.
- `pc-darts` (Xu et al., ICLR 2020): the same, on a supernet whose edges pass only 1/k of
  the channels through the operations (`k`, default 4), with edge normalisation: beta per
  edge, softmax over each node's input edges, multiplying the edge's output and its
  strength when the darts-space cell's two input edges are chosen. Its own settings, those
  of the paper's search (reference `train_search.py`): a warm-up of `warmup_epochs` (default
  30% of the epochs: 15 of 50) in which only the network weights train (alpha and beta stay
  frozen, so the parameter-free ops do not win before the others learned anything), weights
  lr 0.1 (cosine to 0.001), arch lr 6e-4, batch 256.
- `rarts` (Xue, Qi & Xin, 2020): single level and first order. Two networks, w on the first
  split and y on the second, share alpha and are coupled by `penalty / 2 * ||w - y||^2`;
  the relaxed objective is `L2(y, alpha) + beta * L1(w, alpha) + penalty/2 ||w - y||^2`,
  minimised by Gauss-Seidel steps: alpha (its gradient is that of `L2(y) + beta * L1(w)`),
  then w, then y (each with the coupling term's gradient added).

Derivation (`mixed.derive`): nb201, the argmax op of every edge; darts space, per node the
two strongest input edges with their strongest non-`none` op. Every epoch's history record
holds the derived architecture's key and its skip-connection count (skip-connection collapse
is the known failure of DARTS). With `top > 1` (nb201 only) the next cells by
alpha-product (sum of log op probabilities) follow the argmax cell.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, int_at_least

from ._base import WeightSharingSearch, _resolve_device, _seed_everything, register_search
from .mixed import (
    ArchParameters,
    Layout,
    Weights,
    build_supernet,
    derive,
    layout_of,
    nb201_ranked,
    skip_count,
)

_DEFAULT_CELLS = {"nb201": 1, "darts": 3}
_GRAD_CLIP = 5.0
_MOMENTUM = 0.9


class DifferentiableSearch(WeightSharingSearch):
    """What every gradient-based supernet search here shares: arguments, data splits, the
    epoch loop, the weight step, evaluation, checkpoint state and derivation. Subclasses
    set `_edge_norm` / `_partial_k` and implement `_arch_step`.

    Arguments (besides the common ones of `WeightSharingSearch`): `channels` (the supernet's
    initial channels, default 8), `cells` (nb201: cells per stage, default 1; darts: the
    number of layers, >= 3, default 3), `lr` (weights: SGD, momentum 0.9, cosine to
    lr / 100), `weight_decay`, `arch_lr`, `arch_weight_decay`, and `top` (how many cells
    to derive, best first: on nb201 the argmax cell then the next by alpha-product; the
    darts space always derives its single argmax genotype)."""

    spaces = ("nb201", "darts")
    _edge_norm = False

    def __init__(self, space: SearchSpace, *, channels: int = 8, cells: int | None = None,
                 lr: float = 0.025, weight_decay: float = 3e-4, arch_lr: float = 3e-4,
                 arch_weight_decay: float = 1e-3, top: int = 1, **common: Any) -> None:
        super().__init__(space, **common)
        self.channels = int_at_least("channels", channels, 1)
        default_cells = _DEFAULT_CELLS.get(space.name, 1)
        self.cells = int_at_least("cells", default_cells if cells is None else cells,
                              3 if space.name == "darts" else 1)
        self.lr = _float_arg("lr", lr, positive=True)
        self.weight_decay = _float_arg("weight_decay", weight_decay)
        self.arch_lr = _float_arg("arch_lr", arch_lr, positive=True)
        self.arch_weight_decay = _float_arg("arch_weight_decay", arch_weight_decay)
        self.top = int_at_least("top", top, 1)
        self.layout: Layout = layout_of(space)

    @property
    def _partial_k(self) -> int:
        return 1

    def _config(self) -> dict[str, Any]:
        # `candidate_bn`: checkpoints of supernets with affine candidate BN (before it was
        # made non-affine, as in DARTS) are of another search and refused on resume
        return {"channels": self.channels, "cells": self.cells, "lr": self.lr,
                "weight_decay": self.weight_decay, "arch_lr": self.arch_lr,
                "arch_weight_decay": self.arch_weight_decay, "top": self.top,
                "candidate_bn": "non-affine"}

    # ---- setup -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the data and build everything `run` trains, without training (benchmarks,
        inspection); `run` does this itself."""
        torch.set_num_threads(self.threads)
        self.device = _resolve_device(self.device_name)
        self.data = self.dataset.load()
        _seed_everything(self.seed)
        self._setup()

    def _new_net(self) -> nn.Module:
        return build_supernet(self.space, channels=self.channels, cells=self.cells,
                              num_classes=self.data.num_classes,
                              input_channels=self.data.input_shape[0],
                              k=self._partial_k).to(self.device)

    def _sgd(self, net: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=_MOMENTUM,
                              weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs,
                                                           eta_min=0.01 * self.lr)
        return opt, sched

    def _setup(self) -> None:
        self._setup_data()
        self.net = self._new_net()
        self.arch = ArchParameters(self.layout, self._edge_norm).to(self.device)
        self.w_opt, self.w_sched = self._sgd(self.net)
        self.arch_opt = torch.optim.Adam(self.arch.parameters(), lr=self.arch_lr,
                                         betas=(0.5, 0.999), weight_decay=self.arch_weight_decay)
        self.criterion = nn.CrossEntropyLoss()

    def _setup_data(self) -> None:
        """Two halves of the training data (weights / architecture) and the val split."""
        x, y = self.data.x_train, self.data.y_train
        if len(x) < 2:
            raise ValueError("the dataset needs at least 2 training examples")
        order = np.random.default_rng(self.seed).permutation(len(x))
        half = len(x) // 2

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        self.split_w = (put(x[order[:half]]), put(y[order[:half]]))
        self.split_a = (put(x[order[half:2 * half]]), put(y[order[half:2 * half]]))
        self.split_val = (put(self.data.x_val), put(self.data.y_val))
        self.generator = torch.Generator().manual_seed(self.seed)

    # ---- the epoch -----------------------------------------------------------------------
    def _weights(self) -> Weights:
        """Op weights of the forward passes (softmax of alpha; FBNet overrides)."""
        return self.arch.op_weights()

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        n = len(self.split_w[0])
        perm_w = torch.randperm(n, generator=self.generator).to(self.device)
        perm_a = torch.randperm(n, generator=self.generator).to(self.device)
        losses, correct = [], 0
        ranks = self.ranks
        for lo in range(0, n, self.batch_size):  # on N ranks, each its shard of the batch
            iw = ranks.shard(perm_w[lo:lo + self.batch_size])
            ia = ranks.shard(perm_a[lo:lo + self.batch_size])
            loss, hits = self.search_step(self.split_w[0][iw], self.split_w[1][iw],
                                          self.split_a[0][ia], self.split_a[1][ia])
            losses.append(loss * ranks.fraction)
            correct += hits
        if ranks.size > 1:  # the global batches' mean losses and the global count
            *losses, total = ranks.total([*losses, correct])
            correct = round(total)
        self._after_epoch()
        val_loss, val_acc = self.evaluate()
        arch = self.current_arch()
        return {"train_loss": float(np.mean(losses)), "train_acc": correct / n,
                "val_loss": val_loss, "val_acc": val_acc, "arch": self.space.key(arch),
                "skip_connections": skip_count(self.space, arch),
                "seconds": time.perf_counter() - start, **self._epoch_extras()}

    def _after_epoch(self) -> None:
        self.w_sched.step()

    def _epoch_extras(self) -> dict[str, Any]:
        return {}

    def search_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                    ya: torch.Tensor) -> tuple[float, int]:
        """One architecture step (on the second split's batch) then one weight step (on the
        first's); returns the weight step's loss and correct count."""
        self._arch_step(xw, yw, xa, ya)
        return self._weight_step(self.net, self.w_opt, xw, yw)

    def _arch_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                   ya: torch.Tensor) -> None:
        raise NotImplementedError

    def _weight_step(self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                     y: torch.Tensor, extra_grad: Callable[[], None] | None = None
                     ) -> tuple[float, int]:
        """One SGD step of `net` on (x, y); `extra_grad` adds to the gradients before
        clipping (RARTS' coupling term)."""
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            weights, edge = self._weights(), self.arch.edge_weights()
        logits = net(x, weights, edge)
        loss = self.criterion(logits, y)
        self.ranks.scaled(loss).backward()
        if extra_grad is not None:
            extra_grad()
        self.ranks.sync_grads(net.parameters())  # clip the averaged gradient
        nn.utils.clip_grad_norm_(net.parameters(), _GRAD_CLIP)
        opt.step()
        return float(loss.detach().cpu()), int((logits.argmax(1) == y).sum().cpu())

    def _arch_loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss to differentiate (on N ranks, this rank's share of the global mean
        times N: the architecture optimiser's hook averages the gradients)."""
        return self.ranks.scaled(
            self.criterion(net(x, self._weights(), self.arch.edge_weights()), y))

    # ---- evaluation and derivation ---------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, net: nn.Module | None = None) -> tuple[float, float]:
        """(loss, accuracy) of the supernet (softmax-weighted) on the validation split."""
        net = net if net is not None else self.net
        net.eval()
        x, y = self.split_val
        weights, edge = self.arch.op_weights(), self.arch.edge_weights()
        total, hits = 0.0, 0
        for lo in range(0, len(x), 256):
            logits = net(x[lo:lo + 256], weights, edge)
            total += float(self.criterion(logits, y[lo:lo + 256]).cpu()) * len(logits)
            hits += int((logits.argmax(1) == y[lo:lo + 256]).sum().cpu())
        return total / max(1, len(x)), hits / max(1, len(x))

    def current_arch(self) -> Arch:
        """The architecture the current alphas (and betas) derive."""
        probs, edges = self.arch.numpy()
        return derive(self.space, probs, edges)

    def _arch_state(self) -> dict[str, np.ndarray]:
        return self.alphas()

    def alphas(self) -> dict[str, np.ndarray]:
        """The architecture logits as CPU arrays (alpha per cell, then beta as `beta_<cell>`)."""
        out = {c: a.detach().cpu().numpy().copy() for c, a in self.arch.alpha.items()}
        out.update({f"beta_{c}": b.detach().cpu().numpy().copy()
                    for c, b in self.arch.beta.items()})
        return out

    def _ranked_archs(self) -> list[tuple[Arch, float]]:
        """(arch, alpha score) best first: the argmax cell, then (nb201, `top > 1`) the
        next cells by alpha-product."""
        probs, edges = self.arch.numpy()
        first = derive(self.space, probs, edges)
        if self.space.name != "nb201":
            return [(first, float("nan"))]
        grid, scores = nb201_ranked(probs["cell"])
        return [(self.space.from_dna([int(i) for i in grid[j]]), float(scores[j]))
                for j in range(self.top)]

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        _, acc = self.evaluate()
        archs, metrics = [], []
        for arch, score in self._ranked_archs():
            archs.append(arch)
            entry = {"supernet_val_acc": acc,
                     "skip_connections": float(skip_count(self.space, arch))}
            if not math.isnan(score):
                entry["alpha_log_prob"] = score
            metrics.append(entry)
        return archs, metrics

    # ---- checkpoint state -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "arch": self.arch.state_dict(),
                "w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                "arch_opt": self.arch_opt.state_dict(), "generator": self.generator.get_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.arch.load_state_dict(state["arch"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.generator.set_state(state["generator"].cpu())


@register_search
class DartsSearch(DifferentiableSearch):
    """DARTS: bilevel, first or second order (`order`)."""

    name = "darts"
    description = "DARTS: softmax-relaxed mixed ops, bilevel optimisation (order 1 or 2)"

    def __init__(self, space: SearchSpace, *, order: int = 1, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        if isinstance(order, bool) or order not in (1, 2):
            raise ArgumentError("order", f"must be 1 or 2, got {order!r}")
        self.order = int(order)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "order": self.order}

    def _arch_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                   ya: torch.Tensor) -> None:
        self.net.train()
        params = list(self.arch.parameters())
        if self.order == 1:
            grads = torch.autograd.grad(self._arch_loss(self.net, xa, ya), params)
        else:
            grads = self._unrolled_grads(xw, yw, xa, ya)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def _unrolled_grads(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                        ya: torch.Tensor) -> list[torch.Tensor]:
        """d L_val(w - lr * dw L_train(w, a), a) / d a, the Hessian-vector product by
        central finite differences (DARTS eq. 7-8). Weights and BN buffers are restored."""
        weights = [p for p in self.net.parameters()]
        arch = list(self.arch.parameters())
        saved = [p.detach().clone() for p in weights]
        buffers = [b.detach().clone() for b in self.net.buffers()]
        lr = self.w_opt.param_groups[0]["lr"]
        # on N ranks the weight gradients are averaged here (the virtual step and epsilon
        # must be those of the global batch); the architecture terms below are linear in the
        # per-rank gradients and averaged by the architecture optimiser's hook
        train_grads = self.ranks.average(_grads(self._arch_loss(self.net, xw, yw), weights))
        with torch.no_grad():  # the virtual step w' = w - lr (momentum buffer + g + wd w)
            for p, g in zip(weights, train_grads, strict=True):
                buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
                step = g + self.weight_decay * p
                if buf is not None:
                    step = step + _MOMENTUM * buf
                p.sub_(lr * step)
        grads = _grads(self._arch_loss(self.net, xa, ya), arch + weights)
        d_arch, d_w = grads[:len(arch)], self.ranks.average(grads[len(arch):])
        norm = torch.sqrt(sum((g * g).sum() for g in d_w))
        eps = 0.01 / float(norm.clamp_min(1e-12))
        hessian = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, s, d in zip(weights, saved, d_w, strict=True):
                    p.copy_(s + sign * eps * d)
            hessian.append(_grads(self._arch_loss(self.net, xw, yw), arch))
        with torch.no_grad():
            for p, s in zip(weights, saved, strict=True):
                p.copy_(s)
            for b, s in zip(self.net.buffers(), buffers, strict=True):
                b.copy_(s)
        return [da - lr * (hp - hn) / (2 * eps)
                for da, hp, hn in zip(d_arch, *hessian, strict=True)]


@register_search
class PCDartsSearch(DartsSearch):
    """PC-DARTS: partial channel connections (1/k of the channels) and edge normalisation,
    with the paper's warm-up (architecture frozen for `warmup_epochs`) and learning rates."""

    name = "pc-darts"
    description = "PC-DARTS: DARTS with partial channel connections and edge normalisation"
    _edge_norm = True

    def __init__(self, space: SearchSpace, *, k: int = 4, warmup_epochs: int | None = None,
                 lr: float = 0.1, arch_lr: float = 6e-4, batch_size: int = 256,
                 **kwargs: Any) -> None:
        super().__init__(space, lr=lr, arch_lr=arch_lr, batch_size=batch_size, **kwargs)
        self.k = int_at_least("k", k, 1)
        self.warmup_epochs = _warmup_epochs(warmup_epochs, self.epochs)
        if self.channels % self.k:
            raise ArgumentError("k", f"must divide channels ({self.channels}), got {self.k}")
        if space.name == "darts" and (self.channels // self.k) % 2:
            raise ArgumentError("k", "must leave an even number of channels per edge on the "
                                     f"darts space (channels / k = {self.channels}/{self.k}); "
                                     "the stride-2 skip connection splits them in two")

    @property
    def _partial_k(self) -> int:
        return self.k

    @property
    def arch_frozen(self) -> bool:
        """True during the warm-up. It follows the epoch counter, which a checkpoint
        restores, so a resumed search warms up exactly as an uninterrupted one."""
        return self.epoch < self.warmup_epochs

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "k": self.k, "warmup_epochs": self.warmup_epochs}

    def search_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                    ya: torch.Tensor) -> tuple[float, int]:
        if self.arch_frozen:
            return self._weight_step(self.net, self.w_opt, xw, yw)
        return super().search_step(xw, yw, xa, ya)

    def _epoch_extras(self) -> dict[str, Any]:
        return {**super()._epoch_extras(), "arch_frozen": self.arch_frozen}


@register_search
class RartsSearch(DifferentiableSearch):
    """RARTS: single-level relaxed search with data and network splitting (first order)."""

    name = "rarts"
    description = "RARTS: single-level relaxed DARTS, two coupled networks (w, y), first order"

    def __init__(self, space: SearchSpace, *, penalty: float = 1.0, beta: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.penalty = _float_arg("penalty", penalty)
        self.beta = _float_arg("beta", beta)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "penalty": self.penalty, "beta": self.beta}

    def _setup(self) -> None:
        super()._setup()
        self.net_y = self._new_net()
        self.net_y.load_state_dict(self.net.state_dict())  # related weights: y starts at w
        self.y_opt, self.y_sched = self._sgd(self.net_y)

    def search_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                    ya: torch.Tensor) -> tuple[float, int]:
        """Gauss-Seidel: alpha, then w (first split), then y (second split)."""
        self._arch_step(xw, yw, xa, ya)
        w_params, y_params = list(self.net.parameters()), list(self.net_y.parameters())
        y_before = [q.detach().clone() for q in y_params]

        def couple_w() -> None:  # the gradient of beta * L1(w) + penalty/2 ||w - y||^2
            for p, q in zip(w_params, y_before, strict=True):
                p.grad.mul_(self.beta).add_(p.detach() - q, alpha=self.penalty)

        def couple_y() -> None:  # of L2(y) + penalty/2 ||y - w||^2, at the new w
            for q, p in zip(y_params, w_params, strict=True):
                q.grad.add_(q.detach() - p.detach(), alpha=self.penalty)

        result = self._weight_step(self.net, self.w_opt, xw, yw, couple_w)
        self._weight_step(self.net_y, self.y_opt, xa, ya, couple_y)
        return result

    def _arch_step(self, xw: torch.Tensor, yw: torch.Tensor, xa: torch.Tensor,
                   ya: torch.Tensor) -> None:
        self.net.train()
        self.net_y.train()
        loss = self._arch_loss(self.net_y, xa, ya) + self.beta * self._arch_loss(self.net, xw, yw)
        params = list(self.arch.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def _after_epoch(self) -> None:
        super()._after_epoch()
        self.y_sched.step()

    def _epoch_extras(self) -> dict[str, Any]:
        with torch.no_grad():
            gap = sum(float(((p - q) ** 2).sum().cpu()) for p, q in
                      zip(self.net.parameters(), self.net_y.parameters(), strict=True))
        return {"y_val_acc": self.evaluate(self.net_y)[1], "w_y_distance": math.sqrt(gap)}

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        archs, metrics = super()._derive()
        y_acc = self.evaluate(self.net_y)[1]
        return archs, [{**m, "supernet_y_val_acc": y_acc} for m in metrics]

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "net_y": self.net_y.state_dict(),
                "y_opt": self.y_opt.state_dict(), "y_sched": self.y_sched.state_dict()}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.net_y.load_state_dict(state["net_y"])
        self.y_opt.load_state_dict(state["y_opt"])
        self.y_sched.load_state_dict(state["y_sched"])


# ---- helpers --------------------------------------------------------------------------------
def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _warmup_epochs(value: Any, epochs: int) -> int:
    """PC-DARTS' warm-up: 15 of its 50 epochs, so 30% of `epochs` by default; fewer than
    `epochs`, or the architecture would never train."""
    if value is None:
        return epochs * 3 // 10
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not 0 <= value < epochs:
        raise ArgumentError("warmup_epochs", f"must be an integer from 0 to epochs - 1 "
                                             f"({epochs - 1}), got {value!r}")
    return int(value)


def _float_arg(name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and \
        math.isfinite(float(value)) and (float(value) > 0 if positive else float(value) >= 0)
    if not ok:
        kind = "positive" if positive else "non-negative"
        raise ArgumentError(name, f"must be a {kind} finite number, got {value!r}")
    return float(value)
