"""One-shot supernet search (BigNAS): sandwich training, then an evolutionary subnet search.

Training. One weight-sharing supernet (`MBConvSupernet` for `mbconv`, `HybridSupernet` for
`hybrid`) is trained with the sandwich rule: every step runs the largest subnet on the
labels, then the smallest and `sandwich` random subnets with in-place distillation (soft
cross entropy to the largest subnet's detached logits); the gradients of all of them add up
into one optimiser step (SGD with Nesterov momentum, cosine schedule per step, gradient
clipping). Subnets whose input resolution differs from the data's see bilinearly resized
inputs. `sample_log` records each step's subnets (roles, keys, FLOPs; the last `LOG_STEPS`
steps, checkpointed).

Complexity-aware sampling (ElasticViT / ShiftNAS): with `complexity_aware: true` each random
subnet is the first of `flops_candidates` uniform samples whose FLOPs lies within
`max_flops_gap` (relative: |f - f_prev| / f_prev) of the previous random subnet's, or the
closest one when none does, so consecutive subnets never pull the shared weights in very
different directions; `false` samples uniformly.

Issue 19's variants (`oneshot_sampling`): `sampler: elasticvit` draws the random subnets with
ElasticViT's sampler (a walk over equal-share FLOPs levels, each subnet in the previous one's
level or a neighbour, and per-level memory banks of the best subnets measured so far, drawn
with probability `bank_prob`); `supernets: K` trains a balanced mixture of K supernets, each
architecture routed by its downsampling configuration with a learned, Sinkhorn-balanced
assignment (evaluation and export use the hard balanced assignment). Both learn only from
global-batch losses and draw with the shared seeded generator, so N ranks stay identical.

Fine-tuned scoring (issue 19): `finetune_steps: N` (default 0, off) gives every extracted
subnet N SGD steps on training batches (lr `finetune_lr` decayed to zero, momentum 0.9, the
batch order seeded by the search's seed and the subnet's key) before its BN recalibration,
both when the evolution scores it and in the exported weights; the supernet is not changed,
so training and its checkpoints are as without it.

Search. After training, an evolutionary search (population `population`, `generations`
rounds; the best quarter are parents, children by `space.mutate` or by uniform crossover of
two parents' DNA) scores subnets by inherited-weight top-1 accuracy on the validation split,
each subnet first extracted and its BatchNorm statistics recalibrated on the first
`bn_samples` training examples (slimmable supernets share BN statistics across widths, so
the running averages are meaningless for any single subnet without it). Candidates must
satisfy the constraints `max_flops`, `max_params` and `max_latency_ms` (measured on this
worker: torch eager, batch 1, one thread, `latency_repeats` timed runs; cached per subnet).
The derived architectures are the `top_k` best feasible subnets seen; their metrics are
`supernet_acc` (percent), `flops`, `params`, and `latency_ms` unless `latency: none`.

Exported weights. `_derive` writes, next to the checkpoint, `subnet-<rank>.pt` for each
derived architecture (rank 1 = `outcome.archs[0]`): the `state_dict` (CPU tensors) of
`space.build(arch)` with the inherited, BN-recalibrated weights, so
`space.build(arch).load_state_dict(torch.load(path))` gives the model; `subnets.json` lists
rank, file, key, arch and metrics. `export_subnet(arch)` returns such a module directly.

Determinism: the data order, the subnet sampler and the evolution have their own seeded
generators (the first two are checkpointed), so on CPU a resumed run equals an
uninterrupted one. Measured latencies are timings: with `max_latency_ms` the feasible set
near the limit can differ between runs; `latency: none` makes the search fully reproducible.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, int_at_least, positive_number

from ._base import (
    CHECKPOINT,
    SearchOutcome,
    WeightSharingSearch,
    _resolve_device,
    _seed_everything,
    register_search,
)
from .oneshot_sampling import SAMPLERS, ElasticViTSampler, SupernetMixture, pooling_configs

LATENCY_SOURCES = ("measured", "none")
PARENT_FRACTION = 0.25  # of the population kept as parents each generation (OFA's choice)
#: Steps kept in `sample_log` (the subnets each step trained; checkpointed, so bounded).
LOG_STEPS = 5000


def _field(name: str, message: str, value: Any) -> ArgumentError:
    return ArgumentError(name, f"must be {message}, got {value!r}")


def _soft_cross_entropy(logits: Any, teacher: Any) -> Any:
    """In-place distillation loss: cross entropy to the teacher's softmax."""
    import torch.nn.functional as F

    return -(F.softmax(teacher, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@register_search
class OneShotSearch(WeightSharingSearch):
    """BigNAS-style one-shot search: sandwich-rule supernet training with in-place
    distillation (optionally complexity-aware sampling), then a constrained evolutionary
    search scored by inherited-weight accuracy."""

    name = "oneshot"
    description = ("one-shot supernet (BigNAS sandwich rule, in-place distillation, optional "
                   "complexity-aware sampling) + constrained evolutionary subnet search")
    spaces = ("mbconv", "hybrid")

    def __init__(self, space: SearchSpace, *, sandwich: int = 2, complexity_aware: bool = False,
                 max_flops_gap: float = 0.25, flops_candidates: int = 10, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 5e-5, grad_clip: float = 5.0,
                 population: int = 50, generations: int = 10, top_k: int = 5,
                 bn_samples: int = 256, max_flops: float | None = None,
                 max_params: float | None = None, max_latency_ms: float | None = None,
                 latency: str = "measured", latency_repeats: int = 10, sampler: str = "default",
                 flops_buckets: int = 8, bank_size: int = 4, bank_prob: float = 0.5,
                 supernets: int = 1, finetune_steps: int = 0, finetune_lr: float = 0.01,
                 **common: Any) -> None:
        super().__init__(space, **common)
        self.sandwich = int_at_least("sandwich", sandwich, 0)
        if not isinstance(complexity_aware, bool):
            raise _field("complexity_aware", "true or false", complexity_aware)
        self.complexity_aware = complexity_aware
        self.max_flops_gap = positive_number("max_flops_gap", max_flops_gap)
        self.flops_candidates = int_at_least("flops_candidates", flops_candidates, 1)
        self.lr = positive_number("lr", lr)
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) \
                or not 0 <= momentum < 1:
            raise _field("momentum", "a number in [0, 1)", momentum)
        self.momentum = float(momentum)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) \
                or not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise _field("weight_decay", "a number >= 0", weight_decay)
        self.weight_decay = float(weight_decay)
        self.grad_clip = positive_number("grad_clip", grad_clip)
        self.population = int_at_least("population", population, 2)
        self.generations = int_at_least("generations", generations, 0)
        self.top_k = int_at_least("top_k", top_k, 1)
        self.bn_samples = int_at_least("bn_samples", bn_samples, 0)
        self.max_flops = positive_number("max_flops", max_flops, optional=True)
        self.max_params = positive_number("max_params", max_params, optional=True)
        self.max_latency_ms = positive_number("max_latency_ms", max_latency_ms, optional=True)
        if latency not in LATENCY_SOURCES:
            raise _field("latency", f"one of {', '.join(LATENCY_SOURCES)}", latency)
        if latency == "none" and self.max_latency_ms is not None:
            raise _field("latency", "'measured' when max_latency_ms is set", latency)
        self.latency = latency
        self.latency_repeats = int_at_least("latency_repeats", latency_repeats, 3)
        if sampler not in SAMPLERS:
            raise _field("sampler", f"one of {', '.join(SAMPLERS)}", sampler)
        if sampler == "elasticvit" and complexity_aware:
            raise _field("sampler", "'default' when complexity_aware is true (elasticvit "
                                    "replaces it)", sampler)
        self.sampler = sampler
        self.flops_buckets = int_at_least("flops_buckets", flops_buckets, 2)
        self.bank_size = int_at_least("bank_size", bank_size, 1)
        if isinstance(bank_prob, bool) or not isinstance(bank_prob, int | float) \
                or not 0 <= bank_prob <= 1:
            raise _field("bank_prob", "a number in [0, 1]", bank_prob)
        self.bank_prob = float(bank_prob)
        self.supernets = int_at_least("supernets", supernets, 1)
        configs = len(pooling_configs(space)) if space.name in self.spaces else 0
        if self.supernets > 1 and self.supernets > configs:
            raise _field("supernets", f"at most the space's {configs} downsampling "
                                      "configurations", supernets)
        self.finetune_steps = int_at_least("finetune_steps", finetune_steps, 0)
        self.finetune_lr = positive_number("finetune_lr", finetune_lr)
        self._folder: Path | None = None
        self._latency_cache: dict[str, float] = {}

    def _config(self) -> dict[str, Any]:
        return {"sandwich": self.sandwich, "complexity_aware": self.complexity_aware,
                "max_flops_gap": self.max_flops_gap, "flops_candidates": self.flops_candidates,
                "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "grad_clip": self.grad_clip, "population": self.population,
                "generations": self.generations, "top_k": self.top_k,
                "bn_samples": self.bn_samples, "max_flops": self.max_flops,
                "max_params": self.max_params, "max_latency_ms": self.max_latency_ms,
                "latency": self.latency, "latency_repeats": self.latency_repeats,
                "sampler": self.sampler, "flops_buckets": self.flops_buckets,
                "bank_size": self.bank_size, "bank_prob": self.bank_prob,
                "supernets": self.supernets,
                # only when on, so checkpoints written before the option still resume
                **({"finetune_steps": self.finetune_steps, "finetune_lr": self.finetune_lr}
                   if self.finetune_steps else {})}

    # ---- public extras ----------------------------------------------------------------------
    def run(self, checkpoint_dir: str | Path, **kwargs: Any) -> SearchOutcome:
        """`WeightSharingSearch.run`; also writes the derived subnets' weights to
        `checkpoint_dir` (see the module docstring)."""
        self._folder = Path(checkpoint_dir)
        return super().run(checkpoint_dir, **kwargs)

    def restore(self, checkpoint_dir: str | Path) -> int:
        """Load a checkpoint's supernet without training (for `export_subnet` in another
        process); returns its epoch."""
        import torch

        torch.set_num_threads(self.threads)
        self.device = _resolve_device(self.device_name)
        self.data = self.dataset.load()
        _seed_everything(self.seed)
        self._setup()
        path = Path(checkpoint_dir) / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
        return self._load_checkpoint(path)

    def export_subnet(self, arch: Arch) -> Any:
        """The standalone module of `arch` (`space.build(arch)`) with the supernet's weights
        and BatchNorm statistics recalibrated on `bn_samples` training examples, in eval mode
        on the search's device. Needs a trained (`run`) or restored (`restore`) supernet."""
        from workers.training import recalibrate_batchnorm

        if not hasattr(self, "supernet"):
            raise RuntimeError("export_subnet needs a supernet: call run() or restore() first")
        arch = self.space.validate(arch)
        net = self.supernet.extract(arch).to(self.device)
        if self.finetune_steps:
            self._finetune(net, arch)
        with self.ranks.local():  # on N ranks, each recalibrates alike on the same examples
            recalibrate_batchnorm(net, self._x_train[:self.bn_samples], self.batch_size,
                                  transform=lambda batch: self._resize(batch, arch))
        return net.eval()

    def _finetune(self, net: Any, arch: Arch) -> None:
        """`finetune_steps` SGD steps (momentum 0.9, lr `finetune_lr` decayed to zero by a
        cosine) of the extracted subnet on training batches drawn by a generator seeded from
        the search's seed and the subnet's key: the same subnet always gets the same
        fine-tune, and the supernet itself is not touched (`extract` copies its weights)."""
        import torch
        import torch.nn.functional as F

        key = self.space.key(arch)
        order = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{key}".encode()))
        optimizer = torch.optim.SGD(net.parameters(), lr=self.finetune_lr, momentum=0.9,
                                    nesterov=True, weight_decay=self.weight_decay)
        batch = min(self.batch_size, len(self._x_train))
        net.train()
        with self.ranks.local():
            for step in range(self.finetune_steps):
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * self.finetune_lr * (
                        1 + math.cos(math.pi * step / self.finetune_steps))
                index = torch.randperm(len(self._x_train), generator=order)[:batch]
                index = index.to(self.device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(self._resize(self._x_train[index], arch)),
                                       self._y_train[index])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                optimizer.step()

    def sandwich_archs(self) -> list[tuple[str, Arch]]:
        """The (role, arch) pairs of the next training step: `largest`, `smallest`, then
        `sandwich` x `random` (advances the sampler)."""
        out = [("largest", self._largest), ("smallest", self._smallest)]
        return out + [("random", self._random_subnet()) for _ in range(self.sandwich)]

    # ---- setup and training -----------------------------------------------------------------
    def _setup(self) -> None:
        import torch

        from .hybrid_supernet import HybridSupernet, extreme_archs

        data = self.data
        self._check_input_shape()
        if self.space.name == "mbconv":
            members = [self.space.supernet() for _ in range(self.supernets)]
            self._largest, self._smallest = self.space.max_arch(), self.space.min_arch()
        else:
            members = [HybridSupernet(self.space) for _ in range(self.supernets)]
            self._largest, self._smallest = extreme_archs(self.space)
        self.supernet = members[0] if self.supernets == 1 else SupernetMixture(self.space,
                                                                              members)
        self.supernet.to(self.device)
        self._x_train = torch.from_numpy(data.x_train).to(self.device)
        self._y_train = torch.from_numpy(data.y_train).to(self.device)
        self._x_val = torch.from_numpy(data.x_val).to(self.device)
        self._y_val = torch.from_numpy(data.y_val).to(self.device)
        n = len(self._x_train)
        self._steps_per_epoch = n // self.batch_size + (1 if n % self.batch_size > 1 else 0)
        if self._steps_per_epoch == 0:
            raise ArgumentError("dataset", f"has {n} training examples; training needs at "
                                           "least 2")
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=self.lr,
                                         momentum=self.momentum, nesterov=self.momentum > 0,
                                         weight_decay=self.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.epochs * self._steps_per_epoch)
        self._order = torch.Generator().manual_seed(self.seed)
        self._sampler = np.random.default_rng([self.seed, 1])
        self._prev_flops: int | None = None
        self._elastic = None if self.sampler == "default" else ElasticViTSampler(
            self.space, self._flops, self.flops_buckets, self.bank_size, self.bank_prob,
            self.seed)
        self._levels: list[int] = []  # the target FLOPs levels of this step's random subnets
        self.sample_log: list[dict[str, list[Any]]] = []

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        self.supernet.train()
        order = torch.randperm(len(self._x_train), generator=self._order).to(self.device)
        totals = {"loss": 0.0, "kd_loss": 0.0, "correct": 0, "seen": 0}
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if len(index) < 2:  # BatchNorm cannot train on a batch of one
                continue
            index = self.ranks.shard(index)  # on N ranks, this rank's part of the batch
            self._step(self._x_train[index], self._y_train[index], totals)
        if self.ranks.size > 1:
            names = ("loss", "kd_loss", "correct", "seen")
            totals.update(zip(names, self.ranks.total([totals[k] for k in names]),
                              strict=True))
        gaps = self._flops_gaps(self.sample_log[-self._steps_per_epoch:])
        return {"loss": totals["loss"] / totals["seen"],
                "kd_loss": totals["kd_loss"] / totals["seen"],
                "train_acc": 100.0 * totals["correct"] / totals["seen"],
                "val_acc_largest": self.inherited_accuracy(self._largest),
                "val_acc_smallest": self.inherited_accuracy(self._smallest),
                "max_flops_gap": max(gaps, default=0.0),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started}

    def _step(self, x: Any, y: Any, totals: dict[str, Any]) -> None:
        import torch
        import torch.nn.functional as F

        self._levels = []
        archs = self.sandwich_archs()
        mixture = self.supernet if isinstance(self.supernet, SupernetMixture) else None
        members = [mixture.route(a, self._sampler) for _, a in archs] if mixture else []
        entry = {"roles": [r for r, _ in archs], "keys": [self.space.key(a) for _, a in archs],
                 "flops": [self._flops(a) for _, a in archs]}
        if self._elastic is not None:
            entry["levels"] = list(self._levels)
        if mixture is not None:
            entry["members"] = members
        self.sample_log.append(entry)
        del self.sample_log[:-LOG_STEPS]
        self.optimizer.zero_grad(set_to_none=True)
        teacher = None
        losses = []
        for i, (_, arch) in enumerate(archs):
            x_arch = self._resize(x, arch)
            logits = (mixture(x_arch, arch, members[i]) if mixture is not None
                      else self.supernet(x_arch, arch))
            if teacher is None:  # the largest subnet learns from the labels
                loss = F.cross_entropy(logits, y)
                teacher = logits.detach()
                totals["loss"] += loss.item() * len(y)
                totals["correct"] += int((logits.argmax(dim=1) == y).sum())
                totals["seen"] += len(y)
            else:
                loss = _soft_cross_entropy(logits, teacher)
                totals["kd_loss"] += loss.item() * len(y) / max(1, len(archs) - 1)
            losses.append(loss.item() * len(y))
            self.ranks.scaled(loss).backward()
        if mixture is not None or self._elastic is not None:
            self._learn_from_losses(archs, members, losses, len(y))
        self.ranks.sync_grads(self.supernet.parameters())  # clip the averaged gradient
        torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    def _learn_from_losses(self, archs: list[tuple[str, Arch]], members: list[int],
                           losses: list[float], batch: int) -> None:
        """Feed the global-batch losses (the same on every rank) to the ElasticViT banks and
        the mixture's routing."""
        *sums, seen = self.ranks.total([*losses, float(batch)])
        means = [total / seen for total in sums]
        if self._elastic is not None:
            for (role, arch), loss in zip(archs, means, strict=True):
                if role == "random":
                    self._elastic.update(arch, loss)
        if members:
            for (_, arch), member, loss in zip(archs, members, means, strict=True):
                self.supernet.record(arch, member, loss)

    # ---- sampling -----------------------------------------------------------------------------
    def _random_subnet(self) -> Arch:
        if self._elastic is not None:
            arch, level = self._elastic.draw(self._sampler)
            self._levels.append(level)
        elif not self.complexity_aware or self._prev_flops is None:
            arch = self.space.sample(self._sampler)
        else:
            previous = self._prev_flops
            candidates = [self.space.sample(self._sampler) for _ in range(self.flops_candidates)]
            gaps = [abs(self._flops(a) - previous) / previous for a in candidates]
            inside = [i for i, gap in enumerate(gaps) if gap <= self.max_flops_gap]
            arch = candidates[inside[0] if inside else int(np.argmin(gaps))]
        self._prev_flops = self._flops(arch)
        return arch

    @staticmethod
    def _flops_gaps(log: list[dict[str, list[Any]]]) -> list[float]:
        """Relative FLOPs gaps between consecutive random subnets in `log`."""
        flops = [f for step in log for r, f in zip(step["roles"], step["flops"], strict=True)
                 if r == "random"]
        return [abs(b - a) / a for a, b in zip(flops[:-1], flops[1:], strict=True)]

    # ---- checkpoint state -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"supernet": self.supernet.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "order": self._order.get_state(),
                "sampler": self._sampler.bit_generator.state,
                "prev_flops": self._prev_flops,
                "sample_log": self.sample_log,
                "elasticvit": None if self._elastic is None else self._elastic.state()}

    def _arch_state(self) -> dict[str, Any]:
        """What decides the subnets drawn: the sampler and the last epoch's draws."""
        return {"sampler": self._sampler.bit_generator.state, "prev_flops": self._prev_flops,
                "sample_log": self.sample_log[-self._steps_per_epoch:],
                "elasticvit": None if self._elastic is None else self._elastic.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._order.set_state(state["order"].cpu())
        self._sampler.bit_generator.state = state["sampler"]
        self._prev_flops = state["prev_flops"]
        self.sample_log = list(state["sample_log"])
        if self._elastic is not None:
            self._elastic.load(state["elasticvit"])

    # ---- evaluation and the evolutionary search -------------------------------------------------
    def inherited_accuracy(self, arch: Arch) -> float:
        """Top-1 validation accuracy (percent) of `arch` with inherited weights."""
        import torch

        net = self.export_subnet(arch)
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(self._x_val), 256):
                x = self._resize(self._x_val[start:start + 256], arch)
                correct += int((net(x).argmax(dim=1) == self._y_val[start:start + 256]).sum())
        return 100.0 * correct / len(self._x_val)

    def _latency_ms(self, arch: Arch) -> float:
        from workers.latency import measure_latency_ms

        key = self.space.key(arch)
        if key not in self._latency_cache:
            net = self.supernet.extract(arch).cpu()
            timing = measure_latency_ms(net, self.space.input_shape(arch), batch=1, threads=1,
                                        warmup=2, repeats=self.latency_repeats)
            self._latency_cache[key] = float(timing["median_ms"])
        return self._latency_cache[key]

    def _feasible(self, arch: Arch) -> bool:
        """Whether `arch` satisfies the constraints (cheap ones first)."""
        if self.max_flops is not None and self._flops(arch) > self.max_flops:
            return False
        if self.max_params is not None and self.space.params(arch) > self.max_params:
            return False
        return self.max_latency_ms is None or self._latency_ms(arch) <= self.max_latency_ms

    def _crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover of two DNAs (each decision from either parent), canonicalised."""
        dna_a, dna_b = self.space.to_dna(a), self.space.to_dna(b)
        mask = rng.random(len(dna_a)) < 0.5
        child = [x if m else y for x, y, m in zip(dna_a, dna_b, mask, strict=True)]
        return self.space.from_dna(self.space.canonical_dna(child))

    def _evolve(self) -> dict[str, tuple[float, Arch]]:
        """Every feasible subnet the search scored: key -> (inherited accuracy, arch)."""
        rng = np.random.default_rng([self.seed, 2])
        scored: dict[str, tuple[float, Arch]] = {}
        rejected: set[str] = set()

        def admit(arch: Arch, population: dict[str, Arch]) -> None:
            key = self.space.key(arch)
            if key in population or key in rejected:
                return
            if key not in scored:
                if not self._feasible(arch):
                    rejected.add(key)
                    return
                scored[key] = (self.inherited_accuracy(arch), arch)
            population[key] = arch

        population: dict[str, Arch] = {}
        for _ in range(20 * self.population):
            if len(population) >= self.population:
                break
            admit(self.space.sample(rng), population)
        if not population:  # a tight constraint: the smallest subnet may still fit
            admit(self._smallest, population)
        for _ in range(self.generations):
            if not population:
                break
            ranked = sorted(population, key=lambda k: (-scored[k][0], k))
            parents = [population[k] for k in ranked[:max(2, int(PARENT_FRACTION
                                                                  * self.population))]]
            population = {self.space.key(p): p for p in parents}
            for _ in range(20 * self.population):
                if len(population) >= self.population:
                    break
                first = parents[int(rng.integers(len(parents)))]
                if len(parents) > 1 and rng.random() < 0.5:
                    second = parents[int(rng.integers(len(parents)))]
                    child = self._crossover(first, second, rng)
                else:
                    child = self.space.mutate(first, rng)
                admit(child, population)
        return scored

    def _derive(self) -> tuple[list[Arch], list[dict[str, float]]]:
        scored = self._evolve()
        best = sorted(scored, key=lambda k: (-scored[k][0], k))[:self.top_k]
        archs, metrics = [], []
        for key in best:
            accuracy, arch = scored[key]
            record = {"supernet_acc": accuracy, "flops": float(self._flops(arch)),
                      "params": float(self.space.params(arch))}
            if self.latency == "measured":
                record["latency_ms"] = self._latency_ms(arch)
            archs.append(arch)
            metrics.append(record)
        if self._folder is not None:
            self._save_subnets(self._folder, archs, metrics)
        return archs, metrics

    def _save_subnets(self, folder: Path, archs: list[Arch],
                      metrics: list[dict[str, float]]) -> None:
        """`subnet-<rank>.pt` (state_dict, CPU) per derived arch and a `subnets.json` index,
        each written atomically."""
        import torch

        from ..evaluators.train import NORMALISATION_KEYS

        # the input standardisation the supernet trained with, so an export of the subnet
        # takes inputs as the dataset gives them (as for a trained trial's weights)
        normalisation = {key: torch.tensor(self.data.normalisation[name], dtype=torch.float32)
                         for name, key in NORMALISATION_KEYS.items()
                         } if self.data.normalisation else {}
        index = []
        for rank, (arch, record) in enumerate(zip(archs, metrics, strict=True), start=1):
            state = {k: v.detach().cpu() for k, v in self.export_subnet(arch).state_dict().items()}
            state.update(normalisation)
            path = folder / f"subnet-{rank}.pt"
            torch.save(state, path.with_name(path.name + ".tmp"))
            os.replace(path.with_name(path.name + ".tmp"), path)
            index.append({"rank": rank, "file": path.name, "key": self.space.key(arch),
                          "arch": arch, "metrics": record})
        tmp = folder / "subnets.json.tmp"
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, folder / "subnets.json")
