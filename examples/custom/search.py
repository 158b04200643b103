"""The same search as job.yaml, from Python: run from this folder, `python search.py`.

`nas.search` stores the space and the evaluate function as `model:space` and
`model:evaluate` (where they are defined), runs the job here to the end of its budget, and
returns a handle to query it; `nas.load(job_id, db=...)` reopens it later.
"""

from __future__ import annotations

import argparse

from model import evaluate, space

import nas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///nas.db")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--executor", default="ray", choices=["ray", "local"])
    parser.add_argument("--output", default="best.onnx")
    args = parser.parse_args()

    job = nas.search(
        space=space, evaluate=evaluate, strategy="gbdt", budget=args.trials,
        objectives=[{"metric": "val_acc", "mode": "max"}], db=args.db,
        space_args={"input_shape": [1, 8, 8]},
        evaluator_args={"epochs": args.epochs, "lr": 0.01, "device": "cpu"},
        early_stopping={"rule": "median", "metric": "val_acc", "mode": "max", "min_trials": 4},
        strategy_args={"init": 8, "batch": 4}, executor=args.executor, parallelism=2)
    status = job.status()
    print(f"{job}: {status['status']}, trials {status['trials']}")
    for rank, trial in enumerate(job.best(top=5), 1):
        print(f"{rank}. trial {trial['trial']:>3}  val_acc {trial['objectives']['val_acc']:.2f}"
              f"  params {trial['metrics']['params']:,.0f}  {trial['arch']}")
    summary = job.export(args.output, format="onnx")
    print(f"exported trial {summary['trial']} to {summary['path']}")


if __name__ == "__main__":
    main()
