"""`nas report`: one self-contained HTML file about a job (plotly.js and the CSS inlined,
nothing fetched when it is opened), to attach to a ticket or a paper. The page is
`templates/report.html.j2` filled from `nas.insights` data and `nas.charts` figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import charts, insights
from .errors import NasError
from .storage import Storage

TOP_TRIALS = 10


def check_report_target(path: Path) -> None:
    """Refuse a bad file name before the database is opened."""
    if path.suffix.lower() not in (".html", ".htm"):
        raise NasError(f"-o: expected an .html file name, got {str(path)!r}")
    if not path.parent.resolve().is_dir():
        raise NasError(f"-o: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise NasError(f"-o: {str(path)!r} is a folder")


def _budget(spec: dict[str, Any], device: str) -> float | None:
    """The job's own latency limit on `device` (a constraint's max), drawn on its front."""
    for c in spec.get("constraints", []):
        if c.get("device") == device and c.get("metric") == "latency_ms" and "max" in c:
            return float(c["max"])
    return None


def _optional_chart(kind: str, build: Any) -> dict[str, Any]:
    """A chart section: the figure, or why there is none (e.g. too few trials)."""
    try:
        data = build()
    except NasError as exc:
        return {"kind": kind, "html": None, "why": str(exc), "data": None}
    html = charts.figure_div(charts.FIGURES[kind](data), titled=False)
    return {"kind": kind, "html": html, "why": None, "data": data}


def _architecture_picture(best: dict[str, Any]) -> str:
    """The best architecture drawn by nas.pictures (a graph, stages or a decisions table)."""
    from .pictures import architecture_svg

    return architecture_svg(best["space"], best["arch"], best["space_args"])


def _best_architecture(storage: Storage, job_id: int) -> dict[str, Any] | None:
    best = insights.best_architecture(storage, job_id)
    if best is None:
        return None
    from search_spaces import get_space

    space = get_space(best["space"], **best["space_args"])
    dna = space.to_dna(best["arch"])
    described = insights.decisions(space)
    best["decisions"] = [
        {"name": d["name"], "value": v if d["kind"] == "float" else d["candidates"][int(v)]}
        for d, v in zip(described, dna, strict=True)]
    best["svg"] = _architecture_picture(best)
    return best


def context(storage: Storage, job_id: int) -> dict[str, Any]:
    """Everything the template shows."""
    job = insights.summary(storage, job_id, top=TOP_TRIALS)
    spec = job["spec"]
    fronts = []
    for device in job["devices"]:
        section = _optional_chart("pareto", lambda d=device: insights.pareto_points(
            storage, job_id, d, _budget(spec, d)))
        if section["data"] is not None:
            data = section["data"]
            by_number = {p["number"]: p for p in data["points"]}
            section["front"] = [by_number[n] for n in data["front"]]
        fronts.append({"device": device, **section})
    return {
        "job": job, "spec_json": json.dumps(spec, indent=2, sort_keys=False),
        "metrics": [o["metric"] for o in spec["objectives"]],
        "charts": [_optional_chart(kind, lambda k=kind: charts.chart_data(storage, job_id, k))
                   for kind in ("history", "importance", "parallel")],
        "fronts": fronts, "best": _best_architecture(storage, job_id),
        "importance_method": insights.IMPORTANCE_METHOD, "plotly_js": charts.plotly_js(),
    }


def render(storage: Storage, job_id: int) -> str:
    from datetime import datetime, timezone

    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("nas", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template("report.html.j2").render(**context(storage, job_id),
                                                     generated=generated)


def write_report(storage: Storage, job_id: int, path: Path) -> None:
    """Write the report of a job to `path`, whole or not at all."""
    from .export import write_atomically

    check_report_target(path)
    text = render(storage, job_id)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), option="-o")
