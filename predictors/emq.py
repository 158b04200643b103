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
4. Bit allocation with the found proxy (`allocate_bits`): the proxy's gain when one block
   takes a bit-width pair and the others stay at 8/8 is the block's sensitivity, and the
   configurations maximising the summed sensitivities under the model-size and BitOPs
   budgets are found exactly (all configurations enumerated; the paper solves the same
   integer programme with an ILP solver); the best few are then re-scored by the proxy on
   the whole configuration (`rerank`), which the additive model only approximates.

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


def allocate_bits(space: QuantSpace, arch: dict[str, Any], gains: np.ndarray, *,
                  max_size_kb: float | None = None, max_bitops: float | None = None,
                  top: int = 1) -> Any:
    """The bit configuration of `arch` with the largest summed `gains` (from
    `sensitivities`) whose `model_size_kb` and `bitops` are within the budgets (exact:
    every configuration is costed by the space); with `top` > 1, the `top` best in order
    (a list). ValueError when none fits."""
    pairs = bit_pairs()
    blocks = len(arch["layers"])
    total = len(pairs) ** blocks
    if total > MAX_CONFIGS:
        raise ValueError(f"{total} configurations exceed MAX_CONFIGS={MAX_CONFIGS}")
    summed = np.zeros(())
    for i in range(blocks):  # summed[j0, j1, ...] = sum_i gains[i, j_i]
        summed = np.add.outer(summed, gains[i])
    order = np.argsort(-summed.reshape(-1), kind="stable")
    found = []
    for flat in order:
        choice = np.unravel_index(flat, summed.shape)
        candidate = with_bits(arch, [pairs[int(j)] for j in choice])
        if max_size_kb is not None and space.model_size_kb(candidate) > max_size_kb + 1e-9:
            continue
        if max_bitops is not None and space.bitops(candidate) > max_bitops:
            continue
        found.append(candidate)
        if len(found) == top:
            break
    if not found:
        raise ValueError("no bit configuration fits the budgets")
    return found if top > 1 else found[0]


def rerank(formula: evolved.Formula, space: QuantSpace, candidates: Sequence[dict[str, Any]],
           batch: tuple[Any, Any], seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """The candidate whose whole configuration the proxy scores highest (mean over
    initialisation `seeds`): the sensitivities assume the blocks add up, this does not."""
    def score(arch: dict[str, Any]) -> float:
        return float(np.mean([proxy_score(formula, space, arch, batch, s) for s in seeds]))

    return max(candidates, key=score)


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
