"""The `SearchSpace` contract and the registry of spaces.

An architecture is a plain JSON value (a dict). A space owns a PyGlove symbolic template
that defines its decisions; the hot paths (sample, mutate, key, encode) work on the DNA,
a list of integer choices, because PyGlove's generic decode costs milliseconds per call.
`check_space` proves that the fast paths agree with PyGlove's own decode.

Conditional decisions (OFA's convention): a space may have decisions that other decisions
make irrelevant (the kernel of a block beyond a stage's depth). Such a space sets
`conditional = True` and overrides `active(dna)` and `size()`. The architecture and the DNA
still hold every decision; the canonical form sets each inactive decision to its first
candidate, `from_dna` always returns the canonical form, and the generic operators below
(sample, mutate, encode, enumerate) respect activity. An ordinary space needs none of this.

Float decisions (a user's `pg.floatv`): a space may make some decisions continuous by
overriding `float_decisions()` ({decision index: FloatDecision}). Such a decision's DNA
entry is the float value itself (its `choice_counts()` entry is 1: the one feature it takes
in `encode`, the value scaled to [0, 1]); `sample` draws it uniformly within its bounds (in
log space for a log scale), `mutate` perturbs it (Gaussian in the scaled value, clipped, a
redraw when that changes nothing), an inactive one is canonically its lower bound, and the
space is infinite: `size()` is `math.inf` and `enumerate()` refuses. A space without float
decisions behaves exactly as before (the same random draws for the same seed).

PyGlove hooks for `check_space` (`pyglove_dna`, `to_pyglove`, `from_pyglove`): the defaults
suit a space whose DNA is PyGlove's DNA; a space whose flat DNA differs from PyGlove's
(nested conditional choices, a `manyof` taken as one decision) overrides them.
"""

from __future__ import annotations

import abc
import itertools
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .registry import (
    BadReferenceError,
    Registry,
    a_kind_of,
    check_class,
    is_reference,
    resolve_reference,
)

Arch = dict[str, Any]

#: `decision_kinds()` entries
CHOICE, FLOAT = "choice", "float"


@dataclass(frozen=True)
class FloatDecision:
    """A continuous decision in [low, high] (`scale` "log": sampled and scaled in log space)."""

    low: float
    high: float
    scale: str = "linear"  # linear | log

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"a float decision needs finite bounds low <= high, got "
                             f"[{self.low}, {self.high}]")
        if self.scale not in ("linear", "log") or (self.scale == "log" and self.low <= 0):
            raise ValueError(f"a float decision's scale is linear or log (with low > 0), got "
                             f"{self.scale!r} on [{self.low}, {self.high}]")

    def unit(self, value: float) -> float:
        """The value scaled to [0, 1] (the encoding feature)."""
        if self.high == self.low:
            return 0.0
        if self.scale == "log":
            span = math.log(self.high) - math.log(self.low)
            return (math.log(value) - math.log(self.low)) / span
        return (value - self.low) / (self.high - self.low)

    def value(self, unit: float) -> float:
        """Inverse of `unit`, clipped to the bounds."""
        if self.scale == "log":
            v = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + unit * (self.high - self.low)
        return float(min(max(v, self.low), self.high))

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def sample(self, rng: np.random.Generator) -> float:
        return self.value(float(rng.random()))

    def perturb(self, value: float, rng: np.random.Generator, sigma: float = 0.1) -> float:
        """A different value near `value`: a Gaussian step of `sigma` in the scaled value,
        clipped to the bounds; a uniform redraw when the step changes nothing (at a bound)."""
        new = self.value(min(max(self.unit(value) + float(rng.normal(0.0, sigma)), 0.0), 1.0))
        while new == value and self.low < self.high:
            new = self.sample(rng)
        return new


class SearchSpace(abc.ABC):
    """A named space of architectures, with DNA-level operators and a torch builder."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True when some decisions can be inactive (see the module docstring)
    conditional: ClassVar[bool] = False
    # False when the space has no torch model (a user's PyGlove space without a builder):
    # `build` raises NotImplementedError and evaluators that need a model say so
    buildable: bool = True
    # Exact costs beyond params and FLOPs that the space counts without building a model
    # (e.g. the quant space's `bitops`, `model_size_kb`), given by `costs(arch)`. The
    # analytic and train evaluators report them and a job may use them as objectives and
    # constraints (known before evaluation, like params and FLOPs).
    cost_metrics: ClassVar[tuple[str, ...]] = ()

    # ---- the symbolic definition -------------------------------------------------------
    @abc.abstractmethod
    def template(self) -> Any:
        """The PyGlove hyper value (e.g. `pg.Dict` of `pg.oneof`) that defines the space."""

    @abc.abstractmethod
    def choice_counts(self) -> list[int]:
        """Number of candidates of each decision, in DNA order (1 for a float decision)."""

    def float_decisions(self) -> dict[int, FloatDecision]:
        """The continuous decisions by DNA index (none unless overridden; module docstring)."""
        return {}

    def decision_kinds(self) -> list[str]:
        """`CHOICE` or `FLOAT` for each decision, in DNA order."""
        floats = self.float_decisions()
        return [FLOAT if i in floats else CHOICE for i in range(len(self.choice_counts()))]

    @abc.abstractmethod
    def to_dna(self, arch: Arch) -> list[int]:
        """The DNA (one integer per decision) of an architecture; raises ValueError if invalid."""

    @abc.abstractmethod
    def from_dna(self, dna: list[int]) -> Arch:
        """The canonical architecture a DNA stands for (the JSON form of PyGlove's decode of
        `canonical_dna(dna)`)."""

    @abc.abstractmethod
    def key(self, arch: Arch) -> str:
        """Canonical string of an architecture: the primary key for dedup, storage, lookup."""

    @abc.abstractmethod
    def from_key(self, key: str) -> Arch:
        """Inverse of `key`; raises ValueError on a malformed key."""

    @abc.abstractmethod
    def build(self, arch: Arch, **kwargs: Any) -> Any:
        """A `torch.nn.Module` for the architecture."""

    def params(self, arch: Arch) -> int:
        """Trainable parameters of the built model (exact)."""
        return sum(p.numel() for p in self.build(arch).parameters())

    def flops(self, arch: Arch) -> int:
        """Forward FLOPs (2 x multiply-accumulates) of the built model for one input."""
        raise NotImplementedError

    def costs(self, arch: Arch) -> dict[str, float]:
        """The values of `cost_metrics` for `arch` (none unless the space defines some)."""
        return {}

    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension) of `arch`'s model; without
        an arch, the shape of the data the space is configured for (`input_size`). They differ
        only in spaces that search the input resolution."""
        raise NotImplementedError

    # ---- conditional decisions ------------------------------------------------------------
    def active(self, dna: list[int]) -> list[bool]:
        """Which decisions of `dna` matter (all of them, unless the space is conditional).

        Activity must depend only on active decisions, so that `canonical_dna` keeps it."""
        return [True] * len(dna)

    def canonical_dna(self, dna: list[int]) -> list[int]:
        """`dna` with every inactive decision set to its first candidate (0; a float decision:
        its lower bound)."""
        if not self.conditional:
            return list(dna)
        floats = self.float_decisions()
        if not floats:
            return [int(v) if on else 0 for v, on in zip(dna, self.active(dna), strict=True)]
        return [(float(v) if on else floats[i].low) if i in floats else (int(v) if on else 0)
                for i, (v, on) in enumerate(zip(dna, self.active(dna), strict=True))]

    # ---- generic operators on the DNA -----------------------------------------------
    def size(self) -> int | float:
        """Number of distinct (canonical) architectures; `math.inf` with a float decision."""
        if self.float_decisions():
            return math.inf
        if self.conditional:
            raise NotImplementedError(
                f"conditional space {self.name!r} must override size() with the exact number "
                "of canonical architectures")
        return _product(self.choice_counts())

    def sample(self, rng: np.random.Generator) -> Arch:
        """Uniform DNA, then canonical: for a conditional space every controlling decision
        (e.g. a depth) is uniform, and so is each decision it makes active (OFA's sampling)."""
        counts = self.choice_counts()
        floats = self.float_decisions()
        dna = [floats[i].sample(rng) if i in floats else int(rng.integers(c))
               for i, c in enumerate(counts)]
        return self.from_dna(self.canonical_dna(dna))

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """Change exactly one active decision to a different candidate (then canonicalise: a
        smaller depth resets the blocks it drops). A float decision is perturbed
        (`FloatDecision.perturb`)."""
        dna = self.canonical_dna(list(self.to_dna(arch)))
        counts = self.choice_counts()
        floats = self.float_decisions()
        active = self.active(dna)
        mutable = [i for i, c in enumerate(counts) if active[i] and (
            floats[i].low < floats[i].high if i in floats else c > 1)]
        i = mutable[int(rng.integers(len(mutable)))]
        if i in floats:
            dna[i] = floats[i].perturb(float(dna[i]), rng)
            return self.from_dna(self.canonical_dna(dna))
        new = int(rng.integers(counts[i] - 1))
        dna[i] = new if new < dna[i] else new + 1
        return self.from_dna(self.canonical_dna(dna))

    def encode(self, arch: Arch) -> np.ndarray:
        """Fixed-length one-hot feature vector (for predictors); the block of an inactive
        decision is all zero; a float decision is one feature, its value scaled to [0, 1]."""
        dna = self.to_dna(arch)
        counts = self.choice_counts()
        floats = self.float_decisions()
        active = self.active(list(dna))
        out = np.zeros(sum(counts), dtype=np.float32)
        offset = 0
        for i, (value, count, on) in enumerate(zip(dna, counts, active, strict=True)):
            if on and i in floats:
                out[offset] = floats[i].unit(float(value))
            elif on:
                out[offset + value] = 1.0
            offset += count
        return out

    def enumerate(self) -> Iterator[Arch]:
        """Every (canonical) architecture, in DNA order (only sensible for small spaces)."""
        if self.float_decisions():
            raise ValueError(f"space {self.name!r} has float decisions: its architectures "
                             "cannot be enumerated")
        for combo in itertools.product(*(range(c) for c in self.choice_counts())):
            dna = list(combo)
            if self.conditional and self.canonical_dna(dna) != dna:
                continue
            yield self.from_dna(dna)

    def validate(self, arch: Any) -> Arch:
        """Return the canonical form of `arch` (dict or key string); ValueError if invalid."""
        if isinstance(arch, str):
            return self.from_key(arch)
        if not isinstance(arch, dict):
            raise ValueError(f"an architecture of space {self.name!r} must be a dict or key string")
        return self.from_dna(self.to_dna(arch))

    def latency_encoding(self, arch: Arch) -> np.ndarray:
        """Features for latency predictors. The default is `encode`; a space whose built
        network drops dead code (an operation on no input-to-output path) returns the
        encoding of the operations that actually run, so that predictors see the work."""
        return self.encode(arch)

    def describe(self) -> dict[str, Any]:
        """A summary for `nas spaces`: `size` is None for an infinite space (float
        decisions), `input_shape` None for a space that does not know it."""
        size = self.size()
        try:
            shape: list[int] | None = list(self.input_shape())
        except NotImplementedError:
            shape = None
        return {
            "name": self.name,
            "description": self.description,
            "size": None if size == math.inf else size,
            "decisions": len(self.choice_counts()),
            "encoding_length": int(sum(self.choice_counts())),
            "conditional": self.conditional,
            "input_shape": shape,
        }

    # ---- PyGlove hooks (for check_space; see the module docstring) ---------------------------
    def pyglove_dna(self, dna: list[int]) -> Any:
        """PyGlove's DNA (`pg.DNA`) of `template()` for our `dna`."""
        import pyglove as pg

        return pg.DNA(list(dna))

    def to_pyglove(self, arch: Arch) -> Any:
        """The PyGlove value (a materialized `template()`) an architecture stands for."""
        import pyglove as pg

        return pg.from_json(arch)

    def from_pyglove(self, value: Any) -> Arch:
        """The architecture of a materialized `template()` (inverse of `to_pyglove`)."""
        return value.to_json()


#: The spaces by name (spec field `space`), with the plugins of entry-point group `nas.spaces`.
SPACES: Registry[type[SearchSpace]] = Registry("space", "nas.spaces",
                                               check=check_class(SearchSpace, "space"))


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make a space available by its `name` (spec field `space`)."""
    return SPACES.decorator()(cls)


def list_spaces() -> list[str]:
    return SPACES.names()


def space_class(name: str) -> type[SearchSpace]:
    """The class of a registered space, or of the space a `module:attr` reference names (a
    `SearchSpace` subclass or instance, or a PyGlove hyper value: `PyGloveSpace`)."""
    if not is_reference(name):
        return SPACES.get(name)
    obj = resolve_reference(name)
    if isinstance(obj, type) and issubclass(obj, SearchSpace):
        return obj
    if isinstance(obj, SearchSpace):
        return type(obj)
    if _is_pyglove(obj):
        return _pyglove_space_class()
    raise BadReferenceError(f"{name!r} is {a_kind_of(obj)}, not a SearchSpace (class or instance) "
                            "or a PyGlove hyper value")


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Instantiate a space with its `space_args`: a registered name, or a `module:attr`
    reference (a `SearchSpace` instance is used as it is and takes no arguments)."""
    if not is_reference(name):
        return SPACES.get(name)(**kwargs)
    cls = space_class(name)
    obj = resolve_reference(name)
    if isinstance(obj, SearchSpace):
        if kwargs:
            raise ValueError(f"space_args: {name!r} is a SearchSpace instance, which takes no "
                             f"space_args (got {', '.join(sorted(kwargs))})")
        space = obj
    elif cls is not obj:  # a PyGlove hyper value or symbolic builder
        space = cls(obj, **kwargs)  # type: ignore[call-arg]
    else:
        space = cls(**kwargs)
    # known by its reference: `get_space(space.name)` finds it again anywhere (a worker, a
    # strategy's preparation), and its architectures have a namespace of their own in the
    # database (two users' spaces both called "pyglove" would share keys)
    space.name = name  # type: ignore[misc]
    return space


def _is_pyglove(obj: Any) -> bool:
    """A PyGlove hyper value, symbolic value or symbolic class (only when the user's module
    imported pyglove: nothing here imports it for a plain object)."""
    pg = sys.modules.get("pyglove")
    if pg is None:
        return False
    if isinstance(obj, type):
        return issubclass(obj, pg.Symbolic)
    return isinstance(obj, pg.hyper.HyperValue | pg.Symbolic)


def _pyglove_space_class() -> type[SearchSpace]:
    try:
        from .pyglove_space import PyGloveSpace
    except ImportError as exc:
        raise BadReferenceError(f"PyGlove spaces are not available here ({exc})") from None
    return PyGloveSpace


def _product(counts: list[int]) -> int:
    """Product of choice counts as an exact Python int (spaces can exceed 2**63)."""
    return int(np.prod([int(c) for c in counts], dtype=object))
