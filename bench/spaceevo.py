"""SpaceEvo on this CPU: design a quant space for INT8 latency, then compare it with the
default quant space on digits.

1. INT8 latency predictor: random networks of the hyperspace (`search_spaces.spaceevo`,
   every operation, widths 8..48 x 2^stage) converted to real INT8 models and timed (batch
   1, 1 thread, the fastest of the repeats); the FBNet LUT or the GBDT predictor, whichever
   ranks better in cross-validation, is fitted on most and checked on the rest.
2. Space evolution: Q-T score = the quantization-aware accuracy estimate (the `emq` proxy on
   the fake-quantized network, standardised over the hyperspace sample) of the best sampled
   networks within each of two INT8 latency budgets (the 30% and 60% quantiles of the
   hyperspace's), averaged.
3. Check: random networks within the tighter budget (predicted) drawn from the found space
   and from the default quant space, trained briefly with quantization-aware training on
   digits (several networks each: mean and spread of accuracy and measured INT8 latency).

    python bench/spaceevo.py           # full: writes bench/results/spaceevo.json
    python bench/spaceevo.py --quick   # CI smoke (< 30 s), temporary folder
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASE_ARGS = {"num_classes": 10, "input_channels": 1, "input_size": 8}
FULL = {"measured": 80, "held_out": 20, "repeats": 30, "samples": 10, "population": 6,
        "steps": 12, "check_nets": 4, "epochs": 3}
QUICK = {"measured": 12, "held_out": 4, "repeats": 3, "samples": 3, "population": 2,
         "steps": 1, "check_nets": 1, "epochs": 1}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _within(space, predictor, budget: float, n: int, rng) -> tuple[list[dict], int]:
    """`n` random networks of `space` predicted within `budget` (the fastest predicted of
    400 draws when fewer are), and how many of the 400 were within it."""
    draws = [space.sample(rng) for _ in range(400)]
    predicted = predictor.predict(draws)
    order = np.argsort(predicted, kind="stable")
    within = [i for i in range(len(draws)) if predicted[i] <= budget]
    picks = list(rng.permutation(within)[:n]) if len(within) >= n else list(order[:n])
    return [draws[int(i)] for i in picks], len(within)


def _latency_predictor(space, archs, lat, test_archs, test_lat):
    """The FBNet LUT or the GBDT predictor, whichever ranks better in 5-fold
    cross-validation on the fitting networks; both also scored on the held-out ones."""
    from scipy.stats import spearmanr

    from predictors.latency import AdditiveLUT, GBDTLatency

    kinds = {"lut": lambda: AdditiveLUT(space), "gbdt": lambda: GBDTLatency(space)}
    folds = np.array_split(np.arange(len(archs)), 5)
    cv, held = {}, {}
    for name, make in kinds.items():
        rhos = []
        for fold in folds:
            rest = [i for i in range(len(archs)) if i not in set(fold)]
            model = make().fit([archs[i] for i in rest], [lat[i] for i in rest])
            rhos.append(spearmanr(model.predict([archs[i] for i in fold]),
                                  [lat[i] for i in fold]).statistic)
        cv[name] = float(np.nan_to_num(np.nanmean(rhos))) if rhos else 0.0
        held[name] = float(spearmanr(make().fit(archs, lat).predict(test_archs),
                                     test_lat).statistic)
    best = max(cv, key=cv.get)
    return kinds[best]().fit(archs, lat), cv, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 30 s)")
    args = parser.parse_args()
    import torch

    from predictors.proxies import compute_proxies
    from search_spaces import spaceevo
    from search_spaces.quant import QuantSpace
    from workers.datasets import parse_dataset
    from workers.training import TrainConfig, train_model

    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    out_dir = Path(tempfile.mkdtemp(prefix="spaceevo_")) if args.quick else RESULTS
    began = time.perf_counter()
    data = parse_dataset("digits").load()
    batch = (torch.as_tensor(data.x_train[:32], dtype=torch.float32),
             torch.as_tensor(data.y_train[:32], dtype=torch.long))
    hyper = spaceevo.hyperspace(BASE_ARGS)
    rng = np.random.default_rng(0)
    sample = [hyper.sample(rng) for _ in range(cfg["measured"])]
    start = time.perf_counter()
    lat = spaceevo.measure_int8_latencies(hyper, sample, repeats=cfg["repeats"])
    measure_s = time.perf_counter() - start
    fit, test = slice(0, cfg["measured"] - cfg["held_out"]), slice(-cfg["held_out"], None)
    predictor, cv, held_rho = _latency_predictor(hyper, sample[fit], lat[fit], sample[test],
                                                 lat[test])
    pred_rho = held_rho[predictor.name]

    def raw_quality(arch) -> float:
        return compute_proxies(lambda: hyper.build(arch), batch, ["emq"], seed=0)["emq"]

    ref = np.array([raw_quality(a) for a in sample])
    mean, std = float(ref.mean()), float(ref.std()) or 1.0
    budgets = [float(np.quantile(lat, q)) for q in (0.3, 0.6)]
    scorer = spaceevo.SpaceScorer(BASE_ARGS, lambda archs: predictor.predict(archs),
                                  lambda a: (raw_quality(a) - mean) / std, budgets,
                                  samples=cfg["samples"])
    start = time.perf_counter()
    result = spaceevo.evolve_space(scorer, hyper.stages, population=cfg["population"],
                                   steps=cfg["steps"], seed=0)
    evolve_s = time.perf_counter() - start
    found_args = spaceevo.space_args(result.best, BASE_ARGS)
    found = QuantSpace(**found_args)
    default = QuantSpace(**BASE_ARGS)
    print(f"INT8 latency predictor {predictor.name} (5-fold CV Spearman "
          f"{', '.join(f'{k} {v:.3f}' for k, v in cv.items())}): Spearman {pred_rho:.3f} on "
          f"{cfg['held_out']} held-out "
          f"networks; budgets {budgets[0]:.3f} / {budgets[1]:.3f} ms")
    print(f"found space (Q-T {result.best_score:.3f}, {result.evaluated} spaces scored): "
          f"ops {found_args['stage_ops']}, widths {found_args['stage_widths']}")
    check = {}
    train_rng = np.random.default_rng(1)
    for name, space in (("spaceevo", found), ("default_quant", default)):
        archs, within = _within(space, predictor, budgets[0], cfg["check_nets"], train_rng)
        accs = []
        for i, arch in enumerate(archs):
            torch.manual_seed(i)
            accs.append(float(train_model(space.build(arch), data, TrainConfig(
                epochs=cfg["epochs"], bn_recalibration=0, seed=i)).val_acc))
        measured = spaceevo.measure_int8_latencies(space, archs, repeats=cfg["repeats"])
        check[name] = {"val_acc": _spread(accs), "int8_latency_ms": _spread(measured),
                       "predicted_within_budget_of_400": within,
                       "keys": [space.key(a) for a in archs]}
        print(f"  {name:14s} acc {check[name]['val_acc']['mean']:.2f} +- "
              f"{check[name]['val_acc']['std']:.2f}   INT8 "
              f"{check[name]['int8_latency_ms']['mean']:.3f} ms measured "
              f"({within}/400 random networks predicted within the budget)")
    out = {"mode": "quick" if args.quick else "full", "date": "2026-12-05", "config": cfg,
           "latency_predictor": predictor.name, "latency_predictor_cv_spearman": cv,
           "latency_predictor_spearman_held_out": held_rho, "budgets_ms": budgets,
           "measured_latencies_ms": lat, "measured_keys": [hyper.key(a) for a in sample],
           "measure_seconds": measure_s, "evolution_seconds": evolve_s,
           "found_space_args": found_args, "qt_score": result.best_score,
           "qt_history": result.history, "spaces_scored": result.evaluated, "check": check,
           "seconds": time.perf_counter() - began,
           "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, CPU "
                      "shared with other jobs"}
    path = out_dir / "spaceevo.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} in {out['seconds']:.1f} s")


if __name__ == "__main__":
    main()
