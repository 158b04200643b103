"""SpaceEvo on this CPU: design a quant space for INT8 latency, then compare it with the
default quant space on digits.

Latency is that of the networks at a `side` x `side` input (64 in the full run: on this CPU
a network then costs 1.5-4 ms, mostly its operators' compute, where at digits' own 8 x 8 it
was mostly per-operator overhead); accuracy is trained at digits' 8 x 8 (the networks are
fully convolutional, the same architecture at either side).

1. INT8 latency predictor (`search_spaces.spaceevo.BlockLatencyPredictor`, nn-Meter's
   kernel-level method): hyperspace blocks timed alone as INT8 modules, one random forest
   per operation, a network = its blocks' sum, per operation scaled, + an offset, fitted
   on whole networks. Timing:
   median of interleaved repeats of the thread's CPU time. Checked on held-out networks
   against a fresh measurement, beside whole-network LUT / GBDT predictors and the previous
   setup (8 x 8 input, fastest wall-clock pass, whole-network LUT).
2. Loss estimate: random INT8 hyperspace networks trained briefly with QAT on digits; the
   additive per-stage loss model (5-fold CV) and the `emq` proxy, by Spearman with the
   measured validation loss; the additive model scores the spaces (emq is too slow for
   the ~10^5 networks the Q-T scores sample).
3. Space evolution: SpaceEvo's Q-T score over two latency targets (the 25% and 50%
   quantiles of the hyperspace's measured latencies).
4. Check: the best predicted networks within the tighter target of the found space and of
   the default quant space, trained with QAT on digits (several seeds) and timed as INT8
   models (all interleaved in one measurement).

    python bench/spaceevo.py           # full: writes bench/results/spaceevo.json
    python bench/spaceevo.py --quick   # CI smoke (< 30 s), temporary folder
    python bench/spaceevo.py --evolution-seed 1   # writes bench/results/spaceevo_seed1.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BASE_ARGS = {"num_classes": 10, "input_channels": 1, "input_size": 8}
FULL = {"side": 64, "blocks": 360, "nets": 80, "held_out": 32, "repeats": 15, "trees": 200,
        "gbdt_trees": 400, "qat_nets": 60, "qat_epochs": 2, "train_subset": None,
        "samples": 1000, "top": 10, "population": 16, "steps": 120, "check_nets": 3,
        "check_seeds": 3, "check_epochs": 3}
QUICK = {"side": 16, "blocks": 12, "nets": 6, "held_out": 3, "repeats": 3, "trees": 10,
         "gbdt_trees": 20, "qat_nets": 5, "qat_epochs": 1, "train_subset": 128,
         "samples": 40, "top": 3, "population": 2, "steps": 2, "check_nets": 1,
         "check_seeds": 1, "check_epochs": 1}
#: The previous setup's measurements (bench/results/spaceevo.json of 2026-12-05, first run).
PREVIOUS = {"side": 8, "timing": "fastest of 30 wall-clock passes", "predictor": "lut",
            "held_out_spearman": 0.389}


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _rank_fit(pred, true) -> dict[str, float]:
    from scipy.stats import spearmanr

    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return {"spearman": float(spearmanr(pred, true).statistic),
            "rmse_ms": float(np.sqrt(np.mean((pred - true) ** 2)))}


def _stratified_blocks(se, hyper, n: int, rng) -> list:
    """`n` distinct hyperspace blocks, as many of each operation (nn-Meter samples each
    kernel type on its own), drawn from the blocks of random networks."""
    pool = sorted({b for a in se.sample_int8(hyper, rng, 400) for b in se.blocks_of(hyper, a)},
                  key=repr)
    random.Random(0).shuffle(pool)
    per_op = {op: [b for b in pool if b.op == op] for op in sorted({b.op for b in pool})}
    out = [b for blocks in per_op.values() for b in blocks[: n // len(per_op)]]
    random.Random(1).shuffle(out)
    return out


def _wall_fastest(space, archs, repeats: int) -> list[float]:
    """The previous setup's timing: fastest of `repeats` wall-clock passes, network after
    network."""
    import torch

    out = []
    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        model = space.int8_model(arch, torch.randn(8, *space.input_shape()))
        x = torch.randn(1, *space.input_shape())
        with torch.inference_mode():
            model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1000.0)
        out.append(min(times))
    return out


def latency_section(se, cfg, rng) -> tuple:
    from predictors.latency import AdditiveLUT, GBDTLatency

    base = {**BASE_ARGS, "input_size": cfg["side"]}
    hyper = se.hyperspace(base)
    blocks = _stratified_blocks(se, hyper, cfg["blocks"], rng)
    start = time.process_time()
    block_ms = se.measure_block_latencies(blocks, repeats=cfg["repeats"])
    held_blocks = [i % 5 == 4 for i in range(len(blocks))]  # one in five held out
    part = {flag: ([b for b, h in zip(blocks, held_blocks, strict=True) if h == flag],
                   [m for m, h in zip(block_ms, held_blocks, strict=True) if h == flag])
            for flag in (False, True)}
    block_check = se.BlockLatencyPredictor(hyper, trees=cfg["trees"]).fit_blocks(*part[False])
    block_fit = _rank_fit(block_check.block_latency(part[True][0]), part[True][1])
    nets = se.sample_int8(hyper, rng, cfg["nets"])
    measured = se.measure_int8_latencies(hyper, nets, repeats=cfg["repeats"])
    n_fit = cfg["nets"] - cfg["held_out"]
    fit_nets, held = nets[:n_fit], nets[n_fit:]
    fresh = se.measure_int8_latencies(hyper, held, repeats=cfg["repeats"], seed=1000)
    predictor = se.BlockLatencyPredictor(hyper, trees=cfg["trees"]).fit_blocks(blocks,
                                                                             block_ms)
    predictor.fit_overhead(fit_nets, measured[:n_fit])
    lut = AdditiveLUT(hyper).fit(fit_nets, measured[:n_fit])
    gbdt = GBDTLatency(hyper, trees=cfg["gbdt_trees"]).fit(fit_nets, measured[:n_fit])
    held_fit = {"blocks (kernel-level) + overhead": _rank_fit(predictor.predict(held), fresh),
                "blocks, sum only": _rank_fit(predictor.block_sum(held), fresh),
                "lut (whole networks)": _rank_fit(lut.predict(held), fresh),
                "gbdt (whole networks)": _rank_fit(gbdt.predict(held), fresh),
                "retest (first measurement)": _rank_fit(measured[n_fit:], fresh)}
    # the previous setup on the same networks: 8 x 8, fastest wall-clock pass, LUT
    small = se.hyperspace(BASE_ARGS)
    old = _wall_fastest(small, nets, 2 * cfg["repeats"])
    old_fresh = _wall_fastest(small, held, 2 * cfg["repeats"])
    old_lut = AdditiveLUT(small).fit(fit_nets, old[:n_fit])
    before = {"lut at 8x8, fastest wall-clock pass": _rank_fit(old_lut.predict(held),
                                                               old_fresh),
              "retest at 8x8": _rank_fit(old[n_fit:], old_fresh)}
    info = {"side": cfg["side"], "blocks_timed": len(blocks),
            "block_held_out": block_fit, "networks_fit": n_fit,
            "networks_held_out": cfg["held_out"], "overhead_line": {
                "scales": predictor.scales, "offset_ms": predictor.offset},
            "held_out_vs_fresh_measurement": held_fit, "before_same_networks": before,
            "previous_run": PREVIOUS, "measured_ms": measured, "fresh_ms": fresh,
            "measured_range_ms": [min(measured), max(measured)],
            "cpu_seconds": time.process_time() - start}
    return hyper, predictor, measured, info


def loss_section(se, cfg, data, rng) -> tuple:
    """Short QAT of random INT8 hyperspace networks; the per-block loss model and the emq
    proxy against their validation loss (5-fold CV)."""
    import torch
    from scipy.stats import spearmanr

    from workers.training import TrainConfig, train_model

    hyper = se.hyperspace(BASE_ARGS)
    nets = se.sample_int8(hyper, rng, cfg["qat_nets"])
    start = time.process_time()
    losses, accs = [], []
    for arch in nets:
        torch.manual_seed(0)
        result = train_model(hyper.build(arch), data, TrainConfig(
            epochs=cfg["qat_epochs"], bn_recalibration=0, seed=0))
        losses.append(float(result.val_loss))
        accs.append(float(result.val_acc))
    batch = (torch.as_tensor(data.x_train[:32], dtype=torch.float32),
             torch.as_tensor(data.y_train[:32], dtype=torch.long))
    emq = se.proxy_quality(hyper, "emq", batch)
    emq_scores = np.array([emq(a) for a in nets])
    folds = np.array_split(np.arange(len(nets)), 5)
    out_of_fold = np.zeros(len(nets))
    for fold in folds:
        rest = [i for i in range(len(nets)) if i not in set(fold)]
        model = se.StageLoss().fit([nets[i] for i in rest], [losses[i] for i in rest])
        out_of_fold[fold] = model.predict([nets[i] for i in fold])
    rho = {"stage_loss_cv_vs_val_loss": float(spearmanr(out_of_fold, losses).statistic),
           "stage_loss_cv_vs_val_acc": float(spearmanr(-out_of_fold, accs).statistic),
           "emq_vs_val_loss": float(spearmanr(-emq_scores, losses).statistic),
           "emq_vs_val_acc": float(spearmanr(emq_scores, accs).statistic)}
    # The Q-T score predicts the loss of ~10^5 networks (1000 per candidate space): only the
    # additive model is cheap enough (emq costs ~0.3 s CPU a network); emq is measured here
    # as the alternative.
    model = se.StageLoss().fit(nets, losses)
    info = {"networks": len(nets), "epochs": cfg["qat_epochs"], "val_loss": losses,
            "val_acc": accs, "val_acc_range": [min(accs), max(accs)],
            "keys": [hyper.key(a) for a in nets], "emq": emq_scores.tolist(),
            "spearman": rho, "used": "stage",
            "emq_ranks_better": rho["emq_vs_val_loss"] > rho["stage_loss_cv_vs_val_loss"],
            "cpu_seconds": time.process_time() - start}
    return model.predict, info


def check_section(se, cfg, data, spaces: dict, latency, loss, budget: float, lat_space,
                  rng) -> dict:
    """Per space: the `check_nets` networks of least predicted loss among 2000 draws
    predicted within `budget`, trained with QAT (`check_seeds` seeds) and timed (every
    space's networks interleaved in one measurement)."""
    import torch

    from search_spaces.quant import QuantSpace
    from workers.training import TrainConfig, train_model

    picked, out = {}, {}
    for name, args in spaces.items():
        space = QuantSpace(**args)
        draws = se.sample_int8(space, rng, 2000 if cfg is FULL else 100)
        predicted, pred_loss = latency(draws), loss(draws)
        within = np.flatnonzero(predicted <= budget)
        order = within[np.argsort(pred_loss[within], kind="stable")] if len(within) else \
            np.argsort(predicted, kind="stable")
        picked[name] = [draws[int(i)] for i in order[: cfg["check_nets"]]]
        out[name] = {"predicted_within_budget_of_draws": [int(len(within)), len(draws)],
                     "predicted_ms": [float(predicted[int(i)])
                                      for i in order[: cfg["check_nets"]]],
                     "keys": [space.key(a) for a in picked[name]]}
    every = [a for name in spaces for a in picked[name]]
    measured = se.measure_int8_latencies(lat_space, every, repeats=cfg["repeats"], seed=2000)
    for name, args in spaces.items():
        space = QuantSpace(**args)
        ms = [measured.pop(0) for _ in picked[name]]
        accs = []
        for arch in picked[name]:
            for seed in range(cfg["check_seeds"]):
                torch.manual_seed(seed)
                accs.append(float(train_model(space.build(arch), data, TrainConfig(
                    epochs=cfg["check_epochs"], bn_recalibration=0, seed=seed)).val_acc))
        out[name].update({"val_acc": _spread(accs), "val_acc_all": accs,
                          "int8_latency_ms": _spread(ms), "int8_latency_all_ms": ms,
                          "measured_within_budget": sum(m <= budget for m in ms)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run (< 30 s)")
    parser.add_argument("--evolution-seed", type=int, default=0,
                        help="seed of the space evolution (full run: not 0 writes "
                             "spaceevo_seed<N>.json)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    from search_spaces import spaceevo as se
    from workers.datasets import parse_dataset

    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    out_dir = Path(tempfile.mkdtemp(prefix="spaceevo_")) if args.quick else RESULTS
    began, cpu_began = time.perf_counter(), time.process_time()
    data = parse_dataset("digits").load()
    if cfg["train_subset"]:  # quick: a slice of digits, enough to run every step
        n = cfg["train_subset"]
        data = dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n],
                                   x_val=data.x_val[:n], y_val=data.y_val[:n])
    rng = np.random.default_rng(0)
    lat_space, predictor, measured, lat_info = latency_section(se, cfg, rng)
    fits = lat_info["held_out_vs_fresh_measurement"]
    print(f"INT8 latency at {cfg['side']}x{cfg['side']} ({lat_info['measured_range_ms'][0]:.2f}"
          f"-{lat_info['measured_range_ms'][1]:.2f} ms), held-out vs a fresh measurement:")
    for name, fit in {**fits, **lat_info["before_same_networks"]}.items():
        print(f"  {name:38s} Spearman {fit['spearman']:.3f}  RMSE {fit['rmse_ms']:.3f} ms")
    loss, loss_info = loss_section(se, cfg, data, rng)
    print("loss estimate (5-fold CV, Spearman): "
          + "  ".join(f"{k} {v:.3f}" for k, v in loss_info["spearman"].items()))
    budgets = [float(np.quantile(measured, q)) for q in (0.25, 0.5)]

    def latency(archs):
        return predictor.predict(archs)

    scorer = se.SpaceScorer(BASE_ARGS, latency, loss, budgets, samples=cfg["samples"],
                            top=cfg["top"])
    start = time.process_time()
    result = se.evolve_space(scorer, 3, population=cfg["population"], steps=cfg["steps"],
                             seed=args.evolution_seed)
    evolve_cpu = time.process_time() - start
    found_args = se.space_args(result.best, BASE_ARGS)
    spaces = {"spaceevo": found_args, "default_quant": dict(BASE_ARGS)}
    qt = {name: scorer.details(a) for name, a in spaces.items()}
    print(f"found space (Q-T {result.best_score:.3f}, default {scorer.score_args(BASE_ARGS):.3f};"
          f" {result.evaluated} spaces scored): ops {found_args['stage_ops']}, widths "
          f"{found_args['stage_widths']}; targets {budgets[0]:.2f} / {budgets[1]:.2f} ms")
    check = check_section(se, cfg, data, spaces, latency, loss, budgets[0], lat_space, rng)
    for name, c in check.items():
        print(f"  {name:14s} acc {c['val_acc']['mean']:.2f} +- {c['val_acc']['std']:.2f}   "
              f"INT8 {c['int8_latency_ms']['mean']:.3f} +- {c['int8_latency_ms']['std']:.3f} ms"
              f" measured ({c['measured_within_budget']}/{len(c['keys'])} within "
              f"{budgets[0]:.2f} ms)")
    out = {"mode": "quick" if args.quick else "full", "date": "2026-12-05", "config": cfg,
           "evolution_seed": args.evolution_seed,
           "latency": lat_info, "loss_estimate": loss_info, "budgets_ms": budgets,
           "found_space_args": found_args, "qt_score": result.best_score,
           "qt_details": qt, "qt_history": result.history,
           "spaces_scored": result.evaluated, "evolution_cpu_seconds": evolve_cpu,
           "check": check, "seconds": time.perf_counter() - began,
           "cpu_seconds": time.process_time() - cpu_began,
           "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread, CPU "
                      "shared with other jobs; latency = thread CPU time"}
    suffix = f"_seed{args.evolution_seed}" if args.evolution_seed else ""
    path = out_dir / f"spaceevo{suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} in {out['seconds']:.1f} s ({out['cpu_seconds']:.1f} s CPU)")


if __name__ == "__main__":
    main()
