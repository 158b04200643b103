"""Device values of architectures made outside a job's trials: imported from a file,
predicted by a fitted latency predictor, or measured on demand (`nas measure`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from ._area import CHUNK, Area, NewTrial, utcnow
from ._device_values import refresh_device_values
from ._retry import retried
from .schema import SOURCE_RANK, measurements


@dataclass(frozen=True)
class MeasurementRow:
    """A device value of one architecture, from outside a job's trials."""

    key: str
    arch: dict[str, Any]
    device: str
    metric: str
    value: float
    source: str  # measured | imported | benchmark | predicted
    model_version: str | None = None


class Measurements(Area):
    """`storage.measurements`: device values stored by architecture."""

    @retried()
    def put(self, space: str, rows: Sequence[MeasurementRow]) -> dict[str, int]:
        """Store device values of architectures (created if new) in one transaction.

        A row replaces the stored value of the same (architecture, device, metric, source):
        re-importing a file is idempotent and a refitted predictor's values replace the old
        ones. Returns counts of new, updated and unchanged rows.
        """
        counts = {"new": 0, "updated": 0, "unchanged": 0}
        if not rows:
            return counts
        now = utcnow()
        with self.engine.begin() as conn:
            ids = self.architecture_ids(conn, space, [NewTrial(0, r.key, r.arch)
                                                       for r in rows])
            existing = self._existing_values(conn, ids, rows)
            inserts, updates = [], []
            for r in rows:
                aid = ids[r.key]
                before = existing.get((aid, r.device, r.metric, r.source))
                values = {"architecture_id": aid, "device": r.device, "metric": r.metric,
                          "value": float(r.value), "source": r.source,
                          "source_rank": SOURCE_RANK[r.source], "created_at": now,
                          "model_version": r.model_version}
                if before is None:
                    inserts.append(values)
                elif before != (float(r.value), r.model_version):
                    updates.append(values)
                else:
                    counts["unchanged"] += 1
            if inserts:
                conn.execute(insert(measurements), inserts)
            if updates:
                conn.execute(update(measurements).where(
                    measurements.c.architecture_id == bindparam("aid"),
                    measurements.c.device == bindparam("dev"),
                    measurements.c.metric == bindparam("met"),
                    measurements.c.source == bindparam("src"),
                ).values(value=bindparam("val"), model_version=bindparam("ver"),
                         created_at=bindparam("at")),
                    [{"aid": u["architecture_id"], "dev": u["device"], "met": u["metric"],
                      "src": u["source"], "val": u["value"], "ver": u["model_version"],
                      "at": now} for u in updates])
            counts["new"], counts["updated"] = len(inserts), len(updates)
            changed = {row["architecture_id"] for row in inserts + updates}
            if changed:
                refresh_device_values(conn, architecture_ids=changed)
        return counts

    @staticmethod
    def _existing_values(conn, ids: dict[str, int], rows: Sequence[MeasurementRow]  # noqa: ANN001
                         ) -> dict[tuple[int, str, str, str], tuple[float, str | None]]:
        wanted = sorted({ids[r.key] for r in rows})
        pairs = {(r.device, r.metric) for r in rows}
        found: dict[tuple[int, str, str, str], tuple[float, str | None]] = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            query = select(measurements.c.architecture_id, measurements.c.device,
                           measurements.c.metric, measurements.c.source, measurements.c.value,
                           measurements.c.model_version).where(
                measurements.c.architecture_id.in_(chunk))
            for aid, device, metric, source, value, version in conn.execute(query):
                if (device, metric) in pairs:
                    found[(aid, device, metric, source)] = (float(value), version)
        return found
