"""Tabular benchmarks: CSV tables keyed by architecture, loaded once per process."""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUILTIN_TABLES = {
    "nb201-cifar10": "nb201-cifar10.csv.gz",
    "hw-nas-bench-cifar10": "hw-nas-bench-cifar10.csv.gz",
}
_ID_COLUMNS = {"index", "arch"}
_CACHE: dict[tuple[str, str], Table] = {}


@dataclass(frozen=True)
class Table:
    """Numeric columns of a benchmark table, by architecture key."""

    source: str
    columns: tuple[str, ...]
    rows: dict[str, dict[str, float]]

    def __len__(self) -> int:
        return len(self.rows)


def resolve_table(name_or_path: str) -> str:
    """A built-in table name or an existing file path; ValueError otherwise."""
    if name_or_path in BUILTIN_TABLES:
        return name_or_path
    if not Path(name_or_path).is_file():
        builtin = ", ".join(BUILTIN_TABLES)
        raise ValueError(f"table {name_or_path!r} is neither a file nor a built-in ({builtin})")
    return str(Path(name_or_path).resolve())


def _open_text(source: str) -> io.TextIOBase:
    if source in BUILTIN_TABLES:
        data = resources.files("workers").joinpath("data", BUILTIN_TABLES[source]).read_bytes()
        return io.StringIO(gzip.decompress(data).decode())
    if source.endswith(".gz"):
        return gzip.open(source, "rt", newline="")
    return open(source, newline="")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def load_table(name_or_path: str, key_column: str = "arch") -> Table:
    """Read a CSV with an architecture column and numeric metric columns (cached)."""
    source = resolve_table(name_or_path)
    cached = _CACHE.get((source, key_column))
    if cached is not None:
        return cached
    with _open_text(source) as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if key_column not in header:
            raise ValueError(f"table {name_or_path!r} has no {key_column!r} column")
        metric_columns = [c for c in header if c not in _ID_COLUMNS and c != key_column]
        rows: dict[str, dict[str, float]] = {}
        for record in reader:
            values = {c: v for c in metric_columns if (v := _number(record[c])) is not None}
            rows[record[key_column]] = values
    numeric = tuple(c for c in metric_columns if any(c in r for r in rows.values()))
    table = Table(source=source, columns=numeric, rows=rows)
    _CACHE[(source, key_column)] = table
    return table
