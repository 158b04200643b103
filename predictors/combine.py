"""Combining training-free proxies into one score.

Proxies live on unrelated scales (synflow spans 30 orders of magnitude, NASWOT is a
log-determinant), so they are combined after a monotone transform (`transform`: the log of
positive-scale proxies) either by ranks or by z-scores:

- `mean_rank(scores)`: a population's mean normalised rank over proxies (rank voting);
- `zscore_mean(scores)`: a population's mean (clipped) z-score of the transformed proxies;
- `percentile_against(values, reference)`: one architecture's mean percentile within a
  reference population of scores (the population-free use of `mean_rank`);
- `fixed_score(values)`: one architecture alone, its mean percentile in reference quantiles
  measured once on NAS-Bench-201 (`NB201_QUANTILES`); the `proxy` evaluator's `score`.

The default battery (`DEFAULT_BATTERY`, the `proxy` evaluator's default `proxies`) was chosen
without the labels it is evaluated on: `bench/proxies.py` picks, among every subset of the
cheap candidates (meco, synflow, nwot, params, flops) under mean rank or AZ-NAS's
log-rank sum whose cost fits the throughput budget (38 ms of one core per cell: all 15,625
NB201 cells in 5 minutes on 2 cores), the one that ranks best by `valid_acc` on 1,000
*other* NB201 cells (scored on the one-cell-per-stage scoring network); it is then reported
against `test_acc` on the 1,000 evaluation cells. MeCo alone won: adding any other cheap
proxy lowered the correlation on both sets. Proxies fitted on NB201 CIFAR-10 labels
(`FITTED_ON_NB201_LABELS`: `evolved.nb201`, evolved for Spearman with `valid_acc` on 100
cells) stay available by name but are never candidates for the default.

Every function here treats larger as better for every proxy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: Proxies whose values are positive magnitudes spanning orders of magnitude: compared by log.
LOG_PROXIES = frozenset({"synflow", "snip", "grad_norm", "fisher", "params", "flops",
                         "linear_regions"})
#: z-scores are clipped to this magnitude, so that one degenerate value (synflow = 0 for a
#: network whose output ignores its input) cannot outvote every other proxy.
Z_CLIP = 5.0
_TINY = 1e-300

#: The default training-free battery (see the module doc for how it was chosen).
DEFAULT_BATTERY: tuple[str, ...] = ("meco",)
#: How the default battery's proxies are combined over a population (`mean_rank`; with one
#: proxy, its rank).
DEFAULT_AGGREGATE = "mean_rank"
#: Proxies found by fitting NAS-Bench-201 CIFAR-10 labels: their NB201 figures are not a fair
#: test of themselves, and the default battery never includes them.
FITTED_ON_NB201_LABELS = frozenset({"evolved.nb201"})

#: Reference distribution of each proxy on NAS-Bench-201: the 0%, 5%, ..., 100% quantiles of
#: `transform(name, value)` over 1,000 cells (300 for grasp and zen) of the CIFAR-10 network
#: (16 channels, 5 cells per stage), the first 20 CIFAR-10 test images, seed 0; measured by
#: `bench/proxies.py` (its `reference_quantiles` output). `fixed_score` places one
#: architecture in it, which reproduces the population's mean rank without a population. On
#: another space or input size the proxies' scales shift, so percentiles saturate: the
#: ranking stays monotone in every proxy but the proxies' weights drift; where a population
#: of the space's own scores exists, use `percentile_against` or `mean_rank` instead.
NB201_QUANTILES: dict[str, list[float]] = {
    "fisher": [
        -8.48596, -3.78056, -3.52741, -3.05175, -2.58654, -2.31095, -1.90949, -1.53305, -1.27928,
        -1.08463, -0.910433, -0.738552, -0.515616, -0.338986, -0.137391, 0.0576123, 0.327429,
        0.806063, 1.56412, 2.30968, 6.4827,
    ],
    "flops": [
        16.5606, 16.5606, 16.9695, 17.259, 17.259, 17.6662, 18.2739, 18.361, 18.361, 18.361,
        18.4412, 18.4412, 18.5154, 18.8725, 18.8725, 18.9214, 18.9214, 18.9679, 19.2444, 19.2784,
        19.9028,
    ],
    "grad_norm": [
        -690.776, 1.34286, 1.50173, 1.73105, 2.04751, 2.43942, 2.63139, 2.79808, 2.94109, 3.10018,
        3.25057, 3.40754, 3.50166, 3.60476, 3.71315, 3.84752, 4.06617, 4.2864, 4.68362, 5.08064,
        6.74149,
    ],
    "grasp": [
        -9.63487, -2.51509, -0.245099, -0.13512, -0.0432994, 0.0374622, 0.749658, 1.29687, 1.58474,
        1.79374, 1.9892, 2.20628, 2.36437, 2.61154, 2.7079, 2.91547, 3.1752, 3.60125, 4.26767,
        5.3366, 8.48951,
    ],
    "jacov": [
        -14.5085, -4.95147, -3.78371, -3.47175, -3.18124, -3.0989, -3.05978, -3.04033, -3.02917,
        -3.01453, -3.00846, -3.00297, -3.00207, -3.00164, -3.00133, -3.00116, -3.00105, -3.00086,
        -3.0007, -3.00046, -2.99967,
    ],
    "nwot": [
        0.0, 197.255, 225.63, 227.139, 228.899, 229.888, 231.406, 239.39, 240.289, 240.93, 241.495,
        241.818, 247.11, 247.978, 248.486, 248.812, 249.177, 253.886, 254.226, 254.627, 262.442,
    ],
    "params": [
        11.2024, 11.2024, 11.5259, 11.7699, 11.7699, 12.1298, 12.6646, 12.7494, 12.7494, 12.7494,
        12.8276, 12.8276, 12.9001, 13.2346, 13.2346, 13.2834, 13.2834, 13.33, 13.5954, 13.6297,
        14.2418,
    ],
    "snip": [
        -690.776, 1.8434, 2.12991, 2.26965, 2.56754, 3.21942, 3.39621, 3.53225, 3.66824, 3.81621,
        3.97292, 4.13197, 4.19785, 4.31271, 4.41551, 4.53746, 4.75842, 4.93735, 5.25326, 5.61585,
        7.17425,
    ],
    "synflow": [
        -690.776, 14.7624, 31.1886, 35.5142, 36.1081, 42.0961, 47.3759, 49.0574, 49.6801, 51.8699,
        54.3161, 58.0243, 60.118, 64.1691, 65.9555, 68.9528, 71.829, 79.8859, 81.9551, 85.7438,
        114.773,
    ],
    "zen": [
        11.5366, 31.3463, 43.9306, 52.5389, 65.087, 73.716, 82.8023, 93.0396, 100.925, 111.874,
        118.318, 124.025, 128.918, 136.209, 141.74, 150.988, 159.202, 167.091, 180.377, 202.648,
        251.003,
    ],
    # issue 20's proxies: meco on the 1,000 cells, the others on the first 200 cells of
    # bench/proxies.py's sample (the same network, images and seed)
    "meco": [
        0.000163981, 0.184855, 0.540515, 1.227, 1.8759, 2.22726, 2.71234, 3.64187, 4.5315,
        5.82174, 7.0837, 8.6366, 10.6087, 12.8144, 14.917, 16.5586, 18.7918, 23.9473, 27.9561,
        35.1566, 78.3055,
    ],
    "zico": [
        79.8633, 81.8181, 86.5541, 212.125, 215.624, 246.011, 249.573, 307.118, 374.492, 378.126,
        381.331, 409.376, 419.422, 488.51, 514.17, 545.597, 558.308, 642.909, 677.662, 710.755,
        810.758,
    ],
    "az_expressivity": [
        25.3877, 27.8115, 30.4164, 33.5155, 37.9958, 42.6923, 43.9124, 45.229, 46.2411, 47.9658,
        50.0586, 50.7091, 51.6168, 52.9166, 54.6133, 55.7142, 56.5412, 57.3778, 57.8165, 59.6053,
        60.0447,
    ],
    "az_progressivity": [
        -0.612319, -0.440415, -0.374274, -0.313683, -0.298722, -0.258294, -0.227317, -0.217911,
        -0.188954, -0.176117, -0.162717, -0.145915, -0.127288, -0.100745, -0.0810821, -0.0685046,
        -0.0504304, -0.0342438, -0.0241487, -0.0155435, 0.00717185,
    ],
    "az_trainability": [
        -882353.0, -1.99484, -1.32374, -1.0287, -0.879141, -0.641695, -0.542877, -0.444755,
        -0.362388, -0.298202, -0.261783, -0.179449, -0.154869, -0.113018, -0.0999354, -0.0892821,
        -0.0816412, -0.0708824, -0.0692992, -0.060605, -0.0465842,
    ],
    "az_nas": [
        -12.8463, -9.74805, -8.75216, -7.22018, -6.39618, -5.62543, -5.057, -4.60828, -4.26315,
        -3.67557, -2.97371, -2.72675, -2.32096, -2.07242, -1.87403, -1.58369, -1.36435, -1.21987,
        -1.08266, -0.9073, -0.214726,
    ],
    "swap": [
        7446.0, 9644.58, 16679.5, 18770.1, 24145.6, 30143.3, 33090.7, 35597.2, 39415.6, 44642.7,
        49252.8, 52318.1, 53740.8, 55772.9, 56600.5, 58311.7, 60222.8, 61656.9, 63311.1, 63610.5,
        65075.8,
    ],
    "swap_reg": [
        3007.61, 4510.26, 7029.94, 9824.91, 12336.6, 14213.7, 18939.5, 20041.0, 22290.0, 23957.0,
        26485.7, 28993.0, 31004.8, 32868.4, 36057.7, 37412.5, 39458.1, 42770.0, 45386.0, 49816.6,
        57294.2,
    ],
    "te_ntk": [
        -7.69581, -6.7541, -6.41646, -5.54727, -4.22263, -3.83836, -3.70478, -3.62195, -3.56326,
        -3.50608, -3.29055, -3.12786, -3.05743, -2.85265, -2.68118, -2.54227, -2.47535, -2.40168,
        -2.26326, -2.01222, -1.71902,
    ],
    # emq (predictors/data/emq_proxies.json, evolved on quant-space bit configurations):
    # 200 random NB201 cells, bench/proxies.py's network, 20 test images, seed 0
    "emq": [
        15.2541, 30.1054, 45.0435, 45.2982, 45.3191, 53.3883, 74.2172, 74.2512, 74.6907, 74.8894,
        75.1486, 89.0849, 103.321, 103.71, 103.803, 103.86, 104.942, 132.733, 132.869, 161.916,
        191.465,
    ],
    # linear_regions (log): 200 cells of bench/training_free.py's asvit_nb201 (the same
    # network and 20 test images, seed 0)
    "linear_regions": [
        0.0, 9.78581, 10.9984, 11.0693, 11.1414, 11.2771, 11.5357, 11.6243, 11.652, 11.6763,
        11.7077, 11.7724, 11.8107, 11.8769, 11.965, 12.0422, 12.1125, 12.1597, 12.2378, 12.3073,
        12.7221,
    ],
    # deepmad_entropy: the first 200 of bench/proxies.py's 1,000 cells (default network,
    # 20 CIFAR-10 images, seed 0; Spearman 0.821 with test_acc there)
    "deepmad_entropy": [
        544.14, 1337.17, 1771.63, 2260.21, 2459.2, 3160.62, 3383.75, 3477.32, 3515.01, 3542.53,
        3628.32, 3745.83, 4069.86, 4286.64, 4972.69, 5042.85, 5124.46, 6147.54, 6228.52,
        6561.64, 9066.43,
    ],
    # the evolved proxy (predictors/data/evolved_proxies.json), on the same 1,000 cells
    "evolved.nb201": [
        -6066.43, 2224.08, 2640.0, 5024.11, 5594.23, 6353.24, 8092.64, 11240.6,
        13136.4, 15882.7, 18798.1, 23275.3, 27041.8, 30974.4, 33473.0, 36463.0,
        39504.2, 46573.8, 56192.9, 65666.8, 141619.0,
    ],
}


def transform(name: str, value: float) -> float:
    """A monotone map of a proxy's value onto a roughly Gaussian scale."""
    value = float(value)
    if name in LOG_PROXIES:
        return math.log(max(value, _TINY))
    if name == "jacov":  # always <= -batch size: -log(-x) keeps the order
        return -math.log(max(-value, _TINY))
    if name == "te_ntk":  # minus a condition number (>= 1): -log(-x) keeps the order
        return -math.log(max(-value, 1.0))
    if name == "grasp":  # either sign, heavy tails: signed log
        return math.copysign(math.log1p(abs(value)), value)
    return value


def _matrix(scores: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    names = list(scores)
    if not names:
        raise ValueError("no proxies to combine")
    columns = [np.asarray([transform(n, v) for v in scores[n]], dtype=np.float64)
               for n in names]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError("every proxy needs one score per architecture (same, non-zero count)")
    return names, np.stack(columns, axis=1)


def mean_rank(scores: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Per architecture, the mean over proxies of its rank in the population scaled to [0, 1]
    (ties share their average rank)."""
    from scipy.stats import rankdata

    _, matrix = _matrix(scores)
    n = matrix.shape[0]
    ranks = np.stack([rankdata(matrix[:, j]) for j in range(matrix.shape[1])], axis=1)
    return ((ranks - 1.0) / max(n - 1, 1)).mean(axis=1)


def zscore_mean(scores: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Per architecture, the mean over proxies of the population z-score of the transformed
    value, clipped to +-Z_CLIP."""
    _, matrix = _matrix(scores)
    std = matrix.std(axis=0)
    std[std == 0] = 1.0
    z = (matrix - matrix.mean(axis=0)) / std
    return np.clip(z, -Z_CLIP, Z_CLIP).mean(axis=1)


def percentile_against(values: Mapping[str, float],
                       reference: Mapping[str, Sequence[float]]) -> float:
    """One architecture's mean percentile (in [0, 1]; ties count half) within a reference
    population's scores, over the proxies of `values` (each must be in `reference`)."""
    if not values:
        raise ValueError("no proxies to combine")
    total = 0.0
    for name, value in values.items():
        if name not in reference or len(reference[name]) == 0:
            raise ValueError(f"the reference population has no scores for proxy {name!r}")
        ref = np.asarray([transform(name, v) for v in reference[name]], dtype=np.float64)
        t = transform(name, value)
        total += (np.sum(ref < t) + 0.5 * np.sum(ref == t)) / len(ref)
    return float(total / len(values))


#: How far beyond [0, 1] `quantile_percentile` places a value outside the reference range:
#: a value below (above) every reference cell is still ordered among such values, so that a
#: one-proxy score on a space far from NAS-Bench-201 (the proxy's values all larger, say)
#: does not tie every architecture at 1.0, while a mean over proxies moves by at most this.
OUTSIDE_TAIL = 0.01


def _squash(distance: float) -> float:
    """A distance >= 0 into [0, 1], increasing; infinity to 1."""
    return 1.0 if math.isinf(distance) else float(distance / (1.0 + distance))


def quantile_percentile(quantiles: Sequence[float], value: float) -> float:
    """Where `value` falls in a distribution given by evenly spaced quantiles: in [0, 1]
    within the quantiles' range (linear between neighbouring quantiles, the middle of a run
    of equal quantiles: ties), and strictly monotone outside it, within `OUTSIDE_TAIL` of
    the end (d / (1 + d) of the distance d in units of the whole range, which still orders
    values many ranges away, where a tanh rounds to 1)."""
    qs = np.asarray(quantiles, dtype=np.float64)
    steps = len(qs) - 1
    span = float(qs[-1] - qs[0]) or 1.0
    lo = int(np.searchsorted(qs, value, side="left"))
    hi = int(np.searchsorted(qs, value, side="right"))
    if hi > lo:  # equal to one or more quantiles
        return (lo + hi - 1) / 2 / steps
    if lo == 0:
        return -OUTSIDE_TAIL * _squash((qs[0] - value) / span)
    if lo > steps:
        return 1.0 + OUTSIDE_TAIL * _squash((value - qs[-1]) / span)
    a, b = qs[lo - 1], qs[lo]
    return (lo - 1 + (value - a) / (b - a)) / steps


def fixed_score(values: Mapping[str, float],
                quantiles: Mapping[str, Sequence[float]] | None = None) -> float:
    """The population-free combined score: the mean over proxies of the percentile of
    `transform(name, value)` in a reference distribution (default: NAS-Bench-201's), i.e. the
    architecture's mean rank had it been scored among the reference cells."""
    table = NB201_QUANTILES if quantiles is None else quantiles
    if not values:
        raise ValueError("no proxies to combine")
    total = 0.0
    for name, value in values.items():
        if name not in table:
            raise ValueError(f"no reference quantiles for proxy {name!r}; known: "
                             f"{', '.join(sorted(table))}")
        total += quantile_percentile(table[name], transform(name, value))
    return total / len(values)


#: AZ-NAS's components (Lee & Ham, CVPR 2024): expressivity, progressivity, trainability
#: (the `az_nas` proxy group) and complexity, measured as FLOPs.
AZ_NAS_COMPONENTS = ("az_expressivity", "az_progressivity", "az_trainability", "flops")
#: The reference population `az_nas` places one architecture in: NB201_QUANTILES's cells.
AZ_NAS_REFERENCE_SIZE = 1000


def log_rank_sum(scores: Mapping[str, Sequence[float]]) -> np.ndarray:
    """AZ-NAS's non-linear rank aggregation: per architecture, the sum over proxies of
    log(rank / N), ranks 1..N ascending in the population (ties share their average rank).
    The log punishes a low rank on any one proxy more than it rewards a high one."""
    from scipy.stats import rankdata

    _, matrix = _matrix(scores)
    n = matrix.shape[0]
    return sum(np.log(rankdata(matrix[:, j]) / n) for j in range(matrix.shape[1]))


def az_nas_score(values: Mapping[str, float],
                 quantiles: Mapping[str, Sequence[float]] | None = None) -> float:
    """`log_rank_sum` for one architecture alone: each AZ-NAS component's percentile p in its
    NAS-Bench-201 reference quantiles is read as the rank 1 + p (N - 1) it would have among
    N = 1,000 reference cells; the score is the sum of log(rank / N)."""
    table = NB201_QUANTILES if quantiles is None else quantiles
    n = AZ_NAS_REFERENCE_SIZE
    total = 0.0
    for name in AZ_NAS_COMPONENTS:
        if name not in values or name not in table:
            raise ValueError(f"az_nas needs {name!r} and its reference quantiles")
        p = min(max(quantile_percentile(table[name], transform(name, values[name])), 0.0), 1.0)
        total += math.log((1.0 + p * (n - 1)) / n)
    return total
