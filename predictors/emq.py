"""EMQ (Dong et al., ICCV 2023): training-free proxies for mixed-precision bit allocation,
found by evolution, on the `quant` space.

The method, as in the paper:

1. A labelled set: one network with many sampled per-layer bit configurations (the paper
   samples 50 configurations of ResNet-18), each trained briefly with quantization-aware
   training; the label is the quantized network's accuracy (`train_labels`, here on digits).
   Uniformly drawn configurations nearly all hold a 2-bit activation somewhere, which
   dominates their accuracy; a third of the set is drawn without 2-bit activations so the
   proxy also learns to rank the configurations an allocation chooses among.
2. The proxy search space: programs over primitive statistics of the *quantized* network on
   one minibatch (weights at their quantized values, activations fake-quantized at the
   configuration's bit-widths), combined by unary and binary operators and aggregated over
   layers. The programs are `predictors.evolved.Formula`s; the primitives (`W`, `G`, `WG`,
   `A`, `AG`) come from `quantized_stats`, which bakes the quantized weights into the network
   first (`bake_weights`), so every primitive sees the bits.
3. Evolution with fitness = Spearman rank correlation between the proxy and the quantized
   accuracy over the labelled configurations (`evolve_emq`, the aging evolution of
   `predictors.evolved` seeded with the hand-made proxies; a program that is not finite on
   every configuration is discarded, EMQ's compatibility check).
4. Bit allocation with the found proxy (`allocate`): the proxy's gain when one block
   takes a bit-width pair and the others stay at 8/8 is the block's sensitivity, and the
   configurations maximising the summed sensitivities under the model-size and BitOPs
   budgets are found exactly (`allocate_bits`: all configurations enumerated; the paper
   solves the same integer programme with an ILP solver); the best few are then re-scored
   by the proxy on the whole configuration (`rerank`), which the additive model only
   approximates. As in EMQ and most mixed-precision work, the first and the last searched
   block keep >= 4 bits (`edge_min_bits`; the stem and classifier are 8-bit anyway), 2-bit
   activations are used only when the budget forces them, and only configurations that use
   the budget (no block could take more bits and still fit) are shortlisted. The budget's
   uniform network can be added to the shortlist (`include`): then the allocation is never
   a configuration the proxy ranks below the uniform one, but it still picks the uniform
   network only when the proxy ranks it first, not by construction.

The proxy found by `bench/mixed_precision.py` is stored in `predictors/data/emq_proxies.json`
and registered as proxy `emq` (`predictors/proxies/emq.py`).

Where we simplify: EMQ's diversity-prompting selection is replaced by the aging evolution's
tournament; its primitives include a Hessian trace, here the gradient/activation moments of
`predictors.evolved` stand in; the labelled set is digits, not ImageNet.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces.quant import BITS, QuantSpace
from search_spaces.validation import ArgumentError

from . import evolved

#: The bench network: 4 searched blocks on 8 x 8 digits (2 stages), whose bits are allocated.
SPACE_ARGS: dict[str, Any] = {"num_classes": 10, "input_channels": 1, "input_size": 8,
                              "stages": 2, "layers_per_stage": 2, "stem_width": 8,
                              "widths": [8, 16]}
BASE_KEY = ("conv-k3-relu-w16-b8-a8|dwsep-k3-relu6-w16-b8-a8|ir3-k3-relu-w32-b8-a8|"
            "conv-k3-relu-w32-b8-a8")
DATA_PATH = Path(__file__).resolve().parent / "data" / "emq_proxies.json"
#: Configurations `allocate_bits` enumerates at most (9 pairs per block: 9^6 for 6 blocks).
MAX_CONFIGS = 600_000


def bit_pairs() -> list[tuple[int, int]]:
    """The (weight bits, activation bits) a block can take."""
    return [(w, a) for w in BITS for a in BITS]


def with_bits(arch: dict[str, Any], config: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """`arch` with block i at weight/activation bits `config[i]`."""
    if len(config) != len(arch["layers"]):
        raise ValueError(f"{len(config)} bit pairs for {len(arch['layers'])} blocks")
    return {"layers": [{**layer, "bits": int(w), "abits": int(a)}
                       for layer, (w, a) in zip(arch["layers"], config, strict=True)]}


def sample_configs(space: QuantSpace, arch: dict[str, Any], n: int,
                   rng: np.random.Generator, exclude: set[str] = frozenset(),
                   pairs: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """`n` distinct random bit configurations of `arch` (keys not in `exclude`), each block
    drawing from `pairs` (default: every pair)."""
    pairs, seen, out = list(pairs or bit_pairs()), set(exclude), []
    limit = len(pairs) ** len(arch["layers"]) - len(seen & _keys(space, arch, pairs))
    if n > limit:
        raise ValueError(f"only {limit} configurations left, asked for {n}")
    while len(out) < n:
        config = [pairs[i] for i in rng.integers(len(pairs), size=len(arch["layers"]))]
        candidate = with_bits(arch, config)
        key = space.key(candidate)
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


def _keys(space: QuantSpace, arch: dict[str, Any], pairs: Sequence[tuple[int, int]]
          ) -> set[str]:
    if len(pairs) ** len(arch["layers"]) > 100_000:
        return set()
    return {space.key(with_bits(arch, c))
            for c in itertools.product(pairs, repeat=len(arch["layers"]))}


# ---- statistics of the quantized network --------------------------------------------------
def quantized_model(space: QuantSpace, arch: dict[str, Any], seed: int = 0) -> Any:
    """The seeded, untrained fake-quantized network with its weights baked to their
    quantized values (what the primitives are taken from)."""
    import torch

    from search_spaces.layers.quant_net import bake_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return bake_weights(space.build(arch))


def quantized_stats(space: QuantSpace, arch: dict[str, Any], batch: tuple[Any, Any],
                    seed: int = 0) -> np.ndarray:
    """`predictors.evolved.layer_stats` of the quantized network on `batch`."""
    import torch

    model = quantized_model(space, arch, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return evolved.layer_stats(model, *batch)


def proxy_score(formula: evolved.Formula, space: QuantSpace, arch: dict[str, Any],
                batch: tuple[Any, Any], seed: int = 0) -> float:
    """The formula on the quantized network (from its cached statistics; the registered
    proxy `emq` computes the same from the tensors)."""
    return float(evolved.evaluate_stats(formula, quantized_stats(space, arch, batch, seed)))


# ---- the labelled set -----------------------------------------------------------------------
def train_labels(space: QuantSpace, archs: Sequence[dict[str, Any]], data: Any,
                 config: Any, cache: Path | None = None) -> list[float]:
    """Quantized validation accuracy (%) of each configuration after quantization-aware
    training with `config` (a `workers.training.TrainConfig`); cached in `cache` (JSON) by
    key and training settings, so reruns train only what is new."""
    import torch

    from workers.training import train_model

    tag = f"e{config.epochs}-s{config.seed}-lr{config.lr}-bs{config.batch_size}"
    store: dict[str, float] = {}
    if cache is not None and cache.is_file():
        store = json.loads(cache.read_text())
    out = []
    for arch in archs:
        name = f"{tag}|{space.key(arch)}"
        if name not in store:
            torch.manual_seed(config.seed)
            store[name] = float(train_model(space.build(arch), data, config).val_acc)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(store, indent=1, sort_keys=True))
        out.append(store[name])
    return out


# ---- the proxy search -----------------------------------------------------------------------
def evolve_emq(stats: Sequence[np.ndarray], labels: Sequence[float], *, steps: int = 1000,
               population: int = 32, seed: int = 0) -> evolved.EvolutionResult:
    """Evolve a formula whose value ranks the configurations as their quantized accuracy
    does (fitness: Spearman over the labelled set)."""
    if len(stats) != len(labels) or len(stats) < 3:
        raise ValueError("evolve_emq needs the statistics and labels of >= 3 configurations")
    fitness = evolved.rank_fitness(evolved.StatsBatch(list(stats)), labels)
    return evolved.evolve(fitness, population=population, steps=steps, seed=seed,
                          seeds=evolved.SEED_FORMULAS.values())


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(x, y).statistic
    return float(value) if math.isfinite(value) else 0.0


# ---- bit allocation -------------------------------------------------------------------------
def sensitivities(formula: evolved.Formula, space: QuantSpace, arch: dict[str, Any],
                  batch: tuple[Any, Any], seeds: Sequence[int] = (0,)) -> np.ndarray:
    """(blocks, pairs) array: the proxy's change when block i alone takes pair j (the other
    blocks at 8/8), relative to all blocks at 8/8, averaged over initialisation `seeds`."""
    pairs = bit_pairs()
    blocks = len(arch["layers"])
    top = [(max(BITS), max(BITS))] * blocks
    out = np.zeros((blocks, len(pairs)))
    for seed in seeds:
        base = proxy_score(formula, space, with_bits(arch, top), batch, seed)
        for i in range(blocks):
            for j, pair in enumerate(pairs):
                if pair != top[i]:
                    config = top[:i] + [pair] + top[i + 1:]
                    out[i, j] += proxy_score(formula, space, with_bits(arch, config), batch,
                                             seed) - base
    return out / len(seeds)


#: Default floor on the weight and the activation bits of the first and the last searched
#: block (`allocate_bits`' `edge_min_bits`): mixed-precision practice (HAWQ, EMQ) keeps the
#: layers next to the input and the classifier at >= 4 bits; the stem and classifier
#: themselves are always 8-bit in this space.
EDGE_MIN_BITS = 4


def check_allocator_args(edge_min_bits: Any, avoid_2bit_activations: Any, maximal: Any
                         ) -> None:
    """ArgumentError (naming the field) for a bad allocator option."""
    if isinstance(edge_min_bits, bool) or edge_min_bits not in BITS:
        raise ArgumentError("edge_min_bits", f"must be one of {', '.join(map(str, BITS))}, "
                                             f"got {edge_min_bits!r}")
    for field, value in (("avoid_2bit_activations", avoid_2bit_activations),
                         ("maximal", maximal)):
        if not isinstance(value, bool):
            raise ArgumentError(field, f"must be true or false, got {value!r}")


def block_pairs(blocks: int, edge_min_bits: int = EDGE_MIN_BITS, min_abits: int = min(BITS)
                ) -> list[list[int]]:
    """Per block, the indices into `bit_pairs()` it may take: activations >= `min_abits`,
    and both bit-widths >= `edge_min_bits` in the first and the last block."""
    pairs = bit_pairs()
    out = []
    for i in range(blocks):
        floor = edge_min_bits if i in (0, blocks - 1) else min(BITS)
        out.append([j for j, (w, a) in enumerate(pairs)
                    if a >= min_abits and min(w, a) >= floor])
    return out


def _fits(space: QuantSpace, arch: dict[str, Any], max_size_kb: float | None,
          max_bitops: float | None) -> bool:
    return ((max_size_kb is None or space.model_size_kb(arch) <= max_size_kb + 1e-9)
            and (max_bitops is None or space.bitops(arch) <= max_bitops))


def _is_maximal(space: QuantSpace, config: list[tuple[int, int]], allowed: list[list[int]],
                fits: Any) -> bool:
    """No block can take the next higher weight or activation bit-width (among its allowed
    pairs) and stay within the budgets: the configuration leaves no usable budget idle."""
    pairs = bit_pairs()
    for i, (w, a) in enumerate(config):
        for up in ((w * 2, a), (w, a * 2)):
            if up in pairs and pairs.index(up) in allowed[i]:
                if fits(config[:i] + [up] + config[i + 1:]):
                    return False
    return True


def allocate_bits(space: QuantSpace, arch: dict[str, Any], gains: np.ndarray, *,
                  max_size_kb: float | None = None, max_bitops: float | None = None,
                  top: int = 1, edge_min_bits: int = EDGE_MIN_BITS,
                  avoid_2bit_activations: bool = True, maximal: bool = True) -> Any:
    """The bit configuration of `arch` with the largest summed `gains` (from
    `sensitivities`) whose `model_size_kb` and `bitops` are within the budgets (exact:
    every configuration is costed by the space); with `top` > 1, the `top` best in order
    (a list). ValueError when none fits.

    The search follows mixed-precision practice:
    - `edge_min_bits` (default 4): the first and the last searched block keep weights and
      activations at >= this many bits (2 turns the rule off);
    - `avoid_2bit_activations` (default on): configurations with a 2-bit activation are
      considered only when none without fits the budgets (2-bit activations collapse
      accuracy far more than the proxy's additive block model predicts);
    - `maximal` (default on): only configurations that use the budget are kept, those where
      no block could take more weight or activation bits and still fit.
    """
    check_allocator_args(edge_min_bits, avoid_2bit_activations, maximal)
    blocks = len(arch["layers"])
    floors = [4, 2] if avoid_2bit_activations else [2]
    for min_abits in floors:
        found = _allocate(space, arch, gains, block_pairs(blocks, edge_min_bits, min_abits),
                          max_size_kb, max_bitops, top, maximal)
        if found:
            return found if top > 1 else found[0]
    raise ValueError("no bit configuration fits the budgets"
                     + (f" with the first and last blocks at >= {edge_min_bits} bits"
                        if edge_min_bits > min(BITS) else ""))


def _allocate(space: QuantSpace, arch: dict[str, Any], gains: np.ndarray,
              allowed: list[list[int]], max_size_kb: float | None, max_bitops: float | None,
              top: int, maximal: bool) -> list[dict[str, Any]]:
    pairs = bit_pairs()
    total = math.prod(len(a) for a in allowed)
    if total > MAX_CONFIGS:
        raise ValueError(f"{total} configurations exceed MAX_CONFIGS={MAX_CONFIGS}")

    def fits(config: list[tuple[int, int]]) -> bool:
        return _fits(space, with_bits(arch, config), max_size_kb, max_bitops)

    summed = np.zeros(())
    for i, idx in enumerate(allowed):  # summed[j0, j1, ...] = sum_i gains[i, allowed[i][j_i]]
        summed = np.add.outer(summed, gains[i, idx])
    order = np.argsort(-summed.reshape(-1), kind="stable")
    found = []
    for flat in order:
        choice = np.unravel_index(flat, summed.shape)
        config = [pairs[allowed[i][int(j)]] for i, j in enumerate(choice)]
        if not fits(config) or (maximal and not _is_maximal(space, config, allowed, fits)):
            continue
        found.append(with_bits(arch, config))
        if len(found) == top:
            break
    return found


def rank_candidates(formula: evolved.Formula, space: QuantSpace,
                    candidates: Sequence[dict[str, Any]], batch: tuple[Any, Any],
                    seeds: Sequence[int] = (0, 1, 2)) -> list[tuple[float, dict[str, Any]]]:
    """(proxy score, candidate) pairs, best first; the score is the proxy on the whole
    configuration, mean over initialisation `seeds` (ties keep the given order)."""
    scored = [(float(np.mean([proxy_score(formula, space, arch, batch, s) for s in seeds])),
               arch) for arch in candidates]
    return sorted(scored, key=lambda pair: -pair[0])


def rerank(formula: evolved.Formula, space: QuantSpace, candidates: Sequence[dict[str, Any]],
           batch: tuple[Any, Any], seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """The candidate whose whole configuration the proxy scores highest (mean over
    initialisation `seeds`): the sensitivities assume the blocks add up, this does not."""
    return rank_candidates(formula, space, candidates, batch, seeds)[0][1]


def allocate(formula: evolved.Formula, space: QuantSpace, arch: dict[str, Any],
             gains: np.ndarray, batch: tuple[Any, Any], *, max_size_kb: float | None = None,
             max_bitops: float | None = None, shortlist: int = 48,
             seeds: Sequence[int] = (0, 1, 2), include: Sequence[dict[str, Any]] = (),
             **rules: Any) -> dict[str, Any]:
    """EMQ's allocation: the `shortlist` best configurations by the summed sensitivities
    (`allocate_bits` with `rules`), plus the `include` configurations that fit the budgets
    (e.g. the uniform network of the budget, so the search is never below it *by
    construction*; it still wins only if the proxy ranks it first), re-scored by the proxy
    on the whole configuration. Returns {"arch", "candidates", "ranking": [(key, score)]}."""
    found = allocate_bits(space, arch, gains, max_size_kb=max_size_kb, max_bitops=max_bitops,
                          top=max(shortlist, 2), **rules)
    keys = {space.key(a) for a in found}
    for extra in include:
        if _fits(space, extra, max_size_kb, max_bitops) and space.key(extra) not in keys:
            found.append(extra)
            keys.add(space.key(extra))
    ranked = rank_candidates(formula, space, found, batch, seeds)
    return {"arch": ranked[0][1], "candidates": len(found),
            "ranking": [(space.key(a), score) for score, a in ranked]}


# ---- the stored proxies ---------------------------------------------------------------------
def load_emq_formulas(path: Path | None = None) -> dict[str, evolved.Formula]:
    """The stored EMQ formulas by name (empty when the file is absent)."""
    path = path or DATA_PATH
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: evolved.Formula.from_json(entry["formula"]) for name, entry in raw.items()}


def save_emq_formula(name: str, formula: evolved.Formula, path: Path | None = None,
                     **metadata: Any) -> None:
    path = path or DATA_PATH
    raw = json.loads(path.read_text()) if path.is_file() else {}
    raw[name] = {"formula": formula.to_json(), "expression": str(formula), **metadata}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
