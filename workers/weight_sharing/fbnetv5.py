"""FBNetV5 (Wu et al. 2021): one weight-sharing search for several tasks at once.

The paper's problem: T tasks, each wanting its own architecture, searched in one run whose
cost does not grow with T. Its answer, as built here:

- **One shared supernet, one head per task.** The `mbconv` once-for-all supernet is the
  shared trunk; each task has a linear head on the pooled features (the T heads are one
  linear layer whose outputs are split by task). The weights train with the sum of the
  tasks' losses on the same images, as the paper trains on one multi-task data set (it
  pseudo-labels ImageNet for detection and segmentation; here the tasks are label maps of
  one data set, see `TASKS`).
- **A per-task architecture distribution.** Task t has its own logits theta_t over every
  decision of the space (a factorised categorical distribution P_t; a block's decisions
  count only while the block is active, as the space's canonical form says).
- **Decoupling.** Architectures are not drawn from any P_t: each step draws `samples`
  architectures from the uniform distribution U over the space, trains the supernet on
  them (the paper's uniform-sampling supernet training, independent of theta), and scores
  each on a held-out batch (`arch_fraction` of the training data, forward only) once for
  every task from the same forward pass. Each theta_t then gets an importance-weighted
  REINFORCE step: grad = mean_k w_t(a_k) (L_t(a_k) - b_t) grad log P_t(a_k), with
  w_t(a) = P_t(a) / U(a) (the paper's importance sampling from U to P_t), b_t a moving
  average of the task's loss (a variance-reducing baseline) and L_t the task's cross
  entropy plus `flops_weight` x FLOPs / FLOPs of the largest subnet. So one step costs
  `samples` training forwards and backwards and `samples` scoring forwards whatever T is;
  the T updates are a few vector operations.

Where we simplify (also in docs/guide.md): the tasks are classification label maps of one
image data set, not detection or segmentation; the space is `mbconv` (the paper's is a
multi-resolution FBNetV3-based supernet with skip/keep blocks); the importance ratio is
clipped at `max_ratio` (truncated importance sampling; the untruncated ratio of a peaked
P_t over 20+ decisions has an unusable variance); theta updates start after
`warmup_epochs` of supernet-only training; the derived architecture of a task is the mode
of P_t (then, with `top_k` > 1, the most probable of `derive_samples` draws from P_t),
scored by inherited accuracy on that task after BatchNorm recalibration.

Derived architectures: for each task in `tasks` order, its `top_k` architectures, most
probable first. Metrics per architecture: `task_index` (the task's position in `tasks`),
`task.<name>` = 1 for its task, `log_prob` under its task's distribution, and
`supernet_acc.<task>` (inherited-weight validation accuracy, percent) for every task, with
`flops` and `params`. A search with one task is the single-task search of the same method
(the baseline `bench/weight_sharing.py --only fbnetv5` compares against).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.validation import (
    ArgumentError,
    fraction,
    int_at_least,
    non_negative,
    number_in,
    positive_number,
)

from ._base import WeightSharingSearch, register_search

#: Task name -> (number of classes, label map of a 10-class digit label; None: the labels as
#: they are). `loops`: closed loops of the handwritten digit (0: 1 2 3 5 7, 1: 0 4 6 9, 2: 8).
TASKS: dict[str, tuple[int | None, tuple[int, ...] | None]] = {
    "class": (None, None),
    "parity": (2, (0, 1, 0, 1, 0, 1, 0, 1, 0, 1)),
    "magnitude": (2, (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)),
    "loops": (3, (1, 0, 0, 0, 1, 0, 1, 0, 2, 1)),
}
#: Large negative logit of a choice a decision does not have (decisions differ in size).
_MASKED = -1e9


def check_tasks(value: Any) -> tuple[str, ...]:
    """`tasks`: a non-empty list of distinct names from `TASKS`."""
    if not isinstance(value, list | tuple) or not value \
            or not all(isinstance(t, str) and t in TASKS for t in value) \
            or len(set(value)) != len(value):
        raise ArgumentError("tasks", f"must be a non-empty list of distinct task names from "
                                     f"{', '.join(TASKS)}, got {value!r}")
    return tuple(value)


def task_labels(task: str, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """The labels of `task` from a data set's labels, and its class count; ArgumentError
    naming `tasks` when a derived task meets a data set that does not have 10 classes."""
    classes, mapping = TASKS[task]
    if mapping is None:
        return y, num_classes
    if num_classes != 10:
        raise ArgumentError("tasks", f"task {task!r} maps 10 digit classes; the dataset has "
                                     f"{num_classes} classes")
    return np.asarray(mapping, dtype=np.int64)[y], int(classes or 0)


class _TaskHeads:
    """The space as the multi-task supernet sees it: every network ends in the stacked task
    heads (`classes` outputs in all) instead of the space's classifier."""

    def __init__(self, space: SearchSpace, classes: int) -> None:
        self._space, self._classes = space, classes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._space, name)

    def net_spec(self, arch: Arch) -> Any:
        return dataclasses.replace(self._space.net_spec(arch), num_classes=self._classes)


@register_search
class FBNetV5Search(WeightSharingSearch):
    """Multi-task search: one supernet trained with every task's loss on uniformly sampled
    subnets, one architecture distribution per task learned by importance-weighted
    REINFORCE from the same samples (cost independent of the number of tasks)."""

    name = "fbnetv5"
    description = ("FBNetV5: one supernet, one architecture distribution per task, decoupled "
                   "importance-weighted REINFORCE updates; one architecture per task")
    spaces = ("mbconv",)

    def __init__(self, space: SearchSpace, *, tasks: Any = ("class", "parity"),
                 samples: int = 2, arch_lr: float = 0.05, arch_fraction: float = 0.2,
                 warmup_epochs: int = 0, max_ratio: float = 5.0, baseline_decay: float = 0.9,
                 flops_weight: float = 0.0, lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 5e-5, grad_clip: float = 5.0, top_k: int = 1,
                 derive_samples: int = 16, bn_samples: int = 256, **common: Any) -> None:
        super().__init__(space, **common)
        self.tasks = check_tasks(tasks)
        self.samples = int_at_least("samples", samples, 1)
        self.arch_lr = positive_number("arch_lr", arch_lr)
        self.arch_fraction = fraction("arch_fraction", arch_fraction)
        self.warmup_epochs = int_at_least("warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ArgumentError("warmup_epochs", f"must be below epochs ({self.epochs}), got "
                                                 f"{warmup_epochs!r}")
        self.max_ratio = number_in("max_ratio", max_ratio, 1.0, 1e6)
        self.baseline_decay = number_in("baseline_decay", baseline_decay, 0.0, 0.999)
        self.flops_weight = non_negative("flops_weight", flops_weight)
        self.lr = positive_number("lr", lr)
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) \
                or not 0 <= momentum < 1:
            raise ArgumentError("momentum", f"must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        self.grad_clip = positive_number("grad_clip", grad_clip)
        self.top_k = int_at_least("top_k", top_k, 1)
        self.derive_samples = int_at_least("derive_samples", derive_samples, 0)
        self.bn_samples = int_at_least("bn_samples", bn_samples, 0)

    def _config(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "samples": self.samples, "arch_lr": self.arch_lr,
                "arch_fraction": self.arch_fraction, "warmup_epochs": self.warmup_epochs,
                "max_ratio": self.max_ratio, "baseline_decay": self.baseline_decay,
                "flops_weight": self.flops_weight, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                "top_k": self.top_k, "derive_samples": self.derive_samples,
                "bn_samples": self.bn_samples}

    # ---- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        import torch

        data = self.data
        self._check_input_shape()
        labels = [task_labels(t, data.y_train, data.num_classes) for t in self.tasks]
        val = [task_labels(t, data.y_val, data.num_classes)[0] for t in self.tasks]
        self.task_classes = [c for _, c in labels]
        self._slices = np.cumsum([0, *self.task_classes]).tolist()
        # the trunk is the space's supernet; its classifier holds the T task heads stacked
        from search_spaces.layers.mbconv_net import MBConvSupernet

        self.supernet = MBConvSupernet(_TaskHeads(self.space, int(self._slices[-1])))
        self.supernet.to(self.device)
        n = len(data.x_train)
        if n < 4:
            raise ArgumentError("dataset", f"has {n} training examples; the search needs at "
                                           "least 4")
        split = np.random.default_rng([self.seed % 2**63, 3]).permutation(n)
        n_arch = min(n - 2, max(2, int(round(self.arch_fraction * n))))
        arch_idx, weight_idx = np.sort(split[:n_arch]), np.sort(split[n_arch:])
        x = torch.from_numpy(data.x_train).to(self.device)
        y = torch.from_numpy(np.stack([lab for lab, _ in labels], axis=1)).to(self.device)
        self._xw, self._yw = x[weight_idx], y[weight_idx]
        self._xa, self._ya = x[arch_idx], y[arch_idx]
        self._x_val = torch.from_numpy(data.x_val).to(self.device)
        self._y_val = torch.from_numpy(np.stack(val, axis=1)).to(self.device)
        self._steps = math.ceil(len(self._xw) / self.batch_size)
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=self.lr,
                                         momentum=self.momentum, nesterov=self.momentum > 0,
                                         weight_decay=self.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.epochs * self._steps)
        counts = self.space.choice_counts()
        self._counts = torch.tensor(counts, device=self.device)
        width = max(counts)
        self._valid = torch.arange(width, device=self.device)[None, :] < self._counts[:, None]
        #: theta: [tasks, decisions, max choices] (invalid choices masked at use)
        self.theta = torch.nn.Parameter(torch.zeros(len(self.tasks), len(counts), width,
                                                    device=self.device))
        self.arch_optimizer = torch.optim.Adam([self.theta], lr=self.arch_lr, betas=(0.5, 0.999))
        self.baselines = torch.full((len(self.tasks),), float("nan"), dtype=torch.float64)
        self._order = torch.Generator().manual_seed(self.seed)
        self._sampler = np.random.default_rng([self.seed % 2**63, 1])
        self._max_flops = float(self.space.flops(self.space.max_arch()))

    # ---- the distributions ----------------------------------------------------------------
    def log_probs(self) -> Any:
        """log P_t per decision and choice, [tasks, decisions, max choices]."""
        import torch

        logits = torch.where(self._valid, self.theta, torch.full_like(self.theta, _MASKED))
        return torch.log_softmax(logits, dim=-1)

    def _active(self, dna: list[int]) -> Any:
        import torch

        return torch.tensor(self.space.active(dna), device=self.device)

    def arch_log_prob(self, log_probs: Any, dna: list[int]) -> Any:
        """log P_t(a) for every task, over the active decisions of `dna`: [tasks]."""
        import torch

        index = torch.tensor(dna, device=self.device)
        picked = log_probs[:, torch.arange(len(dna), device=self.device), index]
        return (picked * self._active(dna)).sum(dim=1)

    def _uniform_log_prob(self, dna: list[int]) -> float:
        active = self.space.active(dna)
        return -sum(math.log(c) for c, a in zip(self.space.choice_counts(), active, strict=True)
                    if a)

    def _uniform_dna(self) -> list[int]:
        dna = [int(self._sampler.integers(c)) for c in self.space.choice_counts()]
        return self.space.canonical_dna(dna)

    # ---- training -----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        self.supernet.train()
        order = torch.randperm(len(self._xw), generator=self._order).to(self.device)
        arch_order = torch.randperm(len(self._xa), generator=self._order).to(self.device)
        update_arch = epoch >= self.warmup_epochs
        sums = np.zeros(3 * len(self.tasks) + 1)  # weight loss, correct, arch loss per task; n
        step = 0
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a batch of one
                continue
            a_start = (step * self.batch_size) % len(arch_order)
            arch_index = arch_order[a_start:a_start + self.batch_size]
            if len(arch_index) < 2:
                arch_index = arch_order[:self.batch_size]
            step += 1
            dnas = [self._uniform_dna() for _ in range(self.samples)]
            self._weight_step(dnas, self.ranks.shard(index), sums)
            losses = self._score(dnas, self.ranks.shard(arch_index))
            sums[2 * len(self.tasks):3 * len(self.tasks)] += losses.mean(axis=0)
            if update_arch:
                self._arch_step(dnas, losses)
        if self.ranks.size > 1:
            sums = np.asarray(self.ranks.total(sums.tolist()))
            sums[2 * len(self.tasks):3 * len(self.tasks)] /= self.ranks.size
        return self._record(sums, step, update_arch, time.perf_counter() - started)

    def _weight_step(self, dnas: list[list[int]], index: Any, sums: np.ndarray) -> None:
        """Train the shared weights on the sampled subnets with the sum of the task losses
        (the gradients of the `samples` subnets averaged)."""
        import torch
        import torch.nn.functional as F

        x, y = self._xw[index], self._yw[index]
        self.optimizer.zero_grad(set_to_none=True)
        tasks = len(self.tasks)
        for dna in dnas:
            arch = self.space.from_dna(dna)
            logits = self.supernet(self._resize(x, arch), arch)
            loss = 0.0
            for t in range(tasks):
                part = logits[:, self._slices[t]:self._slices[t + 1]]
                task_loss = F.cross_entropy(part, y[:, t])
                loss = loss + task_loss
                sums[t] += task_loss.item() * len(y) / len(dnas)
                sums[tasks + t] += float((part.argmax(dim=1) == y[:, t]).sum()) / len(dnas)
            self.ranks.scaled(loss / len(dnas)).backward()
        sums[-1] += len(y)
        self.ranks.sync_grads(self.supernet.parameters())
        torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    def _score(self, dnas: list[list[int]], index: Any) -> np.ndarray:
        """Every task's loss of every sampled subnet on a held-out batch, from one forward
        pass per subnet (train-mode BatchNorm, as the weights train): [samples, tasks], the
        same on every rank (shard sums over the ranks)."""
        import torch
        import torch.nn.functional as F

        x, y = self._xa[index], self._ya[index]
        rows = []
        with torch.no_grad():
            for dna in dnas:
                arch = self.space.from_dna(dna)
                logits = self.supernet(self._resize(x, arch), arch)
                rows += [float(F.cross_entropy(logits[:, self._slices[t]:self._slices[t + 1]],
                                               y[:, t], reduction="sum"))
                         for t in range(len(self.tasks))]
        totals = self.ranks.total([*rows, float(len(y))])
        losses = np.asarray(totals[:-1]).reshape(len(dnas), len(self.tasks)) / totals[-1]
        if self.flops_weight:
            cost = [self._flops(self.space.from_dna(d)) / self._max_flops for d in dnas]
            losses = losses + self.flops_weight * np.asarray(cost)[:, None]
        return losses

    def _arch_step(self, dnas: list[list[int]], losses: np.ndarray) -> None:
        """One importance-weighted REINFORCE step of every task's distribution from the same
        uniform samples: sum_k min(P_t(a_k)/U(a_k), max_ratio) (L_t(a_k) - b_t)
        grad log P_t(a_k) / K."""
        import torch

        mean = torch.from_numpy(losses.mean(axis=0))
        fresh = torch.isnan(self.baselines)
        self.baselines = torch.where(fresh, mean, self.baselines)
        advantage = torch.from_numpy(losses) - self.baselines[None, :]
        surrogate = self.importance_terms(dnas, advantage).sum() / len(dnas)
        self.arch_optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        self.arch_optimizer.step()
        self.baselines = self.baseline_decay * self.baselines + \
            (1 - self.baseline_decay) * mean

    def importance_terms(self, dnas: list[list[int]], advantage: Any) -> Any:
        """[samples, tasks] terms min(P_t(a)/U(a), max_ratio) x advantage x log P_t(a), whose
        gradient (the ratio held constant) is each sample's importance-weighted REINFORCE
        estimate of grad_theta_t E_{a ~ P_t}[L_t(a)] from a draw a ~ U."""
        import torch

        log_probs = self.log_probs()
        logp = torch.stack([self.arch_log_prob(log_probs, d) for d in dnas])  # [K, T]
        log_u = torch.tensor([self._uniform_log_prob(d) for d in dnas], device=self.device,
                             dtype=logp.dtype)
        ratio = torch.exp(logp.detach() - log_u[:, None]).clamp(max=self.max_ratio)
        return ratio * advantage.to(device=self.device, dtype=logp.dtype) * logp

    def _record(self, sums: np.ndarray, steps: int, updated: bool,
                seconds: float) -> dict[str, Any]:
        tasks, seen = len(self.tasks), max(sums[-1], 1.0)
        record: dict[str, Any] = {"steps": steps, "arch_updates": updated}
        with np.errstate(all="ignore"):
            entropy = self._entropies()
        for t, name in enumerate(self.tasks):
            record[f"loss.{name}"] = float(sums[t] / seen)
            record[f"train_acc.{name}"] = float(100.0 * sums[tasks + t] / seen)
            record[f"arch_loss.{name}"] = float(sums[2 * tasks + t] / max(steps, 1))
            record[f"entropy.{name}"] = entropy[t]
            record[f"mode.{name}"] = self.space.key(self.mode(t))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["seconds"] = seconds
        return record

    def _entropies(self) -> list[float]:
        """Mean entropy (nats) per decision of each task's distribution."""
        import torch

        with torch.no_grad():
            logp = self.log_probs()
            p = torch.exp(logp) * self._valid
            return [float(v) for v in (-(p * torch.where(self._valid, logp, 0.0)).sum(-1)
                                       ).mean(dim=1).cpu()]

    # ---- helpers ------------------------------------------------------------------------------
    def mode(self, task: int) -> Arch:
        """The most probable architecture of task `task` (index into `tasks`) under P_task,
        exactly: the blocks a depth leaves inactive do not count, so the per-decision argmax
        is not the mode (a shallower stage has fewer factors below 1). Every decision at its
        argmax, then each stage's depth chosen by the probability of the whole stage (the
        stages are independent, so stage by stage is exact)."""
        import torch

        with torch.no_grad():
            log_probs = self.log_probs()
            dna = log_probs[task].argmax(dim=-1).tolist()
            step, depths = 1 + 2 * self.space.max_depth, len(self.space.depths)
            for s in range(len(self.space.stage_channels)):
                best = None
                for d in range(depths):
                    trial = [*dna[:2 + s * step], d, *dna[3 + s * step:]]
                    score = float(self.arch_log_prob(log_probs, trial)[task])
                    if best is None or score > best[0]:
                        best = (score, d)
                dna[2 + s * step] = best[1]
        return self.space.from_dna(self.space.canonical_dna(dna))

    def inherited_accuracy(self, arch: Arch) -> list[float]:
        """Validation accuracy (percent) of `arch` with inherited weights on every task,
        after recalibrating its BatchNorm statistics on `bn_samples` training examples."""
        import torch

        from workers.training import recalibrate_batchnorm

        net = self.supernet.extract(arch).to(self.device)
        with self.ranks.local():
            recalibrate_batchnorm(net, self._xw[:self.bn_samples], self.batch_size,
                                  transform=lambda batch: self._resize(batch, arch))
        net.eval()
        correct = np.zeros(len(self.tasks))
        with torch.inference_mode():
            for start in range(0, len(self._x_val), 256):
                logits = net(self._resize(self._x_val[start:start + 256], arch))
                y = self._y_val[start:start + 256]
                for t in range(len(self.tasks)):
                    part = logits[:, self._slices[t]:self._slices[t + 1]]
                    correct[t] += int((part.argmax(dim=1) == y[:, t]).sum())
        return (100.0 * correct / max(len(self._x_val), 1)).tolist()

    # ---- derivation ---------------------------------------------------------------------------
    def _candidates(self, task: int) -> list[tuple[float, Arch]]:
        """The task's mode, then distinct draws from P_task, most probable first."""
        import torch

        rng = np.random.default_rng([self.seed % 2**63, 4, task])
        with torch.no_grad():
            log_probs = self.log_probs()
            probs = torch.exp(log_probs[task]).cpu().numpy().astype(np.float64)
            found: dict[str, tuple[float, Arch]] = {}
            for i in range(self.derive_samples + 1):
                if i == 0:
                    arch = self.mode(task)
                else:
                    dna = [int(rng.choice(c, p=row[:c] / row[:c].sum()))
                           for row, c in zip(probs, self.space.choice_counts(), strict=True)]
                    arch = self.space.from_dna(self.space.canonical_dna(dna))
                key = self.space.key(arch)
                if key not in found:
                    score = float(self.arch_log_prob(log_probs, self.space.to_dna(arch))[task])
                    found[key] = (score, arch)
        return sorted(found.values(), key=lambda item: (-item[0], self.space.key(item[1])))

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        archs, metrics = [], []
        for t, name in enumerate(self.tasks):
            for log_prob, arch in self._candidates(t)[:self.top_k]:
                accuracy = self.inherited_accuracy(arch)
                record = {"task_index": float(t), f"task.{name}": 1.0, "log_prob": log_prob,
                          **{f"supernet_acc.{other}": acc
                             for other, acc in zip(self.tasks, accuracy, strict=True)},
                          "supernet_acc": accuracy[t], "flops": float(self._flops(arch)),
                          "params": float(self.space.params(arch))}
                archs.append(arch)
                metrics.append(record)
        return archs, metrics

    # ---- checkpoint state -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"supernet": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "theta": self.theta.detach().clone(),
                "arch_optimizer": self.arch_optimizer.state_dict(),
                "baselines": self.baselines.clone(), "order": self._order.get_state(),
                "sampler": self._sampler.bit_generator.state}

    def _arch_state(self) -> dict[str, Any]:
        return {"theta": self.theta.detach().clone(), "baselines": self.baselines.clone(),
                "sampler": self._sampler.bit_generator.state}

    def _load_state(self, state: dict[str, Any]) -> None:
        import torch

        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            self.theta.copy_(state["theta"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.baselines = state["baselines"].clone().cpu()
        self._order.set_state(state["order"].cpu())
        self._sampler.bit_generator.state = state["sampler"]
