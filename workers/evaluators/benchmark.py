"""`benchmark` evaluator: look an architecture up in a tabular benchmark."""

from __future__ import annotations

import time
from typing import Any

from search_spaces import Arch, SearchSpace
from search_spaces.validation import ArgumentError

from ..files import with_checksums
from ..latency import device_key, measure_latency_ms
from ..tables import BUILTIN_TABLES, Table, load_table, resolve_table
from ._base import (
    Evaluation,
    EvaluationError,
    Evaluator,
    Measurement,
    cost_metric_names,
    exact_costs,
    register_evaluator,
)

DEFAULT_TABLES = {"nb201": "nb201-cifar10"}
_DEVICE_SUFFIXES = {"_latency_ms": "latency_ms", "_energy_mj": "energy_mj"}


def _split_device_column(column: str) -> tuple[str, str] | None:
    for suffix, metric in _DEVICE_SUFFIXES.items():
        if column.endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)], metric
    return None


@register_evaluator
class BenchmarkEvaluator(Evaluator):
    """Metrics from the numeric columns of a table with an `arch` column.

    `latency_table` adds device measurements (`<device>_latency_ms`, `<device>_energy_mj`
    columns, source `benchmark`); `measure_latency` times the built model on this worker's
    CPU (source `measured`). `delay_s` simulates the cost of a real evaluation (demos,
    fault-injection tests).
    """

    description = ("look-up in a table with an `arch` column (e.g. NAS-Bench-201), device "
                   "latencies from a latency table")

    name = "benchmark"
    cheap = True

    def __init__(
        self,
        space: SearchSpace,
        table: str | None = None,
        latency_table: str | None = None,
        measure_latency: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(space)
        table = table or DEFAULT_TABLES.get(space.name)
        if table is None:
            raise ArgumentError("table", f"is required for space {space.name!r}")
        if not isinstance(delay_s, int | float) or delay_s < 0:
            raise ArgumentError("delay_s", f"must be a number >= 0, got {delay_s!r}")
        self.table = _table("table", table)
        self.latency = _table("latency_table", latency_table) if latency_table else None
        self.measure_latency = bool(measure_latency)
        self.delay_s = float(delay_s)

    @classmethod
    def canonical_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """Table paths absolute (built-in names stay names), with their checksums."""
        out, files = dict(args), []
        for name in ("table", "latency_table"):
            value = out.get(name)
            if isinstance(value, str) and value not in BUILTIN_TABLES:
                try:
                    out[name] = resolve_table(value)
                except ValueError as exc:
                    raise ArgumentError(name, str(exc)) from None
                files.append(out[name])
        return with_checksums(out, files, "evaluator_args")

    def metric_names(self) -> set[str]:
        return set(self.table.columns) | cost_metric_names(self.space)

    def devices(self) -> set[str]:
        found = set()
        if self.latency is not None:
            found |= {d for c in self.latency.columns if (d := _split_device_column(c))}
        if self.measure_latency:
            found.add((device_key(), "latency_ms"))
        return {device for device, _ in found}

    def known_values(self, device: str, metric: str) -> dict[str, float] | None:
        if self.latency is None:
            return None
        suffix = next((s for s, m in _DEVICE_SUFFIXES.items() if m == metric), None)
        if suffix is None or f"{device}{suffix}" not in self.latency.columns:
            return None
        column = f"{device}{suffix}"
        return {key: row[column] for key, row in self.latency.rows.items() if column in row}

    def evaluate(self, arch: Arch, key: str) -> Evaluation:
        if self.delay_s:
            time.sleep(self.delay_s)
        row = self.table.rows.get(key)
        if row is None:
            raise EvaluationError(f"architecture {key} is not in table {self.table.source}")
        costs = exact_costs(self.space, arch)
        metrics = {**row, **costs.metrics}
        return Evaluation(metrics, self._measurements(arch, key), costs.params, costs.flops)

    def _measurements(self, arch: Arch, key: str) -> list[Measurement]:
        found = []
        if self.latency is not None:
            for column, value in self.latency.rows.get(key, {}).items():
                split = _split_device_column(column)
                if split:
                    found.append(Measurement(split[0], split[1], value, "benchmark"))
        if self.measure_latency:
            timing = measure_latency_ms(self.space.build(arch), self.space.input_shape(arch))
            found.append(Measurement(device_key(), "latency_ms", timing["median_ms"], "measured"))
        return found


def _table(field: str, value: Any) -> Table:
    """The table a `table` / `latency_table` argument names; `ArgumentError` naming the field
    when it is no name or path, or names no readable table."""
    if not isinstance(value, str):
        raise ArgumentError(field, f"must be a built-in table name or a CSV path, got {value!r}")
    try:
        return load_table(value)
    except ValueError as exc:
        raise ArgumentError(field, str(exc)) from None
