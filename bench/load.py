"""A long job of cheap trials: driver memory (RSS) over the run, and throughput.

One job of `--trials` random-search trials on the `hybrid` space scored by the `analytic`
evaluator (params/FLOPs counted by the space, tens of microseconds), local executor, every
trial stored in a SQLite file. The driver runs as `nas drive` in a subprocess, as a user's
detached driver does; its RSS is sampled together with the number of completed trials, so
the curve is RSS against progress. The driver keeps the keys of the job's architectures
(de-duplication), so some growth per trial is by design; anything well above that is a leak.

    python bench/load.py                  # 100,000 trials (about 70 s on 2 cores)
    python bench/load.py --quick          # CI smoke test: 5,000 trials (~10 s)
    python bench/load.py --db postgresql://postgres@127.0.0.1/nasload --trials 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.load_probe import load_spec, run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke test: 5,000 trials")
    parser.add_argument("--trials", type=int, help="budget (default 100,000; quick 5,000)")
    parser.add_argument("--space", default="hybrid")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    trials = args.trials or (5_000 if args.quick else 100_000)
    spec = load_spec(trials, args.space, args.batch_size, args.parallelism)
    with tempfile.TemporaryDirectory(prefix="nas-bench-load-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'load.db'}"
        run = run_load(url, spec)
    if run.returncode != 0 or run.completed != trials:
        sys.exit(f"driver exited {run.returncode} with {run.completed} completed trials: "
                 f"{run.stderr[-2000:]}")
    print(f"{args.space}, analytic evaluator, random, batch {args.batch_size} x parallelism "
          f"{args.parallelism}: {run.report()}")
    step = max(1, len(run.samples) // 20)
    for t, done, rss in run.samples[::step] + run.samples[-1:]:
        print(f"  {t:7.1f} s {done:7d} trials  RSS {rss / 2**20:7.1f} MiB")


if __name__ == "__main__":
    main()
