"""`check_strategy`: the conformance suite every registered strategy must pass.

The checks drive the strategy the way `nas.driver` does: a window of proposals in flight,
duplicates discarded (never told), results told strictly in trial-number order, some of
them failed or infeasible (score None), architectures handed back as JSON copies (as they
come out of the database on resume). A deterministic synthetic objective stands in for an
evaluator, so the suite needs no benchmark data.

Promises checked:
- `ask` returns a canonical, JSON-serialisable architecture of the strategy's space, and
  does not change it afterwards;
- `tell` accepts completed, failed and infeasible trials;
- the same seed and the same tells give the same proposals, whether or not `state_dict` is
  called on the way (it has no side effects), and different seeds give different ones;
- `state_dict` is strict JSON (no NaN: PostgreSQL's json type rejects it), `load_state_dict`
  of its JSON round trip into a fresh strategy reproduces it, and the restored strategy
  proposes exactly what the original does from there on, at any point of the search;
- it never proposes an architecture the job already has (`SearchContext.is_known`);
- under a constraint whose value is known before evaluation (a synthetic device latency
  that rules out about half the space), it proposes no architecture known to violate it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces import SearchSpace
from search_spaces._conformance import check_runner

from ._base import Constraint, Objective, SearchContext, Strategy, TrialView

StrategyFactory = Callable[[int], Strategy]
MAX_DUPLICATES = 2000  # as the driver: a strategy that only repeats itself is stuck


def check_strategy(
    strategy_factory: StrategyFactory,
    *,
    trials: int = 80,
    window: int = 4,
    seed: int = 0,
) -> None:
    """Run every conformance check; raises AssertionError naming the failed check.

    `strategy_factory(seed)` must build a fresh strategy (on the nb201 space, or any space
    with at least a few thousand architectures) seeded with `seed`.
    """
    if trials < 10 or window < 1:
        raise ValueError("check_strategy needs trials >= 10 and window >= 1")
    probe = strategy_factory(seed)
    if not isinstance(probe, Strategy):
        raise AssertionError(f"the factory built a {type(probe).__name__}, not a Strategy")
    name = probe.name or type(probe).__name__

    run = check_runner("strategy", name, strategy_factory)

    run(_check_ask_tell_contract, trials, window, seed)
    run(_check_state_dict_is_json, trials, window, seed)
    run(_check_deterministic_per_seed, trials, window, seed)
    run(_check_seeds_differ, trials, window, seed)
    run(_check_state_dict_round_trip, trials, window, seed)
    run(_check_never_reproposes, trials, window, seed)
    run(_check_respects_constraints, trials, window, seed)


# ---- a driver-like loop ---------------------------------------------------------------------
def synthetic_result(space: SearchSpace, number: int, arch: dict[str, Any]) -> TrialView:
    """A deterministic outcome: every 7th trial fails, every 5th is infeasible (score None
    but metrics present), the others score a fixed linear function of the DNA (negative
    values included, as for `min` objectives)."""
    key = space.key(arch)
    copy = json.loads(json.dumps(arch))
    if number % 7 == 0:
        return TrialView(number, copy, key, "failed", {}, None, None)
    dna = space.to_dna(arch)
    weights = np.cos(np.arange(1, len(dna) + 1) * 1.7)
    value = float(np.dot(weights, np.asarray(dna, dtype=float))) - 1.0
    if number % 5 == 0:
        return TrialView(number, copy, key, "completed", {"objective": 1e9}, None, (1e9,))
    return TrialView(number, copy, key, "completed", {"objective": value}, value, (value,))


SYNTHETIC_DEVICE = "synthetic-device"
SYNTHETIC_LIMIT = 0.5


def synthetic_latency(key: str, metric: str, device: str | None) -> float | None:
    """A latency in [0, 1) known before evaluation, a fixed function of the key (so about
    half of any space is over `SYNTHETIC_LIMIT`)."""
    if device != SYNTHETIC_DEVICE or metric != "latency_ms":
        return None
    import zlib

    return (zlib.crc32(key.encode()) % 10007) / 10007


@dataclass
class DriverLoop:
    """Ask/tell as the driver does; `log` holds every proposal's key, duplicates included.
    With `constrained`, the bound context carries a synthetic latency constraint."""

    strategy: Strategy
    trials: int
    window: int
    known: set[str] = field(default_factory=set)
    pending: deque[TrialView] = field(default_factory=deque)
    asked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (JSON then, arch)
    log: list[str] = field(default_factory=list)
    number: int = 0
    told: int = 0
    on_tell: Callable[[DriverLoop], None] | None = None
    constrained: bool = False

    def __post_init__(self) -> None:
        self.strategy.bind(self.context())

    def context(self) -> SearchContext:
        constraints = (Constraint("latency_ms", SYNTHETIC_DEVICE, max=SYNTHETIC_LIMIT),) \
            if self.constrained else ()
        return SearchContext(objectives=(Objective("objective", "max"),),
                             constraints=constraints, value_of=synthetic_latency,
                             is_known=self.known.__contains__)

    def clone_with(self, strategy: Strategy) -> DriverLoop:
        # the clone's context must see the clone's own `known` set
        return DriverLoop(strategy, self.trials, self.window, set(self.known),
                          deque(self.pending), list(self.asked), list(self.log), self.number,
                          self.told, constrained=self.constrained)

    def _ask(self) -> tuple[str, dict[str, Any]]:
        space = self.strategy.space
        for _ in range(MAX_DUPLICATES):
            arch = self.strategy.ask()
            assert isinstance(arch, dict), f"ask() returned a {type(arch).__name__}, not a dict"
            try:
                text = json.dumps(arch, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise AssertionError(f"ask() returned a non-JSON architecture {arch!r}: {exc}"
                                     ) from None
            try:
                canonical = space.validate(arch)
            except ValueError as exc:
                raise AssertionError(f"ask() returned an invalid architecture {arch!r}: {exc}"
                                     ) from None
            assert canonical == arch, \
                f"ask() returned a non-canonical architecture {arch!r} (canonical {canonical!r})"
            key = space.key(arch)
            self.log.append(key)
            self.asked.append((text, arch))
            if key not in self.known:
                return key, arch
        raise AssertionError(f"{MAX_DUPLICATES} proposals in a row were duplicates after "
                             f"{self.number} trials")

    def _fill(self) -> None:
        while self.number < min(self.told + self.window, self.trials):
            key, arch = self._ask()
            self.known.add(key)
            self.number += 1
            self.pending.append(synthetic_result(self.strategy.space, self.number, arch))

    def run(self, until_told: int | None = None) -> DriverLoop:
        until = self.trials if until_told is None else min(until_told, self.trials)
        self._fill()
        while self.pending and self.told < until:
            view = self.pending.popleft()
            self.strategy.tell(view)
            self.told += 1
            self._fill()
            if self.on_tell is not None:
                self.on_tell(self)
        return self


def _json_state(strategy: Strategy) -> Any:
    state = strategy.state_dict()
    try:
        text = json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"state_dict() is not strict JSON: {exc}") from None
    return json.loads(text)


# ---- the checks ----------------------------------------------------------------------------
def _check_ask_tell_contract(factory: StrategyFactory, trials: int, window: int,
                             seed: int) -> None:
    loop = DriverLoop(factory(seed), trials, window).run()
    assert loop.told == trials, f"only {loop.told} of {trials} trials were told"
    assert len(loop.known) == trials
    for text, arch in loop.asked:
        assert json.dumps(arch, sort_keys=True) == text, \
            f"a proposed architecture was changed after ask() returned it: {text} -> {arch}"


def _check_deterministic_per_seed(factory: StrategyFactory, trials: int, window: int,
                                  seed: int) -> None:
    first = DriverLoop(factory(seed), trials, window).run().log
    second = DriverLoop(factory(seed), trials, window).run().log
    _same(first, second, "two strategies with the same seed and the same tells")
    snapshots = DriverLoop(factory(seed), trials, window,
                           on_tell=lambda loop: _json_state(loop.strategy)).run().log
    _same(first, snapshots, "calling state_dict() after every tell changed the proposals;")


def _check_seeds_differ(factory: StrategyFactory, trials: int, window: int, seed: int) -> None:
    a = DriverLoop(factory(seed), trials, window).run().log
    b = DriverLoop(factory(seed + 1), trials, window).run().log
    assert a != b, f"seeds {seed} and {seed + 1} gave the same {len(a)} proposals"


def _check_state_dict_is_json(factory: StrategyFactory, trials: int, window: int,
                              seed: int) -> None:
    for strategy in (factory(seed), DriverLoop(factory(seed), trials, window).run().strategy):
        state = _json_state(strategy)
        again = _json_state(strategy)
        assert again == state, "two state_dict() calls in a row differ (it has side " \
                               f"effects): {_diff(state, again)}"
        fresh = factory(seed)
        fresh.load_state_dict(json.loads(json.dumps(state)))
        again = _json_state(fresh)
        assert again == state, "load_state_dict(state_dict()) into a fresh strategy gives " \
                               f"another state_dict: {_diff(state, again)}"


def _check_state_dict_round_trip(factory: StrategyFactory, trials: int, window: int,
                                 seed: int) -> None:
    reference = DriverLoop(factory(seed), trials, window).run()
    for pause in sorted({0, 1, 3, trials // 3, trials // 2, trials - 3}):
        original = DriverLoop(factory(seed), trials, window).run(until_told=pause)
        state = _json_state(original.strategy)
        fresh = factory(seed)
        fresh.load_state_dict(state)
        restored = original.clone_with(fresh).run()
        original.run()
        _same(reference.log, original.log, f"pausing after {pause} tells changed the search;")
        _same(original.log, restored.log,
              f"a strategy restored from the state_dict taken after {pause} tells")


def _check_never_reproposes(factory: StrategyFactory, trials: int, window: int,
                            seed: int) -> None:
    loop = DriverLoop(factory(seed), trials, window).run()
    repeats = len(loop.log) - len(set(loop.log))
    assert repeats == 0, f"{repeats} of {len(loop.log)} proposals repeated an architecture " \
                         "the job already had (SearchContext.is_known says so)"


def _check_respects_constraints(factory: StrategyFactory, trials: int, window: int,
                                seed: int) -> None:
    loop = DriverLoop(factory(seed), trials, window, constrained=True).run()
    over = [k for k in loop.log
            if synthetic_latency(k, "latency_ms", SYNTHETIC_DEVICE) > SYNTHETIC_LIMIT]
    assert not over, f"{len(over)} of {len(loop.log)} proposals break a constraint known " \
                     f"before evaluation (latency_ms <= {SYNTHETIC_LIMIT}), e.g. {over[0]}"


def _same(a: list[str], b: list[str], what: str) -> None:
    if a == b:
        return
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
             min(len(a), len(b)))
    first = a[i] if i < len(a) else "<end>"
    second = b[i] if i < len(b) else "<end>"
    raise AssertionError(f"{what} proposals differ from proposal {i + 1} on: {first} vs "
                         f"{second}")


def _diff(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return f"entries {keys} differ"
    return f"{str(a)[:200]} vs {str(b)[:200]}"
