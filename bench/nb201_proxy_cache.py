"""Training-free proxy scores of all 15,625 NAS-Bench-201 cells, computed once into a file
cache under bench/.cache (gitignored) for bench/search_quality.py, whose per-seed jobs load
them into their database before the run, so the `auto` strategy's pool preparation finds
every score stored (as a second job in the same database would) instead of recomputing it.

    python bench/nb201_proxy_cache.py --part 0/2 &   # two processes, one per core
    python bench/nb201_proxy_cache.py --part 1/2 &

Each part appends one JSON line per cell (`{"key": ..., "values": {proxy: value}}`) and skips
the cells it already has, so an interrupted run resumes. The scores are those of the `proxy`
evaluator (`workers.evaluators.proxy.ProxyEvaluator.compute`) with the settings in
`SETTINGS`, on the scoring network `SPACE_ARGS`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / "bench" / ".cache" / "nb201-proxies"
#: The scoring network (one cell per stage: ~3x cheaper, ranks as well) and the proxies.
SPACE_ARGS = {"cells_per_stage": 1}
SETTINGS = {"proxies": ["meco", "synflow"],
            "dataset": "npz:../shared/data/cifar10-test-first20.npz"}


def folder(space_args: dict | None = None, proxies: list[str] | None = None) -> Path:
    """The cache folder of one scoring network and data (names the settings)."""
    args = SPACE_ARGS if space_args is None else space_args
    tag = "-".join(f"{k}{v}" for k, v in sorted(args.items())) or "default"
    return CACHE / tag


def load(space_args: dict | None = None) -> dict[str, dict[str, float]]:
    """key -> proxy -> value from every part file (empty when nothing was computed)."""
    found: dict[str, dict[str, float]] = {}
    for path in sorted(folder(space_args).glob("part-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption
                continue
            found.setdefault(row["key"], {}).update(row["values"])
    return found


def _cells(part: int, parts: int) -> Iterator[tuple[str, object]]:
    from search_spaces import get_space

    space = get_space("nb201", **SPACE_ARGS)
    for i, arch in enumerate(space.enumerate()):
        if i % parts == part:
            yield space.key(arch), arch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="0/1", help="i/n: this process's share of cells")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke test: 6 cells into a temporary folder, read back")
    parser.add_argument("--reverse", action="store_true",
                        help="walk the share from its end (a second process on a share that "
                             "one is scoring from its start; stops where they meet)")
    args = parser.parse_args()
    if args.quick:
        quick()
        return
    part, parts = (int(x) for x in args.part.split("/"))
    import torch

    from search_spaces import get_space
    from workers.evaluators.proxy import ProxyEvaluator

    torch.set_num_threads(1)
    space = get_space("nb201", **SPACE_ARGS)
    evaluator = ProxyEvaluator(space, **SETTINGS)
    out = folder()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"part-{part}-of-{parts}{'-reverse' if args.reverse else ''}.jsonl"
    done = set(load())
    names = [p for p in SETTINGS["proxies"]]
    start, count = time.perf_counter(), 0
    with path.open("a") as fh:
        cells = list(_cells(part, parts))
        for key, arch in reversed(cells) if args.reverse else cells:
            if args.reverse and count % 20 == 0:
                done = set(load())
            if key in done:
                if args.reverse:
                    break  # met the forward walk
                continue
            try:
                values = evaluator.compute(arch, names)
            except Exception as exc:  # noqa: BLE001 - a failed cell is left out, said once
                print(f"{key}: {exc}", file=sys.stderr)
                continue
            fh.write(json.dumps({"key": key, "values": values}) + "\n")
            fh.flush()
            count += 1
            if count % 500 == 0:
                rate = count / (time.perf_counter() - start)
                print(f"{count} cells, {rate:.1f}/s", flush=True)
    print(f"done: {count} new cells in {time.perf_counter() - start:.0f} s")


def quick(cells: int = 6) -> None:
    """Score the first `cells` cells as the full run does, into a temporary folder, and check
    that every proxy of `SETTINGS` has a finite value for each (the cache is never touched)."""
    import math
    import tempfile

    import torch

    from search_spaces import get_space
    from workers.evaluators.proxy import ProxyEvaluator

    torch.set_num_threads(1)
    evaluator = ProxyEvaluator(get_space("nb201", **SPACE_ARGS), **SETTINGS)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part-0-of-1.jsonl"
        with path.open("w") as fh:
            for key, arch in itertools.islice(_cells(0, 1), cells):
                values = evaluator.compute(arch, list(SETTINGS["proxies"]))
                fh.write(json.dumps({"key": key, "values": values}) + "\n")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == cells, rows
    for row in rows:
        assert set(row["values"]) == set(SETTINGS["proxies"]), row
        assert all(math.isfinite(v) for v in row["values"].values()), row
    seconds = time.perf_counter() - start
    print(f"quick: {cells} cells scored by {', '.join(SETTINGS['proxies'])} in {seconds:.1f} s "
          f"({1000 * seconds / cells:.0f} ms/cell, model builds and the data load included)")


if __name__ == "__main__":
    main()
