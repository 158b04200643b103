"""One-shot supernet ranking quality on digits: does inherited-weight accuracy rank subnets
like stand-alone training does, with and without complexity-aware sampling?

Protocol. A fixed, seeded uniform sample of distinct subnets of a reduced space (8x8 digits,
tiny channel counts) is trained from scratch, one by one, with the `train` evaluator's loop
(`workers.training.train_model`: SGD, cosine schedule, BN recalibration) for a few epochs;
the stand-alone accuracy is the mean over `--train-seeds` seeds, and the mean Kendall tau
between two seeds' rankings says how far the ground truth itself can be trusted (a ceiling).
For each variant (uniform sampling, complexity-aware sampling) the `oneshot` search trains
`--supernet-seeds` supernets with the sandwich rule and in-place distillation; a subnet's
inherited accuracy is its validation accuracy with weights sliced from the supernet and BN
recalibrated on 256 training examples. We report Kendall's tau and Spearman's rho between
inherited and stand-alone accuracy over the same subnets (mean over supernet seeds). Both
sides train on the first `--limit` digits training examples (600 by default: with all 1437,
six epochs put every subnet at 96.5-99.4% and the ranking is mostly seed noise) and are
scored on the same 360 validation digits.

    python bench/oneshot.py              # mbconv + hybrid, 40 subnets: 829 s (2 busy cores)
    python bench/oneshot.py --spaces mbconv --subnets 30
    python bench/oneshot.py --quick      # CI smoke test (< 60 s): mbconv, 8 subnets; BossNAS
    python bench/oneshot.py --bossnas    # BossNAS's ranking on hytra, 16 subnets (--full: 40)
    python bench/oneshot.py --ranking dev --jobs 2   # issue 19's ablation (then --ranking test)

BossNAS section (issue 19, `bench_bossnas`). The `bossnas` search trains the hytra supernet
block by block on unlabelled digits (3 epochs per block); its ranking of an architecture is
the sum of its block-wise losses against the candidates' ensemble targets (the paper's
block-wise evaluation). The subnets are the searched best architecture and a uniform sample
of the architectures that evaluation ranks (each block's path from the scale where the
searched prefix ends to where the next block starts). Ground truth: stand-alone accuracy
(4 epochs) on the 1,197 held-out digits (`heldout_examples`: the validation split and the
training digits `limit` leaves out), averaged over 12 seeds; the Kendall tau between the
means of the first and of the second six seeds (two independent ground truths) says how
reliable it is; the 359-image validation accuracy (the old ground truth) beside it. Taus
over all subnets and within each end scale; FLOPs' and params' beside. The searched best
architectures of search seeds 0-2 at 3 and at 20 epochs per block are trained stand-alone
too (`searched_best`). `--bossnas-epochs N --bossnas-seed S` ranks with another search
(N epochs per block, seed S; written to oneshot_bossnas_e<N>s<S>.json), for instance one
trained longer whose prefix still leaves the last block a choice of end scales.
`--jobs`/`--cache` as in the ranking section.

Samplers and mixture section (issue 19, `bench_mixture_space`, `--mixture`): on mbconv (or
`--spaces`), the single supernet with the default and the `elasticvit` sampler and the
balanced mixture of K=2 supernets (`supernets: 2`) with either sampler, one supernet seed
each (20 epochs), over 12 uniform subnets (`--full`: 40); ground truth stand-alone accuracy
averaged over 4 seeds (4 epochs), the tau of its two halves and FLOPs' tau beside.
`--quick` runs a 4-subnet version of it (< 20 s). The variant "elasticvit walk only"
(`bank_prob: 0`) separates the level walk from the memory banks.

Ranking ablation (issue 19, `bench_ranking`, `--ranking dev|test`): what makes inherited
accuracy rank mbconv subnets better. Both sides train on the first 600 digits training
examples and are scored on the same 1,197 images neither trains on (the 838 unused training
examples plus the 359 validation ones; `heldout_examples`), as accuracy on the 359 (the old
score), accuracy on all 1,197, or cross entropy on them. Supernets: single (20 epochs, seeds
0-2, their mean), single 60 epochs, mixtures K=2 and K=3 (seeds 0-1); each scored four ways:
BN recalibrated on 256 or 600 examples, or a 25- or 50-step fine-tune of the inherited weights
(`finetune_steps`). Ground truths: stand-alone 4 epochs (dev and test) and 12 epochs (test),
4 seeds each, and on test 4 epochs with 8 seeds, with the tau of their two halves. Settings
are chosen on the `dev` subnets (sample seed 2) against the 4-epoch ground truth and reported
unchanged on 40 fresh `test` subnets (sample seed 3, none of dev's): `RANKING_TEST_*`.
`--jobs 2` runs two processes; `--cache FILE` keeps finished trainings so a long run
resumes; `--part` runs only the trainings or only the supernets. `--quick` runs a 4-subnet
version (< 10 s).

Writes bench/results/oneshot.json (`--bossnas`: oneshot_bossnas.json, `--mixture`:
oneshot_mixture.json, with `--full` oneshot_mixture_full.json; `--out` to change; `--quick`
writes to a fresh temporary folder, so it never overwrites the reference figures;
`--ranking`: oneshot_ranking_<stage>.json).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from predictors.metrics import kendall_tau, spearman  # noqa: E402
from search_spaces import get_space  # noqa: E402
from workers.datasets import parse_dataset  # noqa: E402
from workers.training import TrainConfig, train_model  # noqa: E402
from workers.weight_sharing import get_search  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: Reduced spaces for 8x8 digits (settings chosen once, never per result).
SPACES: dict[str, dict[str, Any]] = {
    "mbconv": {"input_channels": 1, "input_size": 8, "stage_channels": [16, 24, 32],
               "stage_strides": [2, 2, 1], "stem_channels": 8, "head_channels": 48,
               "depths": [1, 2, 3], "kernel_sizes": [3, 5], "expand_ratios": [2, 4],
               "width_mults": [0.5, 1.0], "resolutions": [6, 8]},
    "hybrid": {"input_channels": 1, "input_size": 8, "blocks": 4,
               "widths": [[8, 16], [16, 24], [24, 32]], "mlp_ratio": 2, "stem_stride": 1},
}
VARIANTS = {"uniform": {"complexity_aware": False}, "complexity-aware": {"complexity_aware": True}}


class Resized(torch.nn.Module):
    """A subnet that takes the data's 8x8 inputs at its own resolution (as the search does)."""

    def __init__(self, net: torch.nn.Module, side: int) -> None:
        super().__init__()
        self.net, self.side = net, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.side:
            x = torch.nn.functional.interpolate(x, size=(self.side, self.side),
                                                mode="bilinear", align_corners=False)
        return self.net(x)


def sample_subnets(space: Any, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` distinct subnets, sampled uniformly (as the search's random subnets are)."""
    rng = np.random.default_rng(seed)
    archs: dict[str, dict[str, Any]] = {}
    while len(archs) < count:
        arch = space.sample(rng)
        archs.setdefault(space.key(arch), arch)
    return list(archs.values())


def standalone_accuracies(space: Any, arch: dict[str, Any], data: Any, epochs: int,
                          seeds: int) -> list[float]:
    """Validation accuracy after training from scratch, one per seed (init and data order)."""
    accuracies = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = Resized(space.build(arch), space.input_shape(arch)[-1])
        config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, seed=seed, threads=1,
                             bn_recalibration=512)
        accuracies.append(train_model(net, data, config).val_acc)
    return accuracies


def seed_agreement(per_seed: list[list[float]]) -> float | None:
    """Mean Kendall tau between the stand-alone rankings of two different seeds: how well the
    ground truth agrees with itself (a ceiling for any proxy's tau against the seed mean)."""
    seeds = len(per_seed[0])
    taus = [kendall_tau([a[i] for a in per_seed], [a[j] for a in per_seed])
            for i in range(seeds) for j in range(i + 1, seeds)]
    return statistics.fmean(taus) if taus else None


def supernet_accuracies(space: Any, archs: list[dict[str, Any]], variant: dict[str, Any],
                        args: argparse.Namespace, seed: int,
                        folder: Path) -> tuple[list[float], dict[str, Any]]:
    search = get_search("oneshot", space, seed=seed, dataset=dataset(args),
                        epochs=args.supernet_epochs, batch_size=64, population=2,
                        generations=0, top_k=1, latency="none", **variant)
    started = time.perf_counter()
    outcome = search.run(folder)
    seconds = time.perf_counter() - started
    accuracies = [search.inherited_accuracy(a) for a in archs]
    last = outcome.history[-1]
    return accuracies, {"train_seconds": seconds, "val_acc_largest": last["val_acc_largest"],
                        "val_acc_smallest": last["val_acc_smallest"],
                        "max_flops_gap_last_epoch": last["max_flops_gap"]}


def dataset(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "digits", "limit": args.limit}


def bench_variant(space: Any, archs: list[dict[str, Any]], standalone: list[float],
                  variant: dict[str, Any], args: argparse.Namespace,
                  folder: Path) -> dict[str, Any]:
    """Rank agreement of one sampling variant, per supernet seed and on average."""
    runs = []
    for seed in range(args.supernet_seeds):
        inherited, info = supernet_accuracies(space, archs, variant, args, seed,
                                              folder / f"seed{seed}")
        runs.append({"seed": seed, "kendall_tau": kendall_tau(inherited, standalone),
                     "spearman": spearman(inherited, standalone),
                     "inherited_mean": statistics.fmean(inherited), **info,
                     "inherited": inherited})
    return {"kendall_tau": statistics.fmean(r["kendall_tau"] for r in runs),
            "spearman": statistics.fmean(r["spearman"] for r in runs),
            "kendall_tau_per_seed": [r["kendall_tau"] for r in runs],
            "inherited_mean": statistics.fmean(r["inherited_mean"] for r in runs),
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            "runs": runs}


def bench_space(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    space = get_space(name, **SPACES[name])
    data = parse_dataset(dataset(args)).load()
    archs = sample_subnets(space, args.subnets, seed=1)
    started = time.perf_counter()
    per_seed = [standalone_accuracies(space, a, data, args.train_epochs, args.train_seeds)
                for a in archs]
    standalone = [statistics.fmean(a) for a in per_seed]
    standalone_seconds = time.perf_counter() - started
    agreement = seed_agreement(per_seed)
    flops_tau = kendall_tau([space.flops(a) for a in archs], standalone)
    print(f"{name}: {len(archs)} subnets trained stand-alone ({args.train_epochs} epochs x "
          f"{args.train_seeds} seeds) in {standalone_seconds:.0f} s; accuracy "
          f"{min(standalone):.1f}..{max(standalone):.1f}%; seed-vs-seed tau "
          f"{'n/a' if agreement is None else f'{agreement:+.3f}'}; FLOPs-vs-accuracy tau "
          f"{flops_tau:+.3f}", flush=True)
    result: dict[str, Any] = {"space_args": SPACES[name], "subnets": len(archs),
                              "standalone_seconds": standalone_seconds,
                              "standalone_seed_vs_seed_tau": agreement,
                              "flops_vs_standalone_tau": flops_tau, "variants": {}}
    for label, variant in VARIANTS.items():
        entry = bench_variant(space, archs, standalone, variant, args,
                              folder / f"{name}-{label}")
        result["variants"][label] = entry
        taus = ", ".join(f"{t:+.3f}" for t in entry["kendall_tau_per_seed"])
        print(f"  {label:<17} tau {entry['kendall_tau']:+.3f} (per supernet seed: {taus})  "
              f"rho {entry['spearman']:+.3f}  inherited mean {entry['inherited_mean']:.1f}%  "
              f"supernet {entry['train_seconds']:.0f} s", flush=True)
    result["subnet_keys"] = [space.key(a) for a in archs]
    result["standalone"] = standalone
    result["standalone_per_seed"] = per_seed
    result["flops"] = [space.flops(a) for a in archs]
    return result


# ---- BossNAS (issue 19): block-wise self-supervised ranking on the hytra space ----------------
#: HyTra for 8x8 digits: four scales (8, 4, 2, 1 px), ResAtt at the last two (settings chosen
#: once, never per result); `--quick` a smaller fabric.
BOSSNAS_SPACE = {"input_channels": 1, "input_size": 8, "stem_stride": 1, "layers": 8,
                 "widths": [8, 16, 32, 64], "head_dim": 4}
BOSSNAS_QUICK_SPACE = {"input_channels": 1, "input_size": 8, "stem_stride": 1, "layers": 4,
                       "widths": [8, 16, 32], "head_dim": 4}


def bossnas_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The section's sizes: `--quick` (CI smoke, < 30 s), default, `--full` (40 subnets)."""
    if args.quick:
        return {"space": BOSSNAS_QUICK_SPACE, "subnets": 4, "blocks": 2, "epochs_per_block": 1,
                "long_epochs_per_block": None, "search_seeds": [0], "limit": 200,
                "train_epochs": 1, "train_seeds": 2, "eval_samples": 64}
    return {"space": BOSSNAS_SPACE, "subnets": args.subnets if args.bossnas_subnets else
            (40 if args.full else 16), "blocks": 4, "epochs_per_block": 3,
            "long_epochs_per_block": 20, "search_seeds": [0, 1, 2], "limit": args.limit,
            "train_epochs": 4, "train_seeds": 12, "eval_samples": 256,
            "ranker": {"epochs_per_block": args.bossnas_epochs or 3,
                       "seed": args.bossnas_seed or 0}}


def bossnas_search(space: Any, settings: dict[str, Any], folder: Path,
                   seed: int = 0) -> tuple[Any, float]:
    """The `bossnas` search on unlabelled digits (the first `limit` training images); CPU
    seconds."""
    search = get_search("bossnas", space, seed=seed, dataset={"kind": "digits",
                                                           "limit": settings["limit"]},
                        epochs=settings["epochs_per_block"], blocks=settings["blocks"],
                        batch_size=64, paths=4, eval_samples=settings["eval_samples"], top_k=1)
    started = time.process_time()
    search.run(folder)
    return search, time.process_time() - started


def bossnas_truth_task(task: dict[str, Any]) -> dict[str, Any]:
    """One stand-alone training of a hytra subnet (key, epochs, seed): accuracy on the 359
    validation digits and on the whole held-out set (`heldout_examples`)."""
    space = get_space("hytra", **task["space_args"])
    return standalone_scores(space, space.from_key(task["key"]), task)


def standalone_scores(space: Any, arch: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """Train `arch` from scratch (`task`'s epochs, seed and training limit) and score it on
    the validation digits and the whole held-out set, with the CPU seconds it took."""
    torch.set_num_threads(1)
    data, x_eval, y_eval = heldout_examples(task["limit"])
    seed = task["seed"]
    torch.manual_seed(seed)
    net = Resized(space.build(arch), space.input_shape(arch)[-1])
    config = TrainConfig(epochs=task["epochs"], batch_size=64, lr=0.05, seed=seed, threads=1,
                         bn_recalibration=512)
    started = time.process_time()
    train_model(net, data, config)
    return {**_scores(net.net, net.side, x_eval, y_eval, len(data.x_val)),
            "cpu_seconds": time.process_time() - started}


def two_ground_truths(per_seed: list[list[float]]) -> dict[str, Any]:
    """The seed-mean stand-alone accuracy, and two independent ground truths (the means over
    the first and the second half of the seeds) with their Kendall tau: how far the ground
    truth can be trusted."""
    half = len(per_seed[0]) // 2
    first = [statistics.fmean(a[:half]) for a in per_seed]
    second = [statistics.fmean(a[half:]) for a in per_seed]
    return {"mean": [statistics.fmean(a) for a in per_seed], "first": first, "second": second,
            "tau_first_vs_second": kendall_tau(first, second)}


def bossnas_taus(columns: dict[str, list[float]], truth: dict[str, Any],
                 rows: list[int]) -> dict[str, Any]:
    """Kendall tau of every score column against the ground truth, over `rows`, and the
    ground truth's two halves against each other."""
    def pick(values: list[float]) -> list[float]:
        return [values[i] for i in rows]

    out: dict[str, Any] = {"subnets": len(rows)}
    if len(rows) < 3:
        return out
    out.update({name: kendall_tau(pick(v), pick(truth["mean"])) for name, v in columns.items()})
    out["ground_truth_halves"] = kendall_tau(pick(truth["first"]), pick(truth["second"]))
    return out


def bossnas_searched(search: Any, cpu: float, seed: int,
                     epochs_per_block: int) -> dict[str, Any]:
    """A finished search's best architecture (each block's best path) and its record."""
    return {"seed": seed, "epochs_per_block": epochs_per_block, "search_cpu_seconds": cpu,
            "best_key": search.space.key(search.ranked(1)[0][1]),
            "best_paths": [search.path_key(p) for p in search.best_paths]}


def bench_bossnas(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Kendall tau between BossNAS's ranking (the sum of block-wise losses against the
    candidates' ensemble targets; lower ranks higher) and stand-alone accuracy, over the
    searched best architecture and a uniform sample of the architectures the block-wise
    evaluation ranks, beside FLOPs and params; over all subnets and within each end scale."""
    settings = bossnas_settings(args)
    space = get_space("hytra", **settings["space"])
    ranker = settings.get("ranker", {"epochs_per_block": settings["epochs_per_block"],
                                     "seed": 0})
    search, search_cpu = bossnas_search(space, {**settings, **ranker}, folder / "bossnas",
                                        ranker["seed"])
    best = search.ranked(1)[0][1]
    archs = {space.key(best): best}
    for arch in search.sample_rankable(4 * settings["subnets"], seed=1):
        if len(archs) >= settings["subnets"]:
            break
        archs.setdefault(space.key(arch), arch)
    population = list(archs.values())
    keys = [space.key(a) for a in population]
    searched = [bossnas_searched(search, search_cpu, ranker["seed"],
                                 ranker["epochs_per_block"])]
    for epochs_per_block in (settings["epochs_per_block"], settings["long_epochs_per_block"]):
        for seed in settings["search_seeds"] if epochs_per_block else []:
            if (seed, epochs_per_block) != (ranker["seed"], ranker["epochs_per_block"]):
                other, cpu = bossnas_search(space, {**settings, "epochs_per_block":
                                                    epochs_per_block},
                                            folder / f"bossnas-{seed}-{epochs_per_block}", seed)
                searched.append(bossnas_searched(other, cpu, seed, epochs_per_block))
    limit, epochs, seeds = settings["limit"], settings["train_epochs"], settings["train_seeds"]
    tasks = {f"bossnas/{limit}/{epochs}ep/{key}/{seed}": (bossnas_truth_task, {
        "space_args": settings["space"], "key": key, "epochs": epochs, "seed": seed,
        "limit": limit}) for seed in range(seeds)
        for key in dict.fromkeys(keys + [s["best_key"] for s in searched])}
    done = _run_tasks(tasks, args.jobs, args.cache)
    truths = {}
    for metric in ("eval_acc", "val_acc"):
        per_seed = [[done[f"bossnas/{limit}/{epochs}ep/{key}/{seed}"][metric]
                     for seed in range(seeds)] for key in keys]
        truths[metric] = {**two_ground_truths(per_seed), "per_seed": per_seed,
                          "seed_vs_seed_tau": seed_agreement(per_seed)}
    scores = [-search.score(a) for a in population]
    columns = {"bossnas": scores, "flops": [float(space.flops(a)) for a in population],
               "params": [float(space.params(a)) for a in population]}
    ends = [space.layer_scales(a["down"])[-1] for a in population]
    table = {metric: {"all": bossnas_taus(columns, truth, list(range(len(keys)))),
                      **{f"ends at scale {e}": bossnas_taus(
                          columns, truth, [i for i, x in enumerate(ends) if x == e])
                         for e in sorted(set(ends))}}
             for metric, truth in truths.items()}
    truth = truths["eval_acc"]
    for entry in searched:
        accuracies = [done[f"bossnas/{limit}/{epochs}ep/{entry['best_key']}/{seed}"][
            "eval_acc"] for seed in range(seeds)]
        entry.update(best_end_scale=space.layer_scales(space.from_key(entry["best_key"])[
            "down"])[-1], best_standalone=statistics.fmean(accuracies),
            best_standalone_sd=statistics.stdev(accuracies) if seeds > 1 else 0.0,
            subnets_below=sum(a < statistics.fmean(accuracies) for a in truth["mean"]))
    result = {
        "settings": settings, "subnets": len(population), "search_cpu_seconds": search_cpu,
        "standalone_cpu_seconds": sum(done[k]["cpu_seconds"] for k in tasks),
        "ground_truth": "eval_acc: accuracy on the 1,197 held-out digits (the validation "
                        "split and the training digits `limit` leaves out), mean of the seeds; "
                        "val_acc: on the 359 validation digits only (the old ground truth)",
        "kendall_tau": table["eval_acc"]["all"]["bossnas"],
        "spearman": spearman(scores, truth["mean"]),
        "flops_kendall_tau": table["eval_acc"]["all"]["flops"],
        "params_kendall_tau": table["eval_acc"]["all"]["params"],
        "ground_truth_tau_first_vs_second": truth["tau_first_vs_second"],
        "table": table,
        "best_key": keys[0], "best_standalone": truth["mean"][0],
        "best_standalone_rank": 1 + sum(acc > truth["mean"][0] for acc in truth["mean"]),
        "best_paths": [search.path_key(p) for p in search.best_paths],
        "block_losses": search.block_losses, "subnet_keys": keys, "end_scales": ends,
        "bossnas_loss": [-s for s in scores], "flops": columns["flops"],
        "params": columns["params"], "truths": truths, "searched_best": searched,
        "history": [{k: v for k, v in r.items() if k != "seconds"} for r in search.history],
    }
    print(f"bossnas (hytra): search {search_cpu:.0f} CPU s ({settings['blocks']} blocks x "
          f"{ranker['epochs_per_block']} epochs, seed {ranker['seed']}); {len(population)} "
          f"subnets stand-alone "
          f"({epochs} epochs x {seeds} seeds, {result['standalone_cpu_seconds']:.0f} CPU s), "
          f"held-out accuracy {min(truth['mean']):.1f}..{max(truth['mean']):.1f}%; searched "
          f"best {keys[0]} ranks {result['best_standalone_rank']}/{len(population)}",
          flush=True)
    for entry in searched:
        print(f"  search seed {entry['seed']}, {entry['epochs_per_block']:2d} epochs per block "
              f"({entry['search_cpu_seconds']:.0f} CPU s): best {entry['best_key']}, "
              f"{entry['best_standalone']:.1f}% held-out (sd {entry['best_standalone_sd']:.1f}), "
              f"above {entry['subnets_below']} of the {len(population)} subnets", flush=True)
    for metric, rows in table.items():
        for label, row in rows.items():
            if "bossnas" in row:
                print(f"  {metric:8s} {label:16s} n={row['subnets']:2d}  BossNAS tau "
                      f"{row['bossnas']:+.3f}  FLOPs {row['flops']:+.3f}  params "
                      f"{row['params']:+.3f}  ground-truth halves "
                      f"{row['ground_truth_halves']:+.3f}", flush=True)
    return result


# ---- ElasticViT's sampler and the balanced mixture of supernets (issue 19) --------------------
#: The section's variants: `oneshot` options beside the single supernet's default sampler.
MIXTURE_VARIANTS: dict[str, dict[str, Any]] = {
    "single, default sampler": {},
    "single, elasticvit sampler": {"sampler": "elasticvit"},
    "single, elasticvit walk only": {"sampler": "elasticvit", "bank_prob": 0.0},
    "mixture K=2, default sampler": {"supernets": 2},
    "mixture K=2, elasticvit sampler": {"supernets": 2, "sampler": "elasticvit"},
}


def mixture_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The section's sizes: `--quick` (< 20 s), default (12 subnets), `--full` (40)."""
    if args.quick:
        return {"subnets": 4, "supernet_epochs": 1, "train_epochs": 1, "train_seeds": 2,
                "limit": 200, "variants": ["single, default sampler",
                                           "single, elasticvit sampler",
                                           "mixture K=2, default sampler"]}
    return {"subnets": 40 if args.full else 12, "supernet_epochs": 20, "train_epochs": 4,
            "train_seeds": 4, "limit": args.limit, "variants": list(MIXTURE_VARIANTS)}


def bench_mixture_space(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Kendall tau of inherited (per variant) and FLOPs against the stand-alone accuracy
    averaged over the seeds, and the agreement of two independent ground truths."""
    settings = mixture_settings(args)
    space = get_space(name, **SPACES[name])
    archs = sample_subnets(space, settings["subnets"], seed=1)
    data = parse_dataset({"kind": "digits", "limit": settings["limit"]}).load()
    started = time.perf_counter()
    per_seed = [standalone_accuracies(space, a, data, settings["train_epochs"],
                                      settings["train_seeds"]) for a in archs]
    truth = two_ground_truths(per_seed)
    flops = [space.flops(a) for a in archs]
    result: dict[str, Any] = {
        "settings": settings, "subnets": len(archs),
        "standalone_seconds": time.perf_counter() - started,
        "ground_truth_tau_first_vs_second": truth["tau_first_vs_second"],
        "flops_kendall_tau": kendall_tau(flops, truth["mean"]), "variants": {}}
    print(f"{name} (issue 19 samplers/mixture): {len(archs)} subnets stand-alone "
          f"({settings['train_epochs']} epochs x {settings['train_seeds']} seeds), accuracy "
          f"{min(truth['mean']):.1f}..{max(truth['mean']):.1f}%; ground-truth halves agree at "
          f"tau {truth['tau_first_vs_second']:+.3f}; FLOPs tau "
          f"{result['flops_kendall_tau']:+.3f}", flush=True)
    run_args = argparse.Namespace(supernet_epochs=settings["supernet_epochs"],
                                  limit=settings["limit"])
    for label in settings["variants"]:
        inherited, info = supernet_accuracies(space, archs, MIXTURE_VARIANTS[label], run_args,
                                              0, folder / f"{name}-{len(result['variants'])}")
        entry = {"kendall_tau": kendall_tau(inherited, truth["mean"]),
                 "kendall_tau_vs_halves": [kendall_tau(inherited, truth["first"]),
                                           kendall_tau(inherited, truth["second"])],
                 "spearman": spearman(inherited, truth["mean"]), **info,
                 "inherited": inherited}
        result["variants"][label] = entry
        print(f"  {label:<32} tau {entry['kendall_tau']:+.3f} (vs halves "
              f"{entry['kendall_tau_vs_halves'][0]:+.3f}, {entry['kendall_tau_vs_halves'][1]:+.3f})"
              f"  rho {entry['spearman']:+.3f}  supernet {info['train_seconds']:.0f} s",
              flush=True)
    result.update(subnet_keys=[space.key(a) for a in archs], standalone=truth["mean"],
                  standalone_per_seed=per_seed, flops=flops)
    return result


# ---- Issue 19's ranking ablation: a larger held-out set, smoother scores, less noise ----------
#: Subnet samples: settings are chosen on `dev` (sample seed 2) and reported, unchanged, on
#: `test` (sample seed 3, excluding the dev subnets).
RANKING_SAMPLES = {"dev": 2, "test": 3}
#: The supernets trained (label -> `oneshot` options, epochs, seeds); each is scored by every
#: scorer in RANKING_SCORERS, or by those it names (the fine-tunes cost more CPU than the
#: supernet's training: 31 s and 54 s against 25 s).
RANKING_SUPERNETS: dict[str, dict[str, Any]] = {
    "single 20ep": {"options": {}, "epochs": 20, "seeds": [0, 1, 2]},
    "single 60ep": {"options": {}, "epochs": 60, "seeds": [0],
                    "scorers": ["bn256", "bn600", "ft25"]},
    "K=2 20ep": {"options": {"supernets": 2}, "epochs": 20, "seeds": [0, 1],
                 "scorers": ["bn256", "bn600", "ft25"]},
    "K=3 20ep": {"options": {"supernets": 3}, "epochs": 20, "seeds": [0],
                 "scorers": ["bn256", "bn600", "ft25"]},
}
#: How a trained supernet scores a subnet: search attributes set before `export_subnet`.
RANKING_SCORERS: dict[str, dict[str, Any]] = {
    "bn256": {},
    "bn600": {"bn_samples": 600},
    "ft25": {"finetune_steps": 25},
    "ft50": {"finetune_steps": 50},
}
#: Stand-alone ground truths measured (label -> epochs, seeds).
RANKING_TRUTHS: dict[str, dict[str, int]] = {"4ep": {"epochs": 4, "seeds": 4},
                                             "12ep": {"epochs": 12, "seeds": 4},
                                             "4ep x8": {"epochs": 4, "seeds": 8}}
_RANKING_DATA: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}


def heldout_examples(limit: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The dataset both sides train on (the first `limit` digits training examples, as the
    search's `limit` picks them) and an evaluation set neither trains on: the training split's
    unused examples followed by the validation split (1,197 images with `limit` 600),
    standardised as the training examples are. The unused examples are found by rebuilding
    `workers.datasets`' limit permutation; the rebuilt kept rows are checked to equal the
    loaded ones."""
    if limit in _RANKING_DATA:
        return _RANKING_DATA[limit]
    data = parse_dataset({"kind": "digits", "limit": limit}).load()
    full = parse_dataset({"kind": "digits"}).load()  # same split, every training example

    def standardise(x: np.ndarray, norm: dict[str, list[float]]) -> np.ndarray:
        return x * (np.array(norm["std"]).reshape(1, -1, 1, 1) + 1e-6) \
            + np.array(norm["mean"]).reshape(1, -1, 1, 1)

    raw = standardise(full.x_train, full.normalisation)
    rng = np.random.default_rng(0)
    rng.permutation(len(raw) + len(full.x_val))  # the train/val split's draw
    keep = rng.permutation(len(raw))[:limit]
    mean = np.array(data.normalisation["mean"]).reshape(1, -1, 1, 1)
    std = np.array(data.normalisation["std"]).reshape(1, -1, 1, 1) + 1e-6
    again = ((raw - mean) / std).astype(np.float32)
    if not np.allclose(again[keep], data.x_train, atol=1e-4) \
            or not np.array_equal(full.y_train[keep], data.y_train):
        raise RuntimeError("could not rebuild the digits limit permutation")
    unused = np.setdiff1d(np.arange(len(raw)), keep)
    x_val = ((standardise(full.x_val, full.normalisation) - mean) / std).astype(np.float32)
    x_eval = np.concatenate([again[unused], x_val])
    y_eval = np.concatenate([full.y_train[unused], full.y_val])
    if not np.allclose(x_val, data.x_val, atol=1e-4):
        raise RuntimeError("the validation split differs between the two loads")
    _RANKING_DATA[limit] = (data, x_eval, y_eval)
    return _RANKING_DATA[limit]


def _scores(net: torch.nn.Module, side: int, x_eval: np.ndarray, y_eval: np.ndarray,
            n_val: int) -> dict[str, float]:
    """A trained subnet's figures: accuracy on the 359 validation images (`val_acc`, the old
    score), and accuracy and cross entropy on the whole evaluation set (`eval_acc`,
    `eval_ce`)."""
    from workers.training import evaluate_model

    model = Resized(net, side)
    ce, acc = evaluate_model(model, x_eval, y_eval)
    _, val_acc = evaluate_model(model, x_eval[-n_val:], y_eval[-n_val:])
    return {"val_acc": val_acc, "eval_acc": acc, "eval_ce": ce}


def ranking_truth_task(task: dict[str, Any]) -> dict[str, Any]:
    """One stand-alone training (subnet, epochs, seed) and its figures."""
    return standalone_scores(get_space(task["space"], **SPACES[task["space"]]), task["arch"],
                             task)


def ranking_supernet_task(task: dict[str, Any]) -> dict[str, Any]:
    """One `oneshot` supernet (options, epochs, seed), each subnet scored by every scorer."""
    torch.set_num_threads(1)
    space = get_space(task["space"], **SPACES[task["space"]])
    data, x_eval, y_eval = heldout_examples(task["limit"])
    search = get_search("oneshot", space, seed=task["seed"],
                        dataset={"kind": "digits", "limit": task["limit"]},
                        epochs=task["epochs"], batch_size=64, population=2, generations=0,
                        top_k=1, latency="none", **task["options"])
    started = time.process_time()
    with tempfile.TemporaryDirectory(prefix="oneshot-ranking-") as folder:
        search.run(folder)
    train_cpu = time.process_time() - started
    out: dict[str, Any] = {"train_cpu_seconds": train_cpu, "scorers": {}}
    for label, attributes in task["scorers"].items():
        defaults = {"bn_samples": search.bn_samples, "finetune_steps": 0}
        for name, value in {**defaults, **attributes}.items():
            setattr(search, name, value)
        started = time.process_time()
        figures = [_scores(search.export_subnet(a), space.input_shape(a)[-1], x_eval, y_eval,
                           len(data.x_val)) for a in task["archs"]]
        out["scorers"][label] = {
            "cpu_seconds": time.process_time() - started,
            **{k: [f[k] for f in figures] for k in ("val_acc", "eval_acc", "eval_ce")}}
    return out


def _run_tasks(tasks: dict[str, tuple[Any, dict[str, Any]]], jobs: int,
               cache: Path | None) -> dict[str, Any]:
    """Run `tasks` (id -> (function, argument)), `jobs` processes at a time; with `cache`, the
    results already there are reused and each new one is added as it finishes (a long run
    on a loaded machine can be resumed)."""
    done: dict[str, Any] = json.loads(cache.read_text()) if cache and cache.exists() else {}
    todo = [(key, fn, arg) for key, (fn, arg) in tasks.items() if key not in done]
    print(f"  {len(tasks) - len(todo)} of {len(tasks)} tasks cached; running {len(todo)} "
          f"({jobs} processes)", flush=True)

    def keep(key: str, value: Any) -> None:
        done[key] = value
        if cache:  # atomically: a kill mid-write must not lose the finished tasks
            cache.with_suffix(".tmp").write_text(json.dumps(done))
            cache.with_suffix(".tmp").replace(cache)

    if jobs <= 1:
        for key, fn, arg in todo:
            keep(key, fn(arg))
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=40) as pool:
            pending = {key: pool.apply_async(fn, (arg,)) for key, fn, arg in todo}
            for i, (key, result) in enumerate(pending.items()):
                keep(key, result.get())
                if (i + 1) % 20 == 0:
                    print(f"  {i + 1}/{len(todo)} done", flush=True)
    return {key: done[key] for key in tasks}


def ranking_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The section's sizes (`--quick`: 4 subnets, tiny; otherwise 40 subnets)."""
    if args.quick:
        return {"subnets": 4, "limit": 200, "supernets": {"single 20ep": {
                    "options": {}, "epochs": 1, "seeds": [0]}},
                "scorers": {"bn256": {}, "ft25": {"finetune_steps": 5}},
                "truths": {"4ep": {"epochs": 1, "seeds": 2}}}
    supernets = RANKING_SUPERNETS
    truths = {"4ep": RANKING_TRUTHS["4ep"]}  # dev: the cheap one (CPU is scarce)
    if args.ranking == "test":  # the settings chosen on dev (see docs/benchmarks.md)
        supernets = {k: {**RANKING_SUPERNETS[k], "scorers": v}
                     for k, v in RANKING_TEST_SUPERNETS.items()}
        truths = {k: RANKING_TRUTHS[k] for k in RANKING_TEST_TRUTHS}
    if args.part == "truth":
        supernets = {}
    elif args.part == "supernets":
        truths = {}
    return {"subnets": 40, "limit": args.limit, "supernets": supernets,
            "scorers": RANKING_SCORERS, "truths": truths}


#: What `--ranking test` runs (fixed after the dev run, before any test figure was seen).
#: Chosen on dev (docs/benchmarks.md): the mean over supernet seeds 0-2 of the inherited
#: cross entropy on the 1,197 held-out images after a 50-step fine-tune (dev tau +0.469, FLOPs
#: +0.444); seed 0 with BN recalibration alone and the 359-image accuracy is the old score.
RANKING_TEST_SUPERNETS = {"single 20ep": ["bn256", "bn600", "ft50"]}
RANKING_CHOSEN = "single 20ep mean of 3 seeds / ft50 / eval_ce"


def bootstrap_gain(score: list[float], baseline: list[float], truth: list[float],
                   resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over the subnets of tau(score) - tau(baseline) against `truth`: mean,
    95% interval and the share of resamples where the score wins."""
    rng = np.random.default_rng(seed)
    a, b, t = (np.asarray(v, dtype=float) for v in (score, baseline, truth))
    gains = []
    for _ in range(resamples):
        i = rng.integers(0, len(t), len(t))
        gains.append(kendall_tau(a[i], t[i]) - kendall_tau(b[i], t[i]))
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"mean": float(np.mean(gains)), "low": float(low), "high": float(high),
            "share_positive": float(np.mean(np.asarray(gains) > 0))}
RANKING_TEST_TRUTHS = ["12ep", "4ep", "4ep x8"]  # x8: added after the test run (seeds 4-7)


def ranking_subnets(space: Any, stage: str, count: int) -> list[dict[str, Any]]:
    """The stage's subnets; `test` never reuses a `dev` subnet (nor the older sections')."""
    excluded: set[str] = set()
    if stage == "test":
        excluded = {space.key(a) for a in sample_subnets(space, count, RANKING_SAMPLES["dev"])}
        excluded |= {space.key(a) for a in sample_subnets(space, count, 1)}
    rng = np.random.default_rng(RANKING_SAMPLES[stage])
    archs: dict[str, dict[str, Any]] = {}
    while len(archs) < count:
        arch = space.sample(rng)
        if space.key(arch) not in excluded:
            archs.setdefault(space.key(arch), arch)
    return list(archs.values())


def _taus(score: list[float], truth: dict[str, Any]) -> dict[str, Any]:
    return {"kendall_tau": kendall_tau(score, truth["mean"]),
            "spearman": spearman(score, truth["mean"]),
            "kendall_tau_vs_halves": [kendall_tau(score, truth["first"]),
                                      kendall_tau(score, truth["second"])]}


def bench_ranking(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Ground truths (stand-alone, per epochs) and inherited scores (per supernet, scorer and
    metric) on the stage's 40 subnets, with every score's Kendall tau / Spearman against every
    ground truth, FLOPs' and params' beside."""
    settings = ranking_settings(args)
    stage = args.ranking or "dev"
    space_name = "mbconv"
    space = get_space(space_name, **SPACES[space_name])
    archs = ranking_subnets(space, stage, settings["subnets"])
    limit = settings["limit"]
    tasks: dict[str, tuple[Any, dict[str, Any]]] = {}
    for truth in settings["truths"].values():
        for arch in archs:
            for seed in range(truth["seeds"]):
                tasks[f"truth/{truth['epochs']}ep/{space.key(arch)}/{seed}"] = (
                    ranking_truth_task, {"space": space_name, "arch": arch,
                                         "epochs": truth["epochs"], "seed": seed,
                                         "limit": limit})
    for label, spec in settings["supernets"].items():
        for seed in spec["seeds"]:
            tasks[f"supernet/{label}/{seed}/{stage}/{len(archs)}"] = (ranking_supernet_task, {
                "space": space_name, "archs": archs, "options": spec["options"],
                "epochs": spec["epochs"], "seed": seed, "limit": limit,
                "scorers": {k: v for k, v in settings["scorers"].items()
                            if k in spec.get("scorers", settings["scorers"])}})
    started = time.perf_counter()
    done = _run_tasks(tasks, args.jobs, args.cache)
    metrics = ("val_acc", "eval_acc", "eval_ce")
    truths: dict[str, Any] = {}
    for label, truth in settings["truths"].items():
        per_metric = {}
        for metric in metrics:
            sign = -1.0 if metric == "eval_ce" else 1.0
            per_seed = [[sign * done[f"truth/{truth['epochs']}ep/{space.key(a)}/{s}"][metric]
                         for s in range(truth["seeds"])] for a in archs]
            per_metric[metric] = {**two_ground_truths(per_seed), "per_seed": per_seed}
        truths[label] = per_metric
    flops = [space.flops(a) for a in archs]
    params = [space.params(a) for a in archs]
    scores: dict[str, list[float]] = {}
    for label, spec in settings["supernets"].items():
        runs = [done[f"supernet/{label}/{seed}/{stage}/{len(archs)}"] for seed in spec["seeds"]]
        for scorer in spec.get("scorers", settings["scorers"]):
            for metric in metrics:
                sign = -1.0 if metric == "eval_ce" else 1.0
                per_run = [[sign * v for v in r["scorers"][scorer][metric]] for r in runs]
                scores[f"{label} seed0 / {scorer} / {metric}"] = per_run[0]
                if len(runs) > 1:
                    scores[f"{label} mean of {len(runs)} seeds / {scorer} / {metric}"] = [
                        statistics.fmean(v) for v in zip(*per_run, strict=True)]
    table: dict[str, dict[str, Any]] = {}
    for truth_label, per_metric in truths.items():
        for metric in metrics:  # the accuracies, and the cross entropy for comparison
            truth = per_metric[metric]
            key = f"{truth_label} / {metric}"
            table[key] = {
                "ground_truth_tau_first_vs_second": truth["tau_first_vs_second"],
                "seed_vs_seed_tau": seed_agreement(truth["per_seed"]),
                "flops": _taus(flops, truth), "params": _taus(params, truth),
                "scores": {label: _taus(score, truth) for label, score in scores.items()}}
            if RANKING_CHOSEN in scores and not args.quick:
                table[key]["chosen_minus_flops_bootstrap"] = bootstrap_gain(
                    scores[RANKING_CHOSEN], [float(f) for f in flops], truth["mean"])
    result = {"stage": stage, "settings": settings, "subnets": len(archs),
              "seconds": time.perf_counter() - started,
              "subnet_keys": [space.key(a) for a in archs], "flops": flops, "params": params,
              "truths": truths, "scores": scores, "table": table,
              "supernet_cpu_seconds": {k: v["train_cpu_seconds"] for k, v in done.items()
                                       if k.startswith("supernet/")},
              "standalone_cpu_seconds": sum(v["cpu_seconds"] for k, v in done.items()
                                            if k.startswith("truth/"))}
    print_ranking(result)
    return result


def print_ranking(result: dict[str, Any]) -> None:
    for key, row in result["table"].items():
        print(f"ground truth {key}: halves agree at tau "
              f"{row['ground_truth_tau_first_vs_second']:+.3f}; FLOPs tau "
              f"{row['flops']['kendall_tau']:+.3f}, params tau "
              f"{row['params']['kendall_tau']:+.3f}", flush=True)
        best = sorted(row["scores"].items(), key=lambda kv: -kv[1]["kendall_tau"])
        for label, taus in best:
            print(f"    {taus['kendall_tau']:+.3f}  rho {taus['spearman']:+.3f}  {label}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test (< 60 s)")
    parser.add_argument("--spaces", help=f"comma-separated, of: {', '.join(SPACES)}")
    parser.add_argument("--subnets", type=int, help="subnets ranked (default 40, quick 8)")
    parser.add_argument("--supernet-epochs", type=int, help="default 40, quick 3")
    parser.add_argument("--train-epochs", type=int, help="stand-alone epochs (default 6, quick 2)")
    parser.add_argument("--train-seeds", type=int, help="stand-alone seeds (default 3, quick 1)")
    parser.add_argument("--supernet-seeds", type=int, help="supernets per variant (default 2, "
                                                           "quick 1)")
    parser.add_argument("--limit", type=int, help="digits training examples (default 600, "
                                                  "quick 300; 1437 = all)")
    parser.add_argument("--bossnas", action="store_true",
                        help="only the BossNAS section (hytra space); writes oneshot_bossnas.json")
    parser.add_argument("--full", action="store_true",
                        help="BossNAS section at the issue's size (40 subnets; default 16)")
    parser.add_argument("--bossnas-epochs", type=int,
                        help="BossNAS section: epochs per block of the ranking search "
                             "(default 3; writes oneshot_bossnas_e<N>s<seed>.json otherwise)")
    parser.add_argument("--bossnas-seed", type=int,
                        help="BossNAS section: seed of the ranking search (default 0)")
    parser.add_argument("--mixture", action="store_true",
                        help="only the ElasticViT-sampler / mixture-of-supernets section "
                             "(12 subnets; --full: 40); writes oneshot_mixture.json")
    parser.add_argument("--ranking", choices=list(RANKING_SAMPLES),
                        help="only issue 19's ranking ablation on the dev or the test subnets; "
                             "writes oneshot_ranking_<stage>.json")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes for the ranking section (one torch thread each)")
    parser.add_argument("--part", choices=["truth", "supernets"],
                        help="ranking section: only the stand-alone trainings or only the "
                             "supernets (into --cache; a last run without it assembles all)")
    parser.add_argument("--cache", type=Path,
                        help="ranking section: JSON of finished tasks to reuse and extend")
    parser.add_argument("--out", type=Path, help="folder for the JSON (default bench/results; "
                                                 "quick: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    args.bossnas_subnets = args.subnets is not None
    args.subnets = args.subnets or (8 if quick else 40)
    args.supernet_epochs = args.supernet_epochs or (3 if quick else 40)
    args.train_epochs = args.train_epochs or (2 if quick else 6)
    args.train_seeds = args.train_seeds or (1 if quick else 3)
    args.supernet_seeds = args.supernet_seeds or (1 if quick else 2)
    args.limit = args.limit or (300 if quick else 600)
    names = args.spaces.split(",") if args.spaces else (["mbconv"] if quick else list(SPACES))
    if args.bossnas or args.mixture or args.ranking:
        names = []
    mixture_names = (args.spaces.split(",") if args.spaces else ["mbconv"]) \
        if args.mixture else (["mbconv"] if quick and not args.spaces and not args.ranking else [])
    unknown = [n for n in names if n not in SPACES]
    if unknown:
        raise SystemExit(f"unknown space {unknown[0]!r}; known: {', '.join(SPACES)}")
    out = args.out or (Path(tempfile.mkdtemp(prefix="nas-bench-")) if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oneshot-bench-") as work:
        results = {name: bench_space(name, args, Path(work)) for name in names}
        if args.bossnas or (quick and not args.spaces and not args.mixture
                            and not args.ranking):
            results["bossnas"] = bench_bossnas(args, Path(work))
        if args.ranking or (quick and not args.spaces and not args.mixture
                            and not args.bossnas):
            results["ranking"] = bench_ranking(args, Path(work))
        for name in mixture_names:
            results[f"mixture-{name}"] = bench_mixture_space(name, args, Path(work))
    record = {
        "benchmark": "oneshot ranking on digits (8x8; `limit` training examples, 360 val)",
        "protocol": "Kendall tau / Spearman between inherited-weight val accuracy (BN "
                    "recalibrated on 256 train examples) and stand-alone short-training val "
                    "accuracy (train_model, mean over seeds) on the same uniform subnet sample",
        "settings": {"subnets": args.subnets, "supernet_epochs": args.supernet_epochs,
                     "train_epochs": args.train_epochs, "train_seeds": args.train_seeds,
                     "supernet_seeds": args.supernet_seeds, "limit": args.limit,
                     "sandwich": 2, "max_flops_gap": 0.25, "batch_size": 64},
        "results": results, "seconds": time.perf_counter() - started,
        "python": platform.python_version(), "torch": torch.__version__,
        "machine": platform.machine(), "threads": 1,
    }
    path = out / (f"oneshot_ranking_{args.ranking}.json" if args.ranking else
                  (f"oneshot_bossnas_e{args.bossnas_epochs or 3}s{args.bossnas_seed or 0}.json"
                   if args.bossnas_epochs or args.bossnas_seed else "oneshot_bossnas.json")
                  if args.bossnas else
                  ("oneshot_mixture_full.json" if args.full else "oneshot_mixture.json")
                  if args.mixture else "oneshot.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\ntotal {record['seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
