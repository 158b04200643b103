"""The `Strategy` contract: ask/tell, deterministic per seed, resumable from `state_dict`."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from search_spaces import Arch, SearchSpace
from search_spaces.registry import (
    BadReferenceError,
    Registry,
    a_kind_of,
    check_class,
    is_reference,
    resolve_reference,
)

if TYPE_CHECKING:
    from .preparation import Preparation


@dataclass(frozen=True)
class TrialView:
    """What a strategy is told about a finished trial.

    `score` is the primary objective turned into "higher is better" (negated for `min`);
    it is None when the trial failed or violates a constraint, so strategies never breed
    from an infeasible parent.
    """

    number: int
    arch: Arch
    key: str
    status: str
    metrics: dict[str, float]
    score: float | None
    objectives: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Objective:
    """An objective of the job: a metric (or, with `device`, a device measurement). One
    class for the job spec (`JobSpec.objectives`) and the strategies (`SearchContext`)."""

    metric: str
    mode: str = "max"  # max | min
    device: str | None = None

    def score(self, value: float) -> float:
        """The value turned into "higher is better"."""
        return value if self.mode == "max" else -value


@dataclass(frozen=True)
class Constraint:
    """A hard limit on a metric or a device measurement (e.g. latency_ms on pixel3), in the
    job spec (`JobSpec.constraints`) and the strategies' `SearchContext`."""

    metric: str
    device: str | None = None
    max: float | None = None
    min: float | None = None

    def satisfied(self, value: float) -> bool:
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)


def _no_value(key: str, metric: str, device: str | None) -> float | None:
    return None


def _nothing_known(key: str) -> bool:
    return False


@dataclass(frozen=True)
class SearchContext:
    """What the driver tells a strategy about the job, bound before the first `ask`.

    `value_of(key, metric, device)` is a value known before evaluating (a benchmark's latency
    table, a stored measured/imported/predicted latency, analytic params/FLOPs) or None;
    `is_known(key)` says whether the job already proposed that architecture. `space_args`
    are the job's (the space a preparation builds elsewhere starts from them) and
    `artifacts` is the job's artifact folder (checkpoints, files a strategy keeps; None
    outside a driver).
    """

    objectives: tuple[Objective, ...] = (Objective("score"),)
    constraints: tuple[Constraint, ...] = ()
    value_of: Callable[[str, str, str | None], float | None] = field(default=_no_value)
    is_known: Callable[[str], bool] = field(default=_nothing_known)
    space_args: dict[str, Any] = field(default_factory=dict)
    artifacts: Path | None = None


#: Proposals a strategy draws before it gives up looking for an acceptable one.
ACCEPTABLE_TRIES = 200


class Strategy(abc.ABC):
    """Proposes architectures. The driver deduplicates proposals and counts the budget."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.context = SearchContext()

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """`strategy_args` as the job stores them: file paths absolute, with `checksums`
        (see `workers.evaluators.Evaluator.canonical_args`); by default unchanged."""
        return dict(args)

    def bind(self, context: SearchContext) -> None:
        """Receive the job's objectives, constraints and look-ups (before the first ask)."""
        self.context = context

    # ---- helpers for subclasses --------------------------------------------------------------
    def violates(self, arch: Arch, key: str | None = None) -> bool:
        """True when a value known before evaluation breaks a constraint."""
        if not self.context.constraints:
            return False
        key = self.space.key(arch) if key is None else key
        for constraint in self.context.constraints:
            value = self.context.value_of(key, constraint.metric, constraint.device)
            if value is not None and not constraint.satisfied(value):
                return True
        return False

    def acceptable(self, arch: Arch, key: str | None = None) -> bool:
        """Worth a trial: not proposed before in this job and not known to be infeasible."""
        key = self.space.key(arch) if key is None else key
        return not self.context.is_known(key) and not self.violates(arch, key)

    def draw_acceptable(self, propose: Callable[[], Arch], tries: int = ACCEPTABLE_TRIES,
                        fallback: Callable[[], Arch] | None = None) -> Arch:
        """The first acceptable of up to `tries` calls of `propose`; when none is, the same
        drawn from `fallback` if given, else the last one (the driver then discards a
        duplicate; a space with nothing acceptable left ends there)."""
        arch = propose()
        for _ in range(tries - 1):
            if self.acceptable(arch):
                return arch
            arch = propose()
        if fallback is not None and not self.acceptable(arch):
            return self.draw_acceptable(fallback, tries)
        return arch

    def mutate_or_sample(self, parent: Arch, mutations: int = 1) -> Arch:
        """An acceptable child of `parent` (`mutations` decisions changed), else an
        acceptable sample of the space: once every neighbour of a parent is known (or
        infeasible), mutating it again only repeats architectures, and a strategy whose few
        live parents are all used up would stall the job on duplicates."""
        def mutant() -> Arch:
            child = parent
            for _ in range(mutations):
                child = self.space.mutate(child, self.rng)
            return child

        return self.draw_acceptable(mutant, fallback=lambda: self.space.sample(self.rng))

    @abc.abstractmethod
    def ask(self) -> Arch:
        """The next architecture to evaluate."""

    def tell(self, trial: TrialView) -> None:  # noqa: B027 - stateless strategies ignore it
        """Learn from a finished trial (completed or failed)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` of it continues the same sequence."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # ---- optional hooks the driver always calls --------------------------------------------
    def preparation(self) -> Preparation | None:
        """Work to run on the job's executor before the first `ask` (scoring a candidate
        pool, training a supernet: see `nas.strategies.preparation`), or None: nothing to
        run, or already run (its result is part of the state). Called once per driver
        session, after `bind` and `load_state_dict`."""
        return None

    def prepared(self, result: Any) -> None:  # noqa: B027 - optional hook
        """Take back the result of `preparation()`'s work; the driver then stores a
        snapshot, so `state_dict` must hold what a resumed job needs."""

    def result_metrics(self, key: str) -> dict[str, float]:
        """Metrics stored with a completed trial's own (e.g. a weight-sharing search's
        `search.*` metrics of an architecture it derived); none by default."""
        return {}

    def result_weights(self, key: str) -> bytes | None:
        """Weights stored for a completed trial whose evaluator returned none (e.g. a
        one-shot subnet's inherited weights, for `nas export`); none by default."""
        return None


class _StrategyRegistry(Registry["type[Strategy]"]):
    """The strategy registry, whose lazy loading (on the first listing, or the first lookup
    of a name not registered yet) also makes a strategy of every weight-sharing search
    (`workers.weight_sharing`, plugins included) that is not one yet: `@register_search` is a
    method's one registration. Lazy because the searches import torch (seconds)."""

    def load_plugins(self) -> None:
        super().load_plugins()
        from .weight_sharing import register_search_strategies

        register_search_strategies(self)


#: The strategies by name (spec field `strategy`), with the plugins of `nas.strategies`.
STRATEGIES: Registry[type[Strategy]] = _StrategyRegistry(
    "strategy", "nas.strategies", check=check_class(Strategy, "strategy"))


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its `name`."""
    return STRATEGIES.decorator()(cls)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def strategy_class(name: str) -> type[Strategy]:
    """A registered strategy, or the `Strategy` subclass a `module:attr` reference names."""
    if not is_reference(name):
        return STRATEGIES.get(name)
    obj = resolve_reference(name)
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise BadReferenceError(f"{name!r} is {a_kind_of(obj)}, not a Strategy subclass")
    return obj


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **args: Any) -> Strategy:
    """Build a strategy; the files pinned in `checksums` must be the ones submitted."""
    from workers.files import CHECKSUMS, verify_checksums

    cls = strategy_class(name)
    verify_checksums(args.pop(CHECKSUMS, None), "strategy_args")
    return cls(space, seed=seed, **args)
