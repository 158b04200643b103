"""Evolved training-free proxies, in the spirit of EMQ (Dong et al., ICCV 2023).

A proxy formula is a small program over primitive statistics of an untrained network on one
minibatch. For every convolution and linear layer (NASLib's convention, as the built-in
proxies) five primitive tensors are taken from one forward/backward pass of the loss:

- `W` the weight, `G` its gradient dL/dW, `WG` their element-wise product (SNIP's saliency);
- `A` the layer's output, `AG` that output times its gradient dL/dA (Fisher's saliency).

A formula (`Formula`) is built from three levels:

1. a `Term`: `reduce(unary(P))` of one primitive within a layer, giving one number per
   layer; unary in `LEAF_UNARY` (identity, abs, square, sqrt|x|, log(|x|+eps), sign),
   reduction in `REDUCTIONS` (mean, sum, l2-norm, population std);
2. a tree of `Unary` (`SCALAR_UNARY`: abs, square, sqrt|v|, log(|v|+eps), negation, and
   `norm`, division by the root-mean-square across the layers) and `Binary` (`+ - * /`, the
   division guarded by eps) nodes over terms, still one number per layer;
3. an aggregation over layers (`AGGREGATIONS`: sum, mean, or `sum_log`, the sum of
   log(|v|+eps), i.e. the log of a product as in synflow).

Normalising a tensor within a layer, (x - mean) / std, is not a leaf unary: each reduction
of it is a constant (mean 0, std 1, sum 0, l2 sqrt(n)); `norm` normalises across layers.

Why these shapes: a binary operator between `W` and `A` has no element-wise meaning (the
shapes differ), so tensors are combined after the reduction; and a term is a function of a
few moments of the primitive (`MOMENTS`: E[x], E[x^2], E|x|, E[x^4], E[sqrt|x|],
E[log(|x|+eps)], E[log^2], E[sign x], the share of non-zeros) and the element count. Those
moments are computed once per cell (`layer_stats`, a `(layers, STAT_COLUMNS)` array), after
which scoring any formula on 1,000 cells is a few numpy operations (`evaluate_stats`). The
direct path (`evaluate_model`, used by the registered proxies) computes each term from the
tensors themselves with torch; the tests check that both paths agree.

Formulas round-trip through JSON (`Formula.to_json` / `Formula.from_json`) and print as a
readable expression. `evolve` is a seeded regularized (aging) evolution with tournament
selection and subtree mutations. Formulas found by `bench/proxy_learning.py` are stored in
`predictors/data/evolved_proxies.json`; `register_evolved_proxies()` registers each stored
formula as proxy `evolved.<name>`. It is not called on import: the built-in registry's
listing is pinned by tests/test_proxies.py, so a caller that wants the evolved proxies (e.g.
the proxy evaluator, when a job names one) calls it first; calling it again is harmless.

`evolved.nb201` was evolved for Spearman with NAS-Bench-201 CIFAR-10 `valid_acc` on 100
cells: it is fitted on the labels of the benchmark it would be tested on, so it is listed in
`predictors.combine.FITTED_ON_NB201_LABELS`, is never a candidate for the default battery,
and its NB201 figure (bench/proxy_learning.py) is only fair on the cells it was not fitted on.

torch is imported only by the functions that run a network.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PRIMITIVES = ("W", "G", "WG", "A", "AG")
#: Primitives shaped like the weight (their element count is the weight's).
WEIGHT_SHAPED = frozenset({"W", "G", "WG"})
LEAF_UNARY = ("id", "abs", "square", "sqrt", "log", "sign")
REDUCTIONS = ("mean", "sum", "l2", "std")
SCALAR_UNARY = ("abs", "square", "sqrt", "log", "neg", "norm")
BINARY = ("add", "sub", "mul", "div")
AGGREGATIONS = ("sum", "mean", "sum_log")
EPS = 1e-12
#: A formula's value is rounded to this many significant digits (see `_round_significant`).
SIGNIFICANT = 10
#: Per primitive, the moments cached for each layer.
MOMENTS = ("x", "x2", "abs", "x4", "sqrt", "log", "log2", "sign", "nz")
#: Columns of a layer's statistics row: the moments of each primitive, then the element
#: counts of the weight and of the output.
STAT_COLUMNS = tuple(f"{p}.{m}" for p in PRIMITIVES for m in MOMENTS) + ("n_weight", "n_act")
#: For each leaf unary u: the moments holding E[u(x)] and E[u(x)^2].
_UNARY_MOMENTS = {"id": ("x", "x2"), "abs": ("abs", "x2"), "square": ("x2", "x4"),
                  "sqrt": ("sqrt", "abs"), "log": ("log", "log2"), "sign": ("sign", "nz")}
_BINARY_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
REGISTRY_PATH = Path(__file__).resolve().parent / "data" / "evolved_proxies.json"
PROXY_PREFIX = "evolved."


# ---- formulas --------------------------------------------------------------------------
@dataclass(frozen=True)
class Term:
    """`reduce(unary(prim))` within one layer."""

    prim: str
    unary: str
    reduce: str

    def __post_init__(self) -> None:
        _member("primitive", self.prim, PRIMITIVES)
        _member("leaf unary", self.unary, LEAF_UNARY)
        _member("reduction", self.reduce, REDUCTIONS)

    def __str__(self) -> str:
        inner = self.prim if self.unary == "id" else f"{self.unary}({self.prim})"
        return f"{self.reduce}({inner})"


@dataclass(frozen=True)
class Unary:
    """An operator on the per-layer values (`norm`: divided by their RMS across layers)."""

    op: str
    arg: Node

    def __post_init__(self) -> None:
        _member("scalar unary", self.op, SCALAR_UNARY)

    def __str__(self) -> str:
        return f"-({self.arg})" if self.op == "neg" else f"{self.op}({self.arg})"


@dataclass(frozen=True)
class Binary:
    """`left op right` on the per-layer values (division guarded by eps)."""

    op: str
    left: Node
    right: Node

    def __post_init__(self) -> None:
        _member("binary operator", self.op, BINARY)

    def __str__(self) -> str:
        return f"({self.left} {_BINARY_SYMBOL[self.op]} {self.right})"


Node = Term | Unary | Binary


@dataclass(frozen=True)
class Formula:
    """A proxy: `agg` over layers of the per-layer expression `body` (larger is better)."""

    agg: str
    body: Node

    def __post_init__(self) -> None:
        _member("aggregation", self.agg, AGGREGATIONS)

    def __str__(self) -> str:
        return f"{self.agg}_layers[{self.body}]"

    def to_json(self) -> dict[str, Any]:
        return {"agg": self.agg, "body": _node_to_json(self.body)}

    @classmethod
    def from_json(cls, data: Any) -> Formula:
        if not isinstance(data, dict) or set(data) != {"agg", "body"}:
            raise ValueError(f"a formula is {{'agg': ..., 'body': ...}}, got {data!r}")
        return cls(data["agg"], _node_from_json(data["body"]))

    def nodes(self) -> list[Node]:
        return _nodes(self.body)

    def size(self) -> int:
        return len(self.nodes())

    def primitives(self) -> set[str]:
        return {n.prim for n in self.nodes() if isinstance(n, Term)}


def _member(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")


def _node_to_json(node: Node) -> dict[str, Any]:
    if isinstance(node, Term):
        return {"term": [node.prim, node.unary, node.reduce]}
    if isinstance(node, Unary):
        return {"unary": node.op, "arg": _node_to_json(node.arg)}
    return {"binary": node.op, "left": _node_to_json(node.left),
            "right": _node_to_json(node.right)}


def _node_from_json(data: Any) -> Node:
    if isinstance(data, dict) and set(data) == {"term"} and isinstance(data["term"], list) \
            and len(data["term"]) == 3:
        return Term(*data["term"])
    if isinstance(data, dict) and set(data) == {"unary", "arg"}:
        return Unary(data["unary"], _node_from_json(data["arg"]))
    if isinstance(data, dict) and set(data) == {"binary", "left", "right"}:
        return Binary(data["binary"], _node_from_json(data["left"]),
                      _node_from_json(data["right"]))
    raise ValueError(f"not a formula node: {data!r}")


def _nodes(node: Node) -> list[Node]:
    if isinstance(node, Term):
        return [node]
    if isinstance(node, Unary):
        return [node, *_nodes(node.arg)]
    return [node, *_nodes(node.left), *_nodes(node.right)]


def _depth(node: Node) -> int:
    if isinstance(node, Term):
        return 1
    if isinstance(node, Unary):
        return 1 + _depth(node.arg)
    return 1 + max(_depth(node.left), _depth(node.right))


# ---- evaluation ------------------------------------------------------------------------
TermFn = Callable[[Term], np.ndarray]


def _scalar_unary(op: str, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if op == "abs":
        return np.abs(v)
    if op == "square":
        return v * v
    if op == "sqrt":
        return np.sqrt(np.abs(v))
    if op == "log":
        return np.log(np.abs(v) + EPS)
    if op == "neg":
        return -v
    # norm: divided by the root-mean-square across the layers (not a z-score: a sum of
    # z-scores over the layers is identically 0, which would rank cells by rounding noise)
    count = np.maximum(mask.sum(axis=-1, keepdims=True), 1)
    rms = np.sqrt(np.where(mask, v * v, 0.0).sum(axis=-1, keepdims=True) / count)
    return v / (rms + EPS)


def _binary(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    return a / np.where(b >= 0, b + EPS, b - EPS)


def _evaluate(formula: Formula, term_fn: TermFn, mask: np.ndarray) -> np.ndarray:
    """The formula per row of `mask` (cells x layers), `term_fn` giving each term's
    per-layer values in the same shape."""

    def node_values(node: Node) -> np.ndarray:
        if isinstance(node, Term):
            return term_fn(node)
        if isinstance(node, Unary):
            return _scalar_unary(node.op, node_values(node.arg), mask)
        return _binary(node.op, node_values(node.left), node_values(node.right))

    with np.errstate(all="ignore"):
        v = node_values(formula.body)
        if formula.agg == "sum_log":
            v = np.log(np.abs(v) + EPS)
        total = np.where(mask, v, 0.0).sum(axis=-1)
        if formula.agg == "mean":
            total = total / np.maximum(mask.sum(axis=-1), 1)
        return _round_significant(total, SIGNIFICANT)


def _round_significant(v: np.ndarray, digits: int) -> np.ndarray:
    """`v` rounded to `digits` significant digits, so that values equal by an identity
    (e.g. a sum of `norm(x)^2`, the layer count) tie exactly instead of by rounding noise."""
    finite = np.isfinite(v) & (v != 0)
    safe = np.where(finite, np.abs(v), 1.0)
    scale = 10.0 ** (np.floor(np.log10(safe)) - (digits - 1))
    return np.where(finite, np.round(v / scale) * scale, v)


def term_from_stats(term: Term, stats: np.ndarray) -> np.ndarray:
    """A term's per-layer values from cached statistics (`stats[..., STAT_COLUMNS]`)."""
    base = PRIMITIVES.index(term.prim) * len(MOMENTS)
    first, second = (stats[..., base + MOMENTS.index(m)] for m in _UNARY_MOMENTS[term.unary])
    n = stats[..., -2] if term.prim in WEIGHT_SHAPED else stats[..., -1]
    with np.errstate(all="ignore"):
        if term.reduce == "mean":
            return first
        if term.reduce == "sum":
            return n * first
        if term.reduce == "l2":
            return np.sqrt(np.maximum(n * second, 0.0))
        return np.sqrt(np.maximum(second - first * first, 0.0))


def evaluate_stats(formula: Formula, stats: np.ndarray, mask: np.ndarray | None = None
                   ) -> np.ndarray:
    """The formula from cached statistics: `stats` is (layers, columns) for one network,
    giving a 0-d array, or (cells, layers, columns) with `mask` (cells, layers) marking the
    real layers of each cell, giving one score per cell."""
    stats = np.asarray(stats, dtype=np.float64)
    if mask is None:
        mask = np.ones(stats.shape[:-1], dtype=bool)
    return _evaluate(formula, lambda t: term_from_stats(t, stats), mask)


class StatsBatch:
    """Statistics of many cells padded to one (cells, layers, columns) array with a mask,
    and each term's values memoised (an evolution scores thousands of formulas that share
    few distinct terms)."""

    def __init__(self, per_cell: Sequence[np.ndarray]) -> None:
        if not per_cell:
            raise ValueError("StatsBatch needs at least one cell")
        longest = max(len(s) for s in per_cell)
        self.stats = np.zeros((len(per_cell), longest, len(STAT_COLUMNS)))
        self.mask = np.zeros((len(per_cell), longest), dtype=bool)
        for i, s in enumerate(per_cell):
            self.stats[i, : len(s)] = s
            self.mask[i, : len(s)] = True
        self._terms: dict[Term, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.stats)

    def term(self, term: Term) -> np.ndarray:
        if term not in self._terms:
            self._terms[term] = term_from_stats(term, self.stats)
        return self._terms[term]

    def evaluate(self, formula: Formula) -> np.ndarray:
        return _evaluate(formula, self.term, self.mask)


# ---- primitive tensors of a network ----------------------------------------------------
def layer_tensors(model: Any, inputs: Any, targets: Any,
                  loss_fn: Callable[..., Any] | None = None,
                  needed: Iterable[str] = PRIMITIVES) -> list[dict[str, Any]]:
    """Per convolution/linear layer (in module order) the primitive tensors in `needed`,
    flattened, from one forward (and, when gradients are needed, backward) pass in training
    mode. A layer called more than once contributes all its outputs; a weight or output the
    loss does not reach has a zero gradient."""
    import torch

    from .proxies._util import clear_grads, weight_param, weighted_layers

    needed = set(needed)
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    want_act, want_grad = bool(needed & {"A", "AG"}), bool(needed & {"G", "WG", "AG"})
    model.train()
    clear_grads(model)
    layers = weighted_layers(model)
    outputs: dict[int, list[tuple[Any, list[Any]]]] = {i: [] for i in range(len(layers))}

    def hook(index: int) -> Callable[..., None]:
        def on_forward(_module: Any, _inp: Any, out: Any) -> None:
            slot: list[Any] = []
            outputs[index].append((out.detach(), slot))
            if "AG" in needed and out.requires_grad:
                out.register_hook(slot.append)
        return on_forward

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)] \
        if want_act else []
    try:
        with torch.set_grad_enabled(want_grad):
            out = model(inputs)
            loss = loss_fn(out, targets) if want_grad else None
            if loss is not None and loss.requires_grad:  # a model with no weight has no graph
                loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    result = []
    for i, layer in enumerate(layers):
        w = weight_param(layer).detach()
        g = weight_param(layer).grad
        g = torch.zeros_like(w) if g is None else g.detach()
        row: dict[str, Any] = {}
        if "W" in needed:
            row["W"] = w.reshape(-1)
        if "G" in needed:
            row["G"] = g.reshape(-1)
        if "WG" in needed:
            row["WG"] = (w * g).reshape(-1)
        if want_act:
            acts = [a.reshape(-1) for a, _ in outputs[i]]
            row_a = torch.cat(acts) if acts else torch.zeros(0)
            if "A" in needed:
                row["A"] = row_a
            if "AG" in needed:
                prods = [(a * s[0]).reshape(-1) if s else torch.zeros(a.numel())
                         for a, s in outputs[i]]
                row["AG"] = torch.cat(prods) if prods else torch.zeros(0)
        result.append(row)
    clear_grads(model)
    return result


def _moments(t: Any) -> list[float]:
    """The `MOMENTS` of a flat tensor. Element-wise work is float32, and so are the sums of
    same-signed values (torch sums float32 pairwise: relative error ~1e-7); the two sums
    that can cancel (x and log|x|) are float64. A float64 sum of a float32 tensor costs ~50
    times a float32 one on CPU: all-float64 sums were most of the time per cell."""
    import torch

    n = max(t.numel(), 1)
    x = t.float()
    a = x.abs()
    x2 = x * x
    log = torch.log(a + EPS)
    sums = [x.sum(dtype=torch.float64), x2.sum(), a.sum(), (x2 * x2).sum(), a.sqrt().sum(),
            log.sum(dtype=torch.float64), (log * log).sum(), x.sign().sum(),
            torch.count_nonzero(x)]
    return [float(v) / n for v in sums]


def layer_stats(model: Any, inputs: Any, targets: Any,
                loss_fn: Callable[..., Any] | None = None) -> np.ndarray:
    """The cached statistics of a network: one row of `STAT_COLUMNS` per conv/linear layer
    (float64; one forward/backward pass)."""
    rows = []
    for tensors in layer_tensors(model, inputs, targets, loss_fn):
        row: list[float] = []
        for prim in PRIMITIVES:
            row.extend(_moments(tensors[prim]))
        row += [float(tensors["W"].numel()), float(tensors["A"].numel())]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(STAT_COLUMNS))


def _leaf_unary(op: str, x: Any) -> Any:
    import torch

    if op == "abs":
        return x.abs()
    if op == "square":
        return x * x
    if op == "sqrt":
        return x.abs().sqrt()
    if op == "log":
        return torch.log(x.abs() + EPS)
    if op == "sign":
        return x.sign()
    return x


def _term_direct(term: Term, tensors: list[dict[str, Any]]) -> np.ndarray:

    values = []
    for row in tensors:
        u = _leaf_unary(term.unary, row[term.prim].double())
        if u.numel() == 0:
            values.append(0.0)
        elif term.reduce == "mean":
            values.append(float(u.mean()))
        elif term.reduce == "sum":
            values.append(float(u.sum()))
        elif term.reduce == "l2":
            values.append(float(u.norm()))
        else:
            values.append(float(u.std(unbiased=False)) if u.numel() > 1 else 0.0)
    return np.asarray(values, dtype=np.float64)


def evaluate_model(formula: Formula, model: Any, inputs: Any, targets: Any,
                   loss_fn: Callable[..., Any] | None = None) -> float:
    """The formula computed directly on a network and a minibatch (each term from the
    tensors themselves, not from cached moments)."""
    tensors = layer_tensors(model, inputs, targets, loss_fn, formula.primitives())
    mask = np.ones(len(tensors), dtype=bool)
    return float(_evaluate(formula, lambda t: _term_direct(t, tensors), mask))


# ---- evolution -------------------------------------------------------------------------
def random_term(rng: random.Random) -> Term:
    return Term(rng.choice(PRIMITIVES), rng.choice(LEAF_UNARY), rng.choice(REDUCTIONS))


def random_node(rng: random.Random, depth: int) -> Node:
    """A random expression of at most `depth` levels (terms are more likely near the leaves)."""
    if depth <= 1 or rng.random() < 0.4:
        return random_term(rng)
    if rng.random() < 0.4:
        return Unary(rng.choice(SCALAR_UNARY), random_node(rng, depth - 1))
    return Binary(rng.choice(BINARY), random_node(rng, depth - 1), random_node(rng, depth - 1))


def random_formula(rng: random.Random, depth: int = 3) -> Formula:
    return Formula(rng.choice(AGGREGATIONS), random_node(rng, depth))


def _replace(node: Node, target: int, new: Node, counter: list[int]) -> Node:
    """`node` with its `target`-th subtree (pre-order) replaced by `new`."""
    index = counter[0]
    counter[0] += 1
    if index == target:
        return new
    if isinstance(node, Unary):
        return Unary(node.op, _replace(node.arg, target, new, counter))
    if isinstance(node, Binary):
        left = _replace(node.left, target, new, counter)
        return Binary(node.op, left, _replace(node.right, target, new, counter))
    return node


def _point_mutation(node: Node, rng: random.Random) -> Node:
    if isinstance(node, Term):
        which = rng.randrange(3)
        return Term(rng.choice(PRIMITIVES) if which == 0 else node.prim,
                    rng.choice(LEAF_UNARY) if which == 1 else node.unary,
                    rng.choice(REDUCTIONS) if which == 2 else node.reduce)
    if isinstance(node, Unary):
        return Unary(rng.choice(SCALAR_UNARY), node.arg)
    return Binary(rng.choice(BINARY), node.left, node.right)


def mutate(formula: Formula, rng: random.Random, max_depth: int = 4) -> Formula:
    """One random edit: a new subtree, a changed operator/term field, a node wrapped in a new
    operator, a node replaced by its child, or a new aggregation. Retries until the result
    differs and is at most `max_depth` deep."""
    for _ in range(100):
        nodes = formula.nodes()
        target = rng.randrange(len(nodes))
        node = nodes[target]
        kind = rng.random()
        if kind < 0.1:
            child = Formula(rng.choice(AGGREGATIONS), formula.body)
        else:
            if kind < 0.35:
                new = random_node(rng, 2)
            elif kind < 0.7:
                new = _point_mutation(node, rng)
            elif kind < 0.85:
                new = (Unary(rng.choice(SCALAR_UNARY), node) if rng.random() < 0.4 else
                       Binary(rng.choice(BINARY), *((node, random_term(rng))
                                                    if rng.random() < 0.5
                                                    else (random_term(rng), node))))
            elif isinstance(node, Unary):
                new = node.arg
            elif isinstance(node, Binary):
                new = node.left if rng.random() < 0.5 else node.right
            else:
                new = random_term(rng)
            child = Formula(formula.agg, _replace(formula.body, target, new, [0]))
        if child != formula and _depth(child.body) <= max_depth:
            return child
    return random_formula(rng)


#: Well-known proxies written as formulas, put in the initial population (as EMQ starts from
#: random programs, these only give the search the hand-made proxies to improve on).
SEED_FORMULAS = {
    "snip": Formula("sum", Term("WG", "abs", "sum")),
    "grad_norm": Formula("sum", Term("G", "id", "l2")),
    # ||sign(W)||^2 is the weight count: the conv/linear parameter count
    "params": Formula("sum", Unary("square", Term("W", "sign", "l2"))),
    "act_fisher": Formula("sum", Term("AG", "square", "sum")),
    "log_weight_scale": Formula("sum_log", Term("W", "abs", "sum")),
}


@dataclass
class EvolutionResult:
    best: Formula
    best_fitness: float
    evaluated: int
    #: best fitness seen after each step (for the "improves fitness" check)
    history: list[float] = field(default_factory=list)
    #: the top formulas by fitness: (fitness, formula)
    top: list[tuple[float, Formula]] = field(default_factory=list)


def evolve(fitness: Callable[[Formula], float], *, population: int = 64,
           tournament: int = 8, steps: int = 2000, seed: int = 0, max_depth: int = 4,
           size_penalty: float = 1e-3, seeds: Iterable[Formula] = ()) -> EvolutionResult:
    """Regularized (aging) evolution over formulas: each step draws `tournament` members of
    the population, mutates the fittest (fitness minus `size_penalty` per node, so ties go
    to shorter formulas), and the child replaces the oldest member. `fitness` must return a
    number (NaN counts as the worst). Deterministic for a seed and a deterministic fitness.
    """
    for name, value, low in (("population", population, 2), ("tournament", tournament, 1),
                             ("steps", steps, 0), ("max_depth", max_depth, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    rng = random.Random(seed)
    scores: dict[Formula, float] = {}

    def score(f: Formula) -> float:
        if f not in scores:
            value = float(fitness(f))
            scores[f] = value if math.isfinite(value) else -math.inf
        return scores[f]

    def key(f: Formula) -> float:
        return score(f) - size_penalty * f.size()

    members = [f for f in seeds if _depth(f.body) <= max_depth][:population]
    while len(members) < population:
        members.append(random_formula(rng, min(3, max_depth)))
    pool = deque(members)
    for f in pool:
        score(f)
    best = max(pool, key=key)
    history = []
    for _ in range(steps):
        picks = [pool[rng.randrange(len(pool))] for _ in range(min(tournament, len(pool)))]
        child = mutate(max(picks, key=key), rng, max_depth)
        score(child)
        pool.append(child)
        pool.popleft()
        if key(child) > key(best):
            best = child
        history.append(scores[best])
    top = sorted(((s, f) for f, s in scores.items() if s > -math.inf),
                 key=lambda t: -(t[0] - size_penalty * t[1].size()))[:10]
    return EvolutionResult(best, scores[best], len(scores), history, top)


def rank_fitness(batch: StatsBatch, labels: Sequence[float]) -> Callable[[Formula], float]:
    """Spearman correlation of a formula's scores with `labels` over the batch's cells
    (NaN when a score is not finite or all scores are equal)."""
    from scipy.stats import rankdata

    target = rankdata(np.asarray(labels, dtype=np.float64))
    target = (target - target.mean()) / target.std()

    def fitness(formula: Formula) -> float:
        values = batch.evaluate(formula)
        if not np.all(np.isfinite(values)) or np.ptp(values) == 0:
            return math.nan
        r = rankdata(values)
        return float(np.mean((r - r.mean()) / r.std() * target))

    return fitness


# ---- the stored formulas as proxies ----------------------------------------------------
def load_formulas(path: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """The stored formulas by name: `{name: {"formula": Formula, ...metadata}}`; an absent
    `path` holds none, but the shipped registry is part of the package and its absence a
    broken installation, which must not silently lose the `evolved.*` proxies."""
    if path is None and not REGISTRY_PATH.is_file():
        raise FileNotFoundError(f"{REGISTRY_PATH} is missing: this installation of the "
                                "predictors package lacks its data files")
    path = Path(path) if path is not None else REGISTRY_PATH
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: {**entry, "formula": Formula.from_json(entry["formula"])}
            for name, entry in raw.items()}


def save_formula(name: str, formula: Formula, path: Path | str | None = None,
                 **metadata: Any) -> None:
    """Store (or replace) formula `name` with JSON-serialisable `metadata`."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"a formula name is letters, digits, '_' or '-', got {name!r}")
    path = Path(path) if path is not None else REGISTRY_PATH
    raw = json.loads(path.read_text()) if path.is_file() else {}
    raw[name] = {"formula": formula.to_json(), "expression": str(formula), **metadata}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")


_REGISTERED: dict[str, Formula] = {}


def make_proxy(formula: Formula) -> Callable[[Any, Any, Any, Callable[..., Any]], float]:
    """A proxy function `(model, inputs, targets, loss_fn) -> float` computing `formula`."""

    def proxy(model: Any, inputs: Any, targets: Any, loss_fn: Callable[..., Any]) -> float:
        return evaluate_model(formula, model, inputs, targets, loss_fn)

    proxy.__doc__ = f"evolved proxy {formula}"
    return proxy


def register_evolved_proxies(path: Path | str | None = None) -> list[str]:
    """Register every stored formula as proxy `evolved.<name>`; returns the proxy names.
    Calling it again is harmless; a name already registered with another formula raises."""
    from .proxies import register_proxy

    names = []
    for name, entry in load_formulas(path).items():
        proxy_name = PROXY_PREFIX + name
        formula = entry["formula"]
        if _REGISTERED.get(proxy_name) != formula:
            if proxy_name in _REGISTERED:
                raise ValueError(f"proxy {proxy_name!r} is already registered with another "
                                 f"formula ({_REGISTERED[proxy_name]})")
            register_proxy(proxy_name)(make_proxy(formula))
            _REGISTERED[proxy_name] = formula
        names.append(proxy_name)
    return names
