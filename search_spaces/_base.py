"""The `SearchSpace` contract and the registry of spaces.

An architecture is a plain JSON value (a dict). A space owns a PyGlove symbolic template
that defines its decisions; the hot paths (sample, mutate, key, encode) work on the DNA,
a list of integer choices, because PyGlove's generic decode costs milliseconds per call.
`check_space` proves that the fast paths agree with PyGlove's own decode.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

Arch = dict[str, Any]

_REGISTRY: dict[str, type[SearchSpace]] = {}


class SearchSpace(abc.ABC):
    """A named space of architectures, with DNA-level operators and a torch builder."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    # ---- the symbolic definition -------------------------------------------------------
    @abc.abstractmethod
    def template(self) -> Any:
        """The PyGlove hyper value (e.g. `pg.Dict` of `pg.oneof`) that defines the space."""

    @abc.abstractmethod
    def choice_counts(self) -> list[int]:
        """Number of candidates of each decision, in DNA order."""

    @abc.abstractmethod
    def to_dna(self, arch: Arch) -> list[int]:
        """The DNA (one integer per decision) of an architecture; raises ValueError if invalid."""

    @abc.abstractmethod
    def from_dna(self, dna: list[int]) -> Arch:
        """The architecture a DNA stands for (the JSON form of PyGlove's decode)."""

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

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch dimension)."""
        raise NotImplementedError

    # ---- generic operators on the DNA -----------------------------------------------
    def size(self) -> int:
        return int(np.prod([int(c) for c in self.choice_counts()], dtype=object))

    def sample(self, rng: np.random.Generator) -> Arch:
        counts = self.choice_counts()
        return self.from_dna([int(rng.integers(c)) for c in counts])

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """Change exactly one decision to a different candidate."""
        dna = list(self.to_dna(arch))
        counts = self.choice_counts()
        mutable = [i for i, c in enumerate(counts) if c > 1]
        i = mutable[int(rng.integers(len(mutable)))]
        new = int(rng.integers(counts[i] - 1))
        dna[i] = new if new < dna[i] else new + 1
        return self.from_dna(dna)

    def encode(self, arch: Arch) -> np.ndarray:
        """Fixed-length one-hot feature vector (for predictors)."""
        dna = self.to_dna(arch)
        counts = self.choice_counts()
        out = np.zeros(sum(counts), dtype=np.float32)
        offset = 0
        for value, count in zip(dna, counts, strict=True):
            out[offset + value] = 1.0
            offset += count
        return out

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture, in DNA order (only sensible for small spaces)."""
        counts = self.choice_counts()
        for flat in range(self.size()):
            dna = []
            for c in reversed(counts):
                flat, r = divmod(flat, c)
                dna.append(r)
            yield self.from_dna(list(reversed(dna)))

    def validate(self, arch: Any) -> Arch:
        """Return the canonical form of `arch` (dict or key string); ValueError if invalid."""
        if isinstance(arch, str):
            return self.from_key(arch)
        if not isinstance(arch, dict):
            raise ValueError(f"an architecture of space {self.name!r} must be a dict or key string")
        return self.from_dna(self.to_dna(arch))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "size": self.size(),
            "decisions": len(self.choice_counts()),
            "encoding_length": int(sum(self.choice_counts())),
        }


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: make a space available by its `name` (spec field `space`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def list_spaces() -> list[str]:
    return sorted(_REGISTRY)


def space_class(name: str) -> type[SearchSpace]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown space {name!r}; known: {', '.join(list_spaces())}") from None


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Instantiate a registered space with its `space_args`."""
    return space_class(name)(**kwargs)


SpaceFactory = Callable[..., SearchSpace]
