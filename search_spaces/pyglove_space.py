"""A user's own PyGlove search space as a `SearchSpace`.

`PyGloveSpace(obj, **space_args)` wraps a PyGlove hyper value (`pg.Dict` / `pg.List` of
`pg.oneof`, `pg.manyof`, `pg.floatv`, nested and conditional: a `oneof` over dicts holding
their own choices) or a symbolic builder (an instance of a `pg.symbolize`d class or function
whose arguments hold hyper values) that materializes to a `torch.nn.Module`.

Everything comes from the hyper value's structure, checked against `pg.dna_spec(obj)`:

- Decisions, in PyGlove's depth-first order: a `oneof` is a choice; a `floatv` a float
  decision (`FloatDecision`); a `manyof(k, ...)` is k independent choices when it is neither
  distinct nor sorted, otherwise one choice over its valid selections (PyGlove's k
  sub-choices constrain each other: one decision keeps sampling uniform and a mutation one
  change). A decision under a candidate (a `oneof` of dicts with their own choices) is active
  only while that candidate is chosen: PyGlove's nested DNA becomes the flat conditional DNA of
  `SearchSpace` (inactive decisions canonically at their first candidate / lower bound).
- An architecture is the JSON form of the materialized value (`pg.to_json`), which holds only
  the chosen candidates; for a builder it is the dict of the builder's arguments that hold
  decisions (the fixed ones come from the template), so `build(arch)` makes the builder with
  them and calls it (a symbolic function) or takes the object (a symbolic `nn.Module` class).
  A template that is not a dict is wrapped: `{"value": ...}`.
- The key is the compact JSON of the canonical architecture (template order).

The hot paths (from_dna, to_dna, key) walk our own tree, not PyGlove's decode (milliseconds
per call); `check_space` compares them with PyGlove's decode and encode through the hooks
`pyglove_dna`, `to_pyglove` and `from_pyglove`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._base import Arch, FloatDecision, SearchSpace
from .validation import ArgumentError

#: A manyof taken as one decision may have at most this many selections.
MAX_SELECTIONS = 100_000
_ROOT_KEY = "value"


# ---- the tree of a template -------------------------------------------------------------
@dataclass
class _Fixed:
    """A value without decisions; `json` is its JSON form (None when not needed)."""

    value: Any
    json: Any = None


@dataclass
class _DictNode:
    items: list[tuple[str, Any]]


@dataclass
class _ListNode:
    items: list[Any]


@dataclass
class _ObjectNode:
    """A symbolic object (`pg.Object`, functors included) with some decisions in its args."""

    cls: type
    type_name: str
    args: list[tuple[str, Any]]


@dataclass
class _ChoiceNode:
    index: int
    candidates: list[Any]


@dataclass
class _ComboNode:
    """A distinct and/or sorted manyof: one decision over `combos` (candidate index tuples);
    `positions[j][c]` is candidate c's node at position j (PyGlove keeps one subtree each)."""

    index: int
    combos: list[tuple[int, ...]]
    positions: list[list[Any]]
    lookup: dict[tuple[int, ...], int] = field(default_factory=dict)


@dataclass
class _FloatNode:
    index: int
    decision: FloatDecision


@dataclass
class _Decision:
    """One flat decision: its candidate count (1 for a float), where it is and when it is
    active (its parent decision takes a value in `allowed`; None: always)."""

    count: int
    path: str
    parent: int | None = None
    allowed: frozenset[int] = frozenset()
    float: FloatDecision | None = None


def is_pyglove_space(obj: Any) -> bool:
    """True when `obj` is a PyGlove hyper value or symbolic value holding at least one
    decision (pyglove is looked at only when the object's module imported it)."""
    pg = sys.modules.get("pyglove")
    if pg is None or isinstance(obj, type):
        return False
    if not isinstance(obj, pg.hyper.HyperValue | pg.Symbolic):
        return False
    try:
        return bool(pg.dna_spec(obj).decision_points)
    except Exception:  # noqa: BLE001 - anything PyGlove cannot make a DNA spec of is no space
        return False


class PyGloveSpace(SearchSpace):
    """A user's PyGlove hyper value or symbolic builder as a search space (module docstring).

    `space_args`: `input_shape` (one sample, e.g. [3, 32, 32] or [64]; or `input_channels`
    and `input_size` for images), needed to count FLOPs and run the model; `num_classes`,
    passed to a builder argument of that name; `name` (default: the builder's name or
    "pyglove"; a space made from a spec's `module:attr` reference should be named by it).
    """

    name = "pyglove"
    description = "a user's PyGlove search space"

    def __init__(self, obj: Any, *, input_shape: list[int] | tuple[int, ...] | None = None,
                 input_channels: int | None = None, input_size: int | None = None,
                 num_classes: int | None = None, name: str | None = None,
                 description: str | None = None) -> None:
        import pyglove as pg

        if not is_pyglove_space(obj):
            raise ValueError(f"space: {type(obj).__name__} {obj!r:.80} is not a PyGlove search "
                             "space (a hyper value such as pg.Dict(x=pg.oneof([...])) or a "
                             "pg.symbolize'd builder whose arguments hold hyper values)")
        self._obj = obj
        self._spec = pg.dna_spec(obj)
        self._decisions: list[_Decision] = []
        self._builder = isinstance(obj, pg.Object) and not isinstance(obj, pg.hyper.HyperValue)
        self._extra_points = 0  # PyGlove's sub-choices of the manyofs we take whole, less one
        self._root = self._walk(obj, "", None, frozenset(), in_arch=True)
        self._dict_root = isinstance(self._root, _DictNode)
        self._check_against_spec()
        self._floats = {i: d.float for i, d in enumerate(self._decisions) if d.float is not None}
        self.conditional = any(d.parent is not None for d in self._decisions)  # type: ignore[misc]
        self.buildable = self._builder
        self.input_size_shape = _input_shape(input_shape, input_channels, input_size)
        if num_classes is not None and (not isinstance(num_classes, int)
                                        or isinstance(num_classes, bool) or num_classes < 1):
            raise ArgumentError("num_classes", f"must be a positive integer, got "
                                               f"{num_classes!r}")
        self.num_classes = num_classes
        # a name with ':' would read as a module:attr reference (the registry passes that)
        self.name = name or (f"pyglove-{type(obj).__name__}" if self._builder else "pyglove")
        if description is not None:
            self.description = description

    # ---- building the tree ----------------------------------------------------------------
    def _add(self, path: str, count: int, parent: int | None, allowed: frozenset[int],
             decision: FloatDecision | None = None) -> int:
        self._decisions.append(_Decision(count, path or "<root>", parent, allowed, decision))
        return len(self._decisions) - 1

    def _walk(self, value: Any, path: str, parent: int | None, allowed: frozenset[int],
              in_arch: bool) -> Any:
        """The node of `value`; decisions found are registered in PyGlove's order."""
        import pyglove as pg

        if isinstance(value, pg.hyper.Float):
            return self._float(value, path, parent, allowed)
        if isinstance(value, pg.hyper.Choices):
            return self._choices(value, path, parent, allowed)
        if isinstance(value, pg.hyper.HyperValue):
            raise ValueError(f"space: {type(value).__name__} at {path or 'the root'} is not "
                             "supported (use pg.oneof, pg.manyof, pg.floatv)")
        if isinstance(value, pg.Dict | dict):
            items = [(str(k), self._walk(v, f"{path}.{k}".lstrip("."), parent, allowed, in_arch))
                     for k, v in _sym_items(value)]
            node: Any = _DictNode(items)
        elif isinstance(value, pg.List | list):
            node = _ListNode([self._walk(v, f"{path}[{i}]", parent, allowed, in_arch)
                              for i, v in enumerate(_sym_values(value))])
        elif isinstance(value, pg.Object):
            root = value is self._obj  # a builder: its fixed arguments stay out of the arch
            args = [(str(k), self._walk(v, f"{path}.{k}".lstrip("."), parent, allowed, in_arch)
                     if not root or _holds_hyper(v) else _Fixed(v))
                    for k, v in value.sym_init_args.sym_items()]
            node = _ObjectNode(type(value), _type_name(value), args)
        else:
            return _Fixed(value, _json_of(value, path) if in_arch else None)
        if _all_fixed(node):
            return _Fixed(value, _json_of(value, path) if in_arch else None)
        return node

    def _float(self, value: Any, path: str, parent: int | None,
               allowed: frozenset[int]) -> _FloatNode:
        scale = value.scale or "linear"
        if scale not in ("linear", "log"):
            raise ValueError(f"space: pg.floatv at {path or 'the root'} has scale {scale!r}; "
                             "linear and log are supported")
        decision = FloatDecision(float(value.min_value), float(value.max_value), scale)
        return _FloatNode(self._add(path, 1, parent, allowed, decision), decision)

    def _choices(self, value: Any, path: str, parent: int | None,
                 allowed: frozenset[int]) -> Any:
        if value.where is not None:
            raise ValueError(f"space: a choice with `where` at {path or 'the root'} is not "
                             "supported")
        n, k = len(value.candidates), value.num_choices
        if value.num_choices == 1 or not (value.choices_distinct or value.choices_sorted):
            nodes = []
            for j in range(k):
                where = f"{path}[{j}]" if k > 1 else path
                index = self._add(where, n, parent, allowed)
                nodes.append(_ChoiceNode(index, self._candidates(value, where, index, None)))
                _no_ambiguity(nodes[-1].candidates, where)
            return nodes[0] if value.num_choices == 1 else _ListNode(nodes)
        combos = _selections(n, k, value.choices_distinct, value.choices_sorted)
        if not combos or len(combos) > MAX_SELECTIONS:
            raise ValueError(f"space: pg.manyof({k}, {n} candidates) at {path or 'the root'} "
                             f"has {len(combos):,} selections; 1 to {MAX_SELECTIONS:,} are "
                             "supported")
        index = self._add(path, len(combos), parent, allowed)
        self._extra_points += k - 1
        positions = [self._candidates(value, f"{path}[{j}]", index, (j, combos))
                     for j in range(k)]
        for j, nodes in enumerate(positions):
            _no_ambiguity(nodes, f"{path}[{j}]")
        return _ComboNode(index, combos, positions, {c: i for i, c in enumerate(combos)})

    def _candidates(self, value: Any, path: str, index: int,
                    position: tuple[int, list[tuple[int, ...]]] | None) -> list[Any]:
        nodes = []
        for c, candidate in enumerate(value.candidates):
            if position is None:
                allowed = frozenset([c])
            else:
                j, combos = position
                allowed = frozenset(i for i, combo in enumerate(combos) if combo[j] == c)
            nodes.append(self._walk(candidate, f"{path}[={c}]", index, allowed, True))
        return nodes

    def _check_against_spec(self) -> None:
        """Our decisions must be PyGlove's decision points (a manyof taken whole aside)."""
        ours = len(self._decisions)
        if not ours:
            raise ValueError("space: the PyGlove value holds no decision")
        points = self._spec.decision_points
        floats = [p for p in points if type(p).__name__ == "Float"]
        size = self._spec.space_size
        if len(floats) != sum(d.float is not None for d in self._decisions) \
                or len(points) != ours + self._extra_points \
                or (size != -1 and size != _count(self._root)):
            raise ValueError(f"space: PyGlove sees {len(points)} decision points (size {size}), "
                             f"we found {ours} (size {_count(self._root)}): this template's "
                             "structure is not supported")

    # ---- the contract -------------------------------------------------------------------
    def template(self) -> Any:
        return self._obj

    def choice_counts(self) -> list[int]:
        return [d.count for d in self._decisions]

    def float_decisions(self) -> dict[int, FloatDecision]:
        return dict(self._floats)

    def active(self, dna: list[int]) -> list[bool]:
        out: list[bool] = []
        for d in self._decisions:
            out.append(d.parent is None or (out[d.parent] and int(dna[d.parent]) in d.allowed))
        return out

    def size(self) -> int | float:
        return _count(self._root)

    def enumerate(self) -> Iterator[Arch]:
        """Every canonical architecture, in DNA order (activity prunes the product)."""
        if self._floats:
            return super().enumerate()
        return (self.from_dna(dna) for dna in self._canonical_dnas([]))

    def _canonical_dnas(self, prefix: list[int]) -> Iterator[list[int]]:
        i = len(prefix)
        if i == len(self._decisions):
            yield list(prefix)
            return
        d = self._decisions[i]
        on = d.parent is None or (self._active_prefix(prefix)[d.parent]
                                  and prefix[d.parent] in d.allowed)
        for value in range(d.count) if on else (0,):
            yield from self._canonical_dnas([*prefix, value])

    def _active_prefix(self, prefix: list[int]) -> list[bool]:
        out: list[bool] = []
        for d in self._decisions[:len(prefix)]:
            out.append(d.parent is None or (out[d.parent] and prefix[d.parent] in d.allowed))
        return out

    def from_dna(self, dna: list[int]) -> Arch:
        if len(dna) != len(self._decisions):
            raise ValueError(f"a DNA of space {self.name!r} has {len(self._decisions)} "
                             f"decisions, got {len(dna)}")
        dna = self.canonical_dna(list(dna))
        if self._builder:
            return {k: _to_json(node, dna) for k, node in self._root.args
                    if not isinstance(node, _Fixed)}
        value = _to_json(self._root, dna)
        return value if self._dict_root else {_ROOT_KEY: value}

    def to_dna(self, arch: Arch) -> list[int]:
        dna: list[Any] = [d.float.low if d.float is not None else 0 for d in self._decisions]
        if not isinstance(arch, dict):
            raise ValueError(f"an architecture of space {self.name!r} is a dict, got {arch!r:.80}")
        if self._builder:
            decided = [(k, node) for k, node in self._root.args if not isinstance(node, _Fixed)]
            _parse(_DictNode(decided), arch, dna, "")
        elif self._dict_root:
            _parse(self._root, arch, dna, "")
        else:
            if set(arch) != {_ROOT_KEY}:
                raise ValueError(f"an architecture of space {self.name!r} is "
                                 f"{{{_ROOT_KEY!r}: ...}}, got {arch!r:.80}")
            _parse(self._root, arch[_ROOT_KEY], dna, "")
        return dna

    def key(self, arch: Arch) -> str:
        return json.dumps(self.from_dna(self.to_dna(arch)), separators=(",", ":"),
                          allow_nan=False)

    def from_key(self, key: str) -> Arch:
        if not isinstance(key, str):
            raise ValueError(f"a key of space {self.name!r} is a string, got {key!r:.80}")
        try:
            arch = json.loads(key)
        except ValueError:
            raise ValueError(f"a key of space {self.name!r} is the JSON of an architecture, "
                             f"got {key!r:.80}") from None
        arch = self.from_dna(self.to_dna(arch))
        if self.key(arch) != key:
            raise ValueError(f"{key!r:.80} is not a canonical key of space {self.name!r}; its "
                             f"canonical form is {self.key(arch)!r:.80}")
        return arch

    # ---- PyGlove hooks ------------------------------------------------------------------
    def pyglove_dna(self, dna: list[int]) -> Any:
        import pyglove as pg

        numbers: list[Any] = []
        _pg_numbers(self._root, self.canonical_dna(list(dna)), numbers)
        return pg.DNA.from_numbers(numbers, self._spec)

    def to_pyglove(self, arch: Arch) -> Any:
        import pyglove as pg

        value = _to_value(self._root, self.to_dna(arch))
        if isinstance(self._obj, pg.Dict):
            return pg.Dict(value)
        if isinstance(self._obj, pg.List):
            return pg.List(value)
        return value

    def from_pyglove(self, value: Any) -> Arch:
        import pyglove as pg

        data = pg.to_json(value)
        if self._builder:
            return {k: data[k] for k, node in self._root.args if not isinstance(node, _Fixed)}
        return data if self._dict_root else {_ROOT_KEY: data}

    # ---- the model ------------------------------------------------------------------------
    def build(self, arch: Arch, **kwargs: Any) -> Any:
        """The builder made with `arch` (and `num_classes`, when it takes that argument)."""
        import pyglove as pg
        import torch

        if not self._builder:
            raise NotImplementedError(
                f"space {self.name!r} has no model: it is a PyGlove hyper value, not a "
                "pg.symbolize'd builder (a class or function making a torch.nn.Module)")
        if kwargs:
            raise TypeError(f"PyGloveSpace.build() takes no options, got {sorted(kwargs)}")
        value = self.to_pyglove(arch)
        names = [k for k, _ in self._root.args]
        if self.num_classes is not None and "num_classes" in names:
            value.rebind(num_classes=self.num_classes)
        model = value() if isinstance(value, pg.Functor) else value
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"the builder of space {self.name!r} made a "
                            f"{type(model).__name__}, not a torch.nn.Module")
        return model

    def input_shape(self, arch: Arch | None = None) -> tuple[int, ...]:
        if self.input_size_shape is None:
            raise NotImplementedError(f"space {self.name!r} does not know its input shape: set "
                                      "space_args.input_shape (one sample, e.g. [3, 32, 32])")
        return self.input_size_shape

    def flops(self, arch: Arch) -> int:
        """FLOPs of one sample through the built model, counted by torch's FlopCounterMode
        (2 x multiply-accumulates of matmuls and convolutions)."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        model = self.build(arch).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, *self.input_shape(arch)))
        return int(counter.get_total_flops())


# ---- helpers: the tree ----------------------------------------------------------------------
def _sym_items(value: Any) -> list[tuple[Any, Any]]:
    return list(value.sym_items()) if hasattr(value, "sym_items") else list(value.items())


def _sym_values(value: Any) -> list[Any]:
    return list(value.sym_values()) if hasattr(value, "sym_values") else list(value)


def _type_name(value: Any) -> str:
    import pyglove as pg

    return str(pg.to_json(value)["_type"])


def _holds_hyper(value: Any) -> bool:
    """Whether a value holds a hyper value (a decision) anywhere inside."""
    import pyglove as pg

    if isinstance(value, pg.hyper.HyperValue):
        return True
    if isinstance(value, pg.Dict | dict):
        return any(_holds_hyper(v) for _, v in _sym_items(value))
    if isinstance(value, pg.List | list):
        return any(_holds_hyper(v) for v in _sym_values(value))
    if isinstance(value, pg.Object):
        return any(_holds_hyper(v) for _, v in value.sym_init_args.sym_items())
    return False


def _all_fixed(node: Any) -> bool:
    if isinstance(node, _DictNode | _ObjectNode):
        children = [v for _, v in (node.items if isinstance(node, _DictNode) else node.args)]
    else:
        children = node.items
    return all(isinstance(c, _Fixed) for c in children)


def _json_of(value: Any, path: str) -> Any:
    """PyGlove's JSON form of a fixed value, which must survive a JSON round trip."""
    import pyglove as pg

    data = pg.to_json(value)
    try:
        same = json.loads(json.dumps(data, allow_nan=False)) == data
    except (TypeError, ValueError):
        same = False
    if not same or _opaque(data):
        raise ValueError(f"space: the value at {path or 'the root'} ({value!r:.60}) has no JSON "
                         "form (PyGlove would pickle it), so an architecture holding it would "
                         "not be a readable JSON value; use JSON values, classes, functions or "
                         "symbolic objects")
    return data


def _opaque(data: Any) -> bool:
    """Whether PyGlove's JSON holds a pickled object."""
    if isinstance(data, dict):
        return str(data.get("_type", "")).endswith("_OpaqueObject") or any(
            _opaque(v) for v in data.values())
    return isinstance(data, list) and any(_opaque(v) for v in data)


def _input_shape(shape: Any, channels: Any, size: Any) -> tuple[int, ...] | None:
    if shape is None and channels is not None and size is not None:
        shape = [channels, size, size]
    if shape is None:
        return None
    ok = isinstance(shape, list | tuple) and shape and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    if not ok:
        raise ArgumentError("input_shape", f"must be a non-empty list of positive integers "
                                           f"(one sample, e.g. [3, 32, 32]), got {shape!r}")
    return tuple(shape)


def _selections(n: int, k: int, distinct: bool, ordered: bool) -> list[tuple[int, ...]]:
    """The valid candidate-index tuples of a manyof, in lexicographic order."""
    if distinct and ordered:
        found = itertools.combinations(range(n), k)
    elif distinct:
        found = itertools.permutations(range(n), k)
    else:
        found = itertools.combinations_with_replacement(range(n), k)
    out = []
    for combo in found:
        out.append(combo)
        if len(out) > MAX_SELECTIONS:
            break
    return out


def _count(node: Any) -> int | float:
    """Number of distinct values of a node."""
    if isinstance(node, _Fixed):
        return 1
    if isinstance(node, _FloatNode):
        return math.inf
    if isinstance(node, _ChoiceNode):
        return sum(_count(c) for c in node.candidates)
    if isinstance(node, _ComboNode):
        return sum(math.prod(_count(node.positions[j][c]) for j, c in enumerate(combo))
                   for combo in node.combos)
    return math.prod(_count(c) for c in _children(node))


def _children(node: Any) -> list[Any]:
    if isinstance(node, _DictNode):
        return [v for _, v in node.items]
    if isinstance(node, _ObjectNode):
        return [v for _, v in node.args]
    return list(node.items)


# ---- helpers: DNA -> JSON, value, PyGlove DNA -------------------------------------------------
def _to_json(node: Any, dna: list[Any]) -> Any:
    if isinstance(node, _Fixed):
        return copy.deepcopy(node.json)
    if isinstance(node, _FloatNode):
        return float(dna[node.index])
    if isinstance(node, _ChoiceNode):
        return _to_json(node.candidates[int(dna[node.index])], dna)
    if isinstance(node, _ComboNode):
        combo = node.combos[int(dna[node.index])]
        return [_to_json(node.positions[j][c], dna) for j, c in enumerate(combo)]
    if isinstance(node, _DictNode):
        return {k: _to_json(v, dna) for k, v in node.items}
    if isinstance(node, _ObjectNode):
        return {"_type": node.type_name, **{k: _to_json(v, dna) for k, v in node.args}}
    return [_to_json(v, dna) for v in node.items]


def _to_value(node: Any, dna: list[Any]) -> Any:
    """The Python value (the candidates' own objects) a DNA makes of a node."""
    import pyglove as pg

    if isinstance(node, _Fixed):
        return pg.clone(node.value, deep=True) if isinstance(node.value, pg.Symbolic) \
            else node.value
    if isinstance(node, _FloatNode):
        return float(dna[node.index])
    if isinstance(node, _ChoiceNode):
        return _to_value(node.candidates[int(dna[node.index])], dna)
    if isinstance(node, _ComboNode):
        combo = node.combos[int(dna[node.index])]
        return [_to_value(node.positions[j][c], dna) for j, c in enumerate(combo)]
    if isinstance(node, _DictNode):
        return {k: _to_value(v, dna) for k, v in node.items}
    if isinstance(node, _ObjectNode):
        return node.cls(**{k: _to_value(v, dna) for k, v in node.args})
    return [_to_value(v, dna) for v in node.items]


def _pg_numbers(node: Any, dna: list[Any], out: list[Any]) -> None:
    """PyGlove's flat DNA numbers (active decisions, depth first) of a node."""
    if isinstance(node, _Fixed):
        return
    if isinstance(node, _FloatNode):
        out.append(float(dna[node.index]))
    elif isinstance(node, _ChoiceNode):
        out.append(int(dna[node.index]))
        _pg_numbers(node.candidates[int(dna[node.index])], dna, out)
    elif isinstance(node, _ComboNode):
        for j, c in enumerate(node.combos[int(dna[node.index])]):
            out.append(c)
            _pg_numbers(node.positions[j][c], dna, out)
    else:
        for child in _children(node):
            _pg_numbers(child, dna, out)


# ---- helpers: JSON -> DNA --------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells 1, 1.0 and True apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _parse(node: Any, value: Any, dna: list[Any], path: str) -> None:
    """Set the DNA entries `value` decides under `node`; ValueError when it does not fit."""
    where = path or "the root"
    if isinstance(node, _Fixed):
        if not _same(value, node.json):
            raise ValueError(f"{where}: expected {node.json!r:.60}, got {value!r:.60}")
    elif isinstance(node, _FloatNode):
        ok = isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and node.decision.contains(float(value))
        if not ok:
            raise ValueError(f"{where}: expected a number in [{node.decision.low}, "
                             f"{node.decision.high}], got {value!r:.60}")
        dna[node.index] = float(value)
    elif isinstance(node, _ChoiceNode):
        dna[node.index] = _match(node.candidates, value, dna, where)
    elif isinstance(node, _ComboNode):
        _parse_combo(node, value, dna, where)
    elif isinstance(node, _DictNode | _ObjectNode):
        items = node.items if isinstance(node, _DictNode) else \
            [("_type", _Fixed(node.type_name, node.type_name)), *node.args]
        if not isinstance(value, dict) or set(value) != {k for k, _ in items}:
            raise ValueError(f"{where}: expected a dict with keys {[k for k, _ in items]}, got "
                             f"{value!r:.80}")
        for k, child in items:
            _parse(child, value[k], dna, f"{path}.{k}".lstrip("."))
    else:
        if not isinstance(value, list) or len(value) != len(node.items):
            raise ValueError(f"{where}: expected a list of {len(node.items)}, got {value!r:.80}")
        for i, child in enumerate(node.items):
            _parse(child, value[i], dna, f"{path}[{i}]")


def _match(candidates: list[Any], value: Any, dna: list[Any], where: str) -> int:
    """The index of the one candidate `value` fits (its decisions written into `dna`)."""
    for c, candidate in enumerate(candidates):
        trial = list(dna)
        try:
            _parse(candidate, value, trial, where)
        except ValueError:
            continue
        dna[:] = trial
        return c
    shown = [c.json if isinstance(c, _Fixed) else f"<{type(c).__name__[1:]}>"
             for c in candidates]
    raise ValueError(f"{where}: {value!r:.60} is none of the candidates {shown!r:.120}")


def _parse_combo(node: _ComboNode, value: Any, dna: list[Any], where: str) -> None:
    k = len(node.positions)
    if not isinstance(value, list) or len(value) != k:
        raise ValueError(f"{where}: expected a list of {k} choices, got {value!r:.80}")
    combo = tuple(_match(node.positions[j], v, dna, f"{where}[{j}]")
                  for j, v in enumerate(value))
    if combo not in node.lookup:
        raise ValueError(f"{where}: {value!r:.80} is not a valid selection (distinct and/or "
                         "in candidate order)")
    dna[node.index] = node.lookup[combo]


# ---- helpers: candidates that an architecture could not tell apart ---------------------------
def _no_ambiguity(candidates: list[Any], path: str) -> None:
    for a, b in itertools.combinations(range(len(candidates)), 2):
        if _may_equal(candidates[a], candidates[b]):
            raise ValueError(f"space: candidates {a} and {b} of the choice at {path or 'the root'}"
                             " can materialize to the same value, so an architecture would not "
                             "say which was chosen")


def _expand(node: Any) -> Any:
    """Containers as Dict/List nodes (a fixed dict or list, an object as a dict)."""
    if isinstance(node, _Fixed) and isinstance(node.json, dict):
        return _DictNode([(k, _Fixed(v, v)) for k, v in node.json.items()])
    if isinstance(node, _Fixed) and isinstance(node.json, list):
        return _ListNode([_Fixed(v, v) for v in node.json])
    if isinstance(node, _ObjectNode):
        return _DictNode([("_type", _Fixed(node.type_name, node.type_name)), *node.args])
    return node


def _may_equal(a: Any, b: Any) -> bool:
    """Whether two nodes can give the same JSON value."""
    a, b = _expand(a), _expand(b)
    if isinstance(b, _ChoiceNode | _ComboNode | _FloatNode) and \
            not isinstance(a, _ChoiceNode | _ComboNode):
        a, b = b, a
    if isinstance(a, _ChoiceNode):
        return any(_may_equal(c, b) for c in a.candidates)
    if isinstance(a, _ComboNode):
        return any(_may_equal(_ListNode([a.positions[j][c] for j, c in enumerate(combo)]), b)
                   for combo in a.combos)
    if isinstance(a, _FloatNode):
        if isinstance(b, _FloatNode):
            return a.decision.low <= b.decision.high and b.decision.low <= a.decision.high
        return isinstance(b, _Fixed) and isinstance(b.json, int | float) \
            and not isinstance(b.json, bool) and a.decision.contains(float(b.json))
    if isinstance(a, _Fixed) and isinstance(b, _Fixed):
        return _same(a.json, b.json)
    if isinstance(a, _DictNode) and isinstance(b, _DictNode):
        da, db = dict(a.items), dict(b.items)
        return da.keys() == db.keys() and all(_may_equal(da[k], db[k]) for k in da)
    if isinstance(a, _ListNode) and isinstance(b, _ListNode):
        return len(a.items) == len(b.items) and all(
            _may_equal(x, y) for x, y in zip(a.items, b.items, strict=True))
    return False
