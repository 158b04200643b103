"""`proxy` evaluator: training-free scores of the untrained candidate (seconds, not epochs).

Arguments (`evaluator_args`):

- `proxies`: names from `predictors.proxies.list_proxies()`; default `DEFAULT_PROXIES`
  (`meco`): the best battery within the throughput budget, chosen by `bench/proxies.py` on
  NAS-Bench-201 cells other than those it is reported on.
- `dataset`: where the minibatch of the data-dependent proxies (snip, grasp, fisher,
  grad_norm, jacov, nwot) comes from: anything the `train` evaluator accepts (e.g.
  `npz:../shared/data/cifar10-test-first20.npz`, 20 real CIFAR-10 images) or `gaussian`
  (standard-normal inputs of the space's input shape, uniform random labels). Default: the
  bundled `digits` for digits-shaped spaces (1x8x8), otherwise `gaussian` -- a fallback that
  needs no download but makes the data-dependent proxies judge the network on noise; pass a
  real dataset for CIFAR-shaped spaces (the figures in `bench/proxies.json` use the 20 images).
- `batch_size`: examples in the minibatch (default 20; a dataset with fewer uses them all).
- `seed`: seeds the weights of the built model, the synthetic data and the proxies (0).
- `device`: where the network is scored: `auto` (default: the worker's GPU when it has one,
  else the CPU), `cpu`, `cuda` or `cuda:N`; a GPU the worker lacks fails the evaluation with
  one line. On Ray, `auto` and `cuda` make the tasks ask for a share of the cluster's GPUs.
  Scores on a GPU equal the CPU's up to float rounding (they share the cache).

Speed: one network is built per architecture and shared by its proxies (`SharedModel`: the
built weights, buffers, gradient flags and modes are put back between proxies, so each proxy
sees exactly the network a fresh build gives); the minibatch is loaded once per worker.

Metrics: `proxy.<name>` for each proxy, `score` (below), the space's exact costs (`params`,
`flops` and its `cost_metrics`, e.g. quant's `bitops` and `model_size_kb`:
`exact_costs`) and `proxy_time_s` (seconds spent computing the proxies).

`score` needs no population: the mean over the requested proxies of each one's percentile
in a reference distribution measured on NAS-Bench-201 (`predictors.combine.fixed_score`),
i.e. rank voting against 1,000 reference cells. With the default battery (meco) it reaches
Spearman 0.92 against NB201 test accuracy (bench/results/proxies.json). On another space
the reference is off-scale (percentiles saturate near 0 or 1), so the score stays monotone
in every proxy but is a cruder vote; a strategy with a population of its own can combine
`proxy.<name>` metrics with `predictors.combine.mean_rank` instead.

Cache: every computed proxy is also returned as a measurement of device
`proxy:<network_key>|<data_key>` (`cache_device()`: the network's size and the data, batch
size and seed the scores depend on),
metric = the proxy's name, source `measured`; the driver stores them and hands the stored
ones back with the next evaluation of the same architecture (`evaluate_cached`), in any job,
so a score is never computed twice for the same (architecture, proxy, data).
"""

from __future__ import annotations

from typing import Any

from predictors.combine import DEFAULT_BATTERY
from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError, UnsupportedSpaceError, int_at_least

from ..datasets import DatasetSpec, parse_dataset, pin_dataset
from ..torch_device import check_device, resolve_device
from ._base import (
    Evaluation,
    EvaluationError,
    Evaluator,
    cost_metric_names,
    exact_costs,
    register_evaluator,
)

#: `predictors.combine.DEFAULT_BATTERY`: chosen by `bench/proxies.py` within the throughput
#: budget on NB201 cells disjoint from those it is reported on (bench/results/proxies.json).
DEFAULT_PROXIES: tuple[str, ...] = DEFAULT_BATTERY
DEFAULT_BATCH_SIZE = 20
GAUSSIAN = "gaussian"
#: Proxies read from the space's analytic cost model instead of building a model.
_ANALYTIC = ("params", "flops")


def _check_proxy(i: int, name: Any) -> None:
    """A registered proxy name or a `module:attr` reference to a proxy function;
    `ArgumentError` naming `proxies[i]` otherwise. (A registered name loads no plugin.)"""
    from predictors.proxies import get_proxy

    if not isinstance(name, str):
        raise ArgumentError(f"proxies[{i}]", f"must be a proxy name, got {name!r}")
    try:
        get_proxy(name)
    except (KeyError, ValueError, TypeError) as exc:
        text = exc.args[0] if exc.args else str(exc)
        raise ArgumentError(f"proxies[{i}]", f"is wrong: {text}") from None


#: Seeded architectures whose parameter counts fingerprint the network a space builds.
FINGERPRINT_SAMPLES = 4


@register_evaluator
class ProxyEvaluator(Evaluator):
    """Scores an untrained architecture with training-free proxies (see the module doc)."""

    description = "training-free proxy scores of the untrained network (cached in the database)"

    name = "proxy"
    cheap = False
    needs_model = True

    def __init__(self, space: SearchSpace, proxies: Any = None, dataset: Any = None,
                 batch_size: Any = DEFAULT_BATCH_SIZE, seed: Any = 0,
                 device: Any = "auto") -> None:
        super().__init__(space)
        from predictors.combine import NB201_QUANTILES
        from predictors.proxies import list_proxies

        if proxies is None:
            proxies = list(DEFAULT_PROXIES)
        if isinstance(proxies, str) or not isinstance(proxies, list | tuple) or not proxies:
            raise ArgumentError("proxies", "must be a non-empty list of proxy names "
                                           f"(known: {', '.join(list_proxies())}), got {proxies!r}")
        for i, name in enumerate(proxies):
            _check_proxy(i, name)
        self.proxies: list[str] = list(dict.fromkeys(proxies))
        self.score_proxies = [p for p in self.proxies if p in NB201_QUANTILES]
        if not self.score_proxies:
            raise ArgumentError("proxies", f"has no proxy with reference quantiles for the "
                                           f"combined score ({', '.join(self.proxies)}); include "
                                           f"one of {', '.join(NB201_QUANTILES)}")
        self.batch_size = int_at_least("batch_size", batch_size, 2)
        self.seed = int_at_least("seed", seed, 0)
        self.device_name = check_device("device", device)
        shape = tuple(space.input_shape())
        if dataset is None:
            dataset = "digits" if shape == (1, 8, 8) else GAUSSIAN
        self.dataset_spec: DatasetSpec | None = None
        if dataset != GAUSSIAN:
            self.dataset_spec = parse_dataset(dataset)
            data_shape = self.dataset_spec.known_input_shape()
            if data_shape[0] != shape[0]:
                raise UnsupportedSpaceError(
                    f"space {space.name!r} expects {shape[0]} input channels but dataset "
                    f"{self.dataset_spec.describe()} has {data_shape[0]}: set space_args "
                    f"input_channels: {data_shape[0]}", "space_args.input_channels")
            if any(p not in _ANALYTIC for p in self.proxies):  # a minibatch is scored
                from .train import check_classes

                check_classes(space, self.dataset_spec)
        self._batch: tuple[Any, Any] | None = None
        self._on_device: dict[tuple[str, tuple[int, ...]], tuple[Any, Any]] = {}
        self._device: Any = None

    @classmethod
    def uses_gpu(cls, args: dict[str, Any]) -> bool:
        return args.get("device", "auto") != "cpu"

    def torch_device(self) -> Any:
        """The `torch.device` this worker scores on (`EvaluationError`, one line, when the
        `device` argument asks for a GPU it does not have)."""
        if self._device is None:
            try:
                self._device = resolve_device("evaluator_args.device", self.device_name)
            except ValueError as exc:
                raise EvaluationError(str(exc)) from None
        return self._device

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        return dict(args) if args.get("dataset") == GAUSSIAN else pin_dataset(args)

    @classmethod
    def space_args_from_data(cls, args: dict[str, Any]) -> dict[str, Any]:
        """`num_classes` from the labels of a dataset given explicitly."""
        if args.get("dataset") in (None, GAUSSIAN):
            return {}
        return {"num_classes": parse_dataset(args["dataset"]).info().num_classes}

    # ---- data ----------------------------------------------------------------------------
    def data_key(self) -> str:
        """What the data-dependent scores depend on besides the architecture (cache key)."""
        data = self.dataset_spec.describe() if self.dataset_spec else GAUSSIAN
        return f"{data}|batch={self.batch_size}|seed={self.seed}"

    def batch(self, arch: Arch | None = None, device: Any = None) -> tuple[Any, Any]:
        """The minibatch (inputs, labels), loaded once, resized to the arch's input size
        and moved to `device` (the CPU by default), each variant kept for the next call."""
        import torch

        if self._batch is None:
            self._batch = self._load_batch()
        shape = tuple(self.space.input_shape(arch))
        where = str(device or "cpu")
        found = self._on_device.get((where, shape))
        if found is not None:
            return found
        x, y = self._batch
        if tuple(x.shape[1:]) != shape:
            if x.shape[1] != shape[0]:
                raise EvaluationError(f"the data has {x.shape[1]} input channels, the "
                                      f"architecture expects {shape[0]}")
            x = torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear",
                                                align_corners=False)
        if device is not None:
            x, y = x.to(device), y.to(device)
        self._on_device[(where, shape)] = (x, y)
        return x, y

    def _load_batch(self) -> tuple[Any, Any]:
        import numpy as np
        import torch

        classes = int(getattr(self.space, "num_classes", 10))
        if self.dataset_spec is None:
            gen = torch.Generator().manual_seed(self.seed)
            shape = (self.batch_size, *self.space.input_shape())
            return (torch.randn(shape, generator=gen),
                    torch.randint(0, classes, (self.batch_size,), generator=gen))
        data = self.dataset_spec.load()
        x = np.concatenate([data.x_train, data.x_val])[: self.batch_size]
        y = np.concatenate([data.y_train, data.y_val])[: self.batch_size]
        if len(x) < 2:
            raise EvaluationError(f"dataset {data.name} has fewer than 2 examples")
        if int(y.max()) >= classes:
            raise EvaluationError(f"dataset {data.name} has labels up to {int(y.max())} but "
                                  f"the space builds {classes} outputs: set "
                                  f"space_args.num_classes")
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long()

    # ---- scoring -------------------------------------------------------------------------
    def compute(self, arch: Arch, names: list[str],
                timings: dict[str, float] | None = None) -> dict[str, float]:
        """The named proxies of one architecture (deterministic for the evaluator's seed)."""
        import time

        from predictors.proxies import compute_proxies

        values: dict[str, float] = {}
        for name in names:
            if name in _ANALYTIC:
                start = time.perf_counter()
                cost = self.space.params(arch) if name == "params" else self.space.flops(arch)
                values[name] = float(cost)
                if timings is not None:
                    timings[name] = time.perf_counter() - start
        rest = [n for n in names if n not in values]
        if rest:
            from predictors.proxies import get_proxy

            device = self.torch_device()
            passes = {get_proxy(n).group or n for n in rest}  # networks compute_proxies asks for
            model = SharedModel(lambda: self.space.build(arch), device, keep=len(passes) > 1)
            values.update(compute_proxies(model, self.batch(arch, device), rest,
                                          seed=self.seed, timings=timings))
        for name, value in values.items():
            if value != value or value in (float("inf"), float("-inf")):
                raise EvaluationError(f"proxy {name} is not finite ({value}) for this "
                                      "architecture")
        return {name: values[name] for name in names}

    def proxy_value(self, arch: Arch, key: str, name: str) -> float:
        """One proxy of one architecture (`key` identifies it for a cache)."""
        return self.compute(arch, [name])[name]

    def metric_names(self) -> set[str]:
        return {f"proxy.{p}" for p in self.proxies} | {"score", "proxy_time_s", "proxy_cached"} \
            | cost_metric_names(self.space)

    def cache_device(self) -> str:
        return f"proxy:{self.network_key()}|{self.data_key()}"

    def network_key(self) -> str:
        """What the scores depend on in the network besides the architecture: the space's
        construction arguments (channels, depth, input shape, classes), fingerprinted by the
        input shape and the parameter counts of its first- and last-choice architectures and
        of `FINGERPRINT_SAMPLES` seeded samples (the two ends alone can agree across
        constructions: NB201's all-`none` and all-pooling cells have no parameters, so
        `cells_per_stage` 1 and 5 looked alike), hashed to keep the key short."""
        import hashlib

        import numpy as np

        counts = self.space.choice_counts()
        ends = [self.space.from_dna(self.space.canonical_dna(dna))
                for dna in ([0] * len(counts), [c - 1 for c in counts])]
        rng = np.random.default_rng(0)
        archs = ends + [self.space.sample(rng) for _ in range(FINGERPRINT_SAMPLES)]
        shape = "x".join(str(d) for d in self.space.input_shape())
        params = "-".join(str(int(self.space.params(a))) for a in archs)
        return f"{self.space.name}:{shape}:{hashlib.sha1(params.encode()).hexdigest()[:12]}"

    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        return self.evaluate_cached(arch, key, {})

    def evaluate_cached(self, arch: Arch, key: str, cached: dict[str, float]) -> Evaluation:
        from predictors.combine import fixed_score

        from ._base import Measurement

        timings: dict[str, float] = {}
        reuse = {p: float(cached[p]) for p in self.proxies
                 if p in cached and p not in _ANALYTIC}
        todo = [p for p in self.proxies if p not in reuse]
        computed = self.compute(arch, todo, timings) if todo else {}
        values = {p: reuse[p] if p in reuse else computed[p] for p in self.proxies}
        device = self.cache_device()
        stored = [Measurement(device, p, v, "measured") for p, v in computed.items()
                  if p not in _ANALYTIC]
        costs = exact_costs(self.space, arch)
        metrics = {f"proxy.{name}": value for name, value in values.items()}
        metrics["score"] = fixed_score({p: values[p] for p in self.score_proxies})
        metrics.update(costs.metrics)
        metrics["proxy_time_s"] = float(sum(timings.values()))
        metrics["proxy_cached"] = float(len(reuse))
        return Evaluation(metrics, stored, costs.params, costs.flops)


class SharedModel:
    """A model factory for `compute_proxies` that builds the network once and, on every
    later call, hands back the same network put back as built: parameters and buffers
    (e.g. BatchNorm's running statistics) copied back from a snapshot, gradients cleared,
    `requires_grad` flags, dtypes and training modes as built. A proxy that leaves anything
    else behind (a hook, a changed set of tensors) gets a fresh build instead (the caller
    seeds torch before each call, so it has the same weights). Building the NB201 network
    costs about as much as a cheap proxy, so this halves the cost of a two-proxy battery;
    the scores equal those of fresh builds (tests/test_proxy_throughput.py)."""

    def __init__(self, build: Any, device: Any = None, keep: bool = True) -> None:
        self.build, self.device, self.keep = build, device, keep
        self.model: Any = None
        self.builds = 0

    def __call__(self) -> Any:
        if self.model is not None and self._restore():
            return self.model
        model = self.build()
        if self.device is not None and getattr(self.device, "type", "cpu") != "cpu":
            model = model.to(self.device)
        self.builds += 1
        if self.keep:  # (a single pass needs no snapshot: `keep=False` builds every time)
            self.model = model
            self._snapshot()
        return model

    def _tensors(self) -> list[Any]:
        return [*self.model.parameters(), *self.model.buffers()]

    def _snapshot(self) -> None:
        tensors = self._tensors()
        self.saved = [t.detach().clone() for t in tensors]
        self.ids = [id(t) for t in tensors]
        self.flags = [p.requires_grad for p in self.model.parameters()]
        self.modes = [(m, m.training) for m in self.model.modules()]

    def _restore(self) -> bool:
        """Put the model back as built; False when it cannot be (then it is rebuilt)."""
        import torch

        tensors = self._tensors()
        if [id(t) for t in tensors] != self.ids or [m for m, _ in self.modes] != list(
                self.model.modules()) or any(
                m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_forward_hooks_with_kwargs", None)
                for m, _ in self.modes) or any(
                getattr(t, "_backward_hooks", None) for t in tensors):
            return False
        with torch.no_grad():
            for tensor, saved in zip(tensors, self.saved, strict=True):
                if tensor.dtype != saved.dtype or tensor.device != saved.device:
                    tensor.data = saved.clone()
                else:
                    tensor.copy_(saved)
        for param, flag in zip(self.model.parameters(), self.flags, strict=True):
            param.grad = None
            param.requires_grad_(flag)
        for module, training in self.modes:
            module.training = training
        return True
