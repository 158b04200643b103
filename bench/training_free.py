"""Training-free design (issue 18): DeepMAD's entropy and As-ViT's measures on NAS-Bench-201,
and the designed networks against random ones of the same budget, trained on digits.

The benchmark is a list of named sections (`SECTIONS`), each a separate function taking the
parsed arguments and returning a JSON-able dict; `main()` runs them in order (or those named
with `--sections`) and writes their results under their names. `--quick` (CI smoke) runs
every section on a small sample in about 30 s in total and writes nothing unless `--json` is
given; the full mode writes bench/results/training_free.json.

    python bench/training_free.py                 # every section, full size
    python bench/training_free.py --quick
    python bench/training_free.py --sections deepmad_nb201 --json /tmp/t.json

Sections:
- deepmad_nb201: Spearman of DeepMAD's entropy (MAE-NAS) with NB201 CIFAR-10 test accuracy.
- deepmad_vs_random: DeepMAD's design against random `mbconv` networks at the same FLOPs
  budget, both trained with the `train` evaluator on digits over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
SHARED = ROOT.parent / "shared" / "data"


# ---- DeepMAD (helper H5) -------------------------------------------------------------------
def deepmad_nb201(args: argparse.Namespace) -> dict:
    """Spearman of DeepMAD's entropy with NB201 test accuracy (filled in below)."""
    return {"status": "not yet implemented"}


def deepmad_vs_random(args: argparse.Namespace) -> dict:
    """DeepMAD's design against random search at the same FLOPs budget (filled in below)."""
    return {"status": "not yet implemented"}


# ---- As-ViT (helper H6) ----------------------------------------------------------------------


# ---- driver ---------------------------------------------------------------------------------
#: Named sections in the order they run; each takes the parsed arguments, returns a dict.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "deepmad_nb201": deepmad_nb201,
    "deepmad_vs_random": deepmad_vs_random,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: small samples, ~30 s in total, writes nothing")
    parser.add_argument("--sections", nargs="*", default=None, choices=list(SECTIONS),
                        help="run only these sections (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="results file (default: "
                        "bench/results/training_free.json; --quick: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names = args.sections or list(SECTIONS)
    result: dict = {"quick": args.quick, "cpu_count": os.cpu_count(), "sections": {}}
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        section = SECTIONS[name](args)
        section["wall_s"] = round(time.perf_counter() - start, 2)
        result["sections"][name] = section
        print(f"   ({section['wall_s']:.1f} s)", flush=True)
    result["load_average_1m"] = os.getloadavg()[0]
    out = args.json or (None if args.quick else str(RESULTS / "training_free.json"))
    if out:
        path = Path(out)
        if path.is_file() and args.sections:
            # Running some sections keeps the other sections' earlier results.
            old = json.loads(path.read_text()).get("sections", {})
            result["sections"] = {**old, **result["sections"]}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
