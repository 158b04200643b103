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

Every function here treats larger as better for every proxy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: Proxies whose values are positive magnitudes spanning orders of magnitude: compared by log.
LOG_PROXIES = frozenset({"synflow", "snip", "grad_norm", "fisher", "params", "flops"})
#: z-scores are clipped to this magnitude, so that one degenerate value (synflow = 0 for a
#: network whose output ignores its input) cannot outvote every other proxy.
Z_CLIP = 5.0
_TINY = 1e-300

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
    # issue 20's proxies, on the first 200 cells of bench/proxies.py's sample (the same
    # network, images and seed; te_ntk, 8 s a cell, on the first 69)
    "meco": [
        0.104174, 0.207866, 0.666261, 1.19903, 1.77215, 2.31779, 2.67061, 4.12189, 4.8241, 5.7668,
        6.86478, 8.11136, 10.1019, 12.9637, 15.206, 16.314, 19.075, 24.9586, 27.7371, 32.9896,
        52.2982,
    ],
    "zico": [
        79.8633, 81.8181, 86.5541, 212.125, 215.624, 246.011, 249.573, 307.118, 374.492, 378.126,
        381.331, 409.376, 419.422, 488.51, 514.17, 545.597, 558.308, 642.909, 677.662, 710.755,
        810.758,
    ],
    "az_expressivity": [
        23.4751, 26.6476, 28.607, 31.7039, 40.5406, 43.9764, 45.2896, 45.7563, 46.4941, 48.5444,
        49.6862, 50.7192, 51.8033, 52.6763, 53.9608, 55.1288, 56.4405, 56.7526, 57.8534, 59.6098,
        59.8407,
    ],
    "az_progressivity": [
        -0.58089, -0.435455, -0.359585, -0.314397, -0.278435, -0.257247, -0.236345, -0.217171,
        -0.201488, -0.179149, -0.168884, -0.146157, -0.119266, -0.110384, -0.0930408, -0.0792873,
        -0.0507237, -0.0424078, -0.0230314, -0.0120852, 0.00722337,
    ],
    "az_trainability": [
        -882353.0, -1.95437, -1.32059, -1.00366, -0.853924, -0.646134, -0.540929, -0.449115,
        -0.366407, -0.306631, -0.260135, -0.171053, -0.144888, -0.107971, -0.0954896, -0.0868966,
        -0.0811831, -0.0774441, -0.0684864, -0.0632094, -0.0456642,
    ],
    "az_nas": [
        -13.9101, -9.75161, -8.71512, -6.90769, -6.36153, -5.58952, -4.93842, -4.34472, -4.06933,
        -3.6362, -3.15021, -2.8811, -2.31673, -2.06661, -1.77833, -1.62485, -1.3793, -1.22944,
        -1.04001, -0.879141, -0.306836,
    ],
    "swap": [
        7514.25, 9907.03, 16668.0, 18385.5, 24399.6, 30569.4, 33334.8, 36115.0, 38700.3, 43963.4,
        48745.8, 51682.4, 53376.4, 55278.8, 56320.0, 57854.4, 60356.3, 61620.7, 63178.8, 63661.7,
        65114.4,
    ],
    "swap_reg": [
        3035.18, 4459.71, 7123.17, 9698.58, 12181.3, 14146.3, 18691.2, 20342.5, 22144.5, 23945.3,
        26521.0, 28618.6, 31023.5, 32994.7, 36228.3, 37507.3, 39616.6, 42781.4, 45330.7, 49722.4,
        57087.8,
    ],
    "te_ntk": [
        -7.69581, -6.90646, -6.54679, -6.36933, -5.42309, -4.18018, -3.87634, -3.67651, -3.61271,
        -3.58031, -3.51946, -3.30875, -3.11375, -2.9754, -2.83363, -2.58884, -2.45197, -2.29716,
        -2.14915, -1.96457, -1.88604,
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


def quantile_percentile(quantiles: Sequence[float], value: float) -> float:
    """Where `value` falls in a distribution given by evenly spaced quantiles, in [0, 1]:
    linear between neighbouring quantiles, the middle of a run of equal quantiles (ties)."""
    qs = np.asarray(quantiles, dtype=np.float64)
    steps = len(qs) - 1
    lo = int(np.searchsorted(qs, value, side="left"))
    hi = int(np.searchsorted(qs, value, side="right"))
    if hi > lo:  # equal to one or more quantiles
        return (lo + hi - 1) / 2 / steps
    if lo == 0:
        return 0.0
    if lo > steps:
        return 1.0
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
        p = quantile_percentile(table[name], transform(name, values[name]))
        total += math.log((1.0 + p * (n - 1)) / n)
    return total
