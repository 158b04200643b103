"""Charts of a job from `nas.insights` data: a plotly Figure per kind (HTML, the report, the
dashboard) and a matplotlib PNG of the same data (plotly's own PNG export needs kaleido and
a browser). Plotly's JavaScript comes from the plotly package, never from a CDN.

Kinds: `history` (best so far against trials and against time, every trial as a point),
`pareto` (every trial, the front, the latency budget as a line and what it leaves),
`importance` (which decisions matter), `parallel` (parallel coordinates over the decisions,
coloured by the objective)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("history", "pareto", "importance", "parallel")
#: No plotly logo link, no cloud editing button: the HTML references nothing outside itself.
CONFIG = {"displaylogo": False, "responsive": True}
FRONT_COLOR, BUDGET_COLOR, BEST_COLOR, TRIAL_COLOR = "#d62728", "#1f77b4", "#2ca02c", "#9a9a9a"


def _metric(data: dict[str, Any]) -> str:
    objective = data["objective"]
    return f"{objective['metric']} ({objective['mode']})"


def _below(values: Any) -> float:
    """A level a little under every value: where failed and pruned trials are marked."""
    values = list(values)
    if not values:
        return 0.0
    low, high = min(values), max(values)
    return low - 0.04 * ((high - low) or abs(low) or 1.0)


def _budget_set(data: dict[str, Any]) -> set[int]:
    return {r["trial"] for r in data["best"]}


# ---- plotly ----------------------------------------------------------------------------------
def history_figure(data: dict[str, Any]) -> Any:
    """Two panels sharing the objective axis: against the trial number and against the time
    since the first trial started; completed trials as points, the best so far as a step
    line, failed and pruned trials as crosses along the bottom."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("against trials", "against time"))
    done = [t for t in data["trials"] if t["value"] is not None]
    lost = [t for t in data["trials"] if t["status"] in ("failed", "pruned")]
    floor = _below(t["value"] for t in done)
    for col, x in ((1, "number"), (2, "elapsed_s")):
        first = col == 1
        fig.add_trace(go.Scatter(
            x=[t[x] for t in done], y=[t["value"] for t in done], mode="markers",
            name=f"completed ({len(done)})", legendgroup="done", showlegend=first,
            marker={"size": 5, "color": TRIAL_COLOR}, customdata=[t["number"] for t in done],
            hovertemplate="trial %{customdata}: %{y}<extra></extra>"), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[t[x] for t in data["trials"] if t["best_so_far"] is not None],
            y=[t["best_so_far"] for t in data["trials"] if t["best_so_far"] is not None],
            mode="lines", line={"shape": "hv", "color": FRONT_COLOR, "width": 2},
            name="best so far", legendgroup="best", showlegend=first), row=1, col=col)
        if lost:
            fig.add_trace(go.Scatter(
                x=[t[x] for t in lost], y=[floor] * len(lost), mode="markers",
                marker={"symbol": "x", "size": 7, "color": "black"},
                name=f"failed or pruned ({len(lost)})", legendgroup="lost", showlegend=first,
                text=[t["status"] for t in lost],
                hovertemplate="trial %{x}: %{text}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(title_text="trial", row=1, col=1)
    fig.update_xaxes(title_text="seconds since the first trial started", row=1, col=2)
    fig.update_yaxes(title_text=_metric(data), row=1, col=1)
    fig.update_layout(title=f"job {data['job']}: search history", template="plotly_white")
    return fig


def pareto_figure(data: dict[str, Any]) -> Any:
    """Every trial with a latency, the Pareto front as a step line, the latency budget as a
    dashed vertical line and the trials `nas best` returns under it as stars."""
    import plotly.graph_objects as go

    points = data["points"]
    by_number = {p["number"]: p for p in points}
    front = [by_number[n] for n in data["front"]]
    chosen = [by_number[n] for n in sorted(_budget_set(data)) if n in by_number]
    fig = go.Figure()
    for rows, name, style in (
            (points, f"trials ({len(points)})", {"mode": "markers",
                                                 "marker": {"size": 5, "color": TRIAL_COLOR}}),
            (front, f"Pareto front ({len(front)})",
             {"mode": "lines+markers", "line": {"shape": "hv", "color": FRONT_COLOR},
              "marker": {"size": 7, "color": FRONT_COLOR}}),
            (chosen, _best_label(data, len(chosen)),
             {"mode": "markers", "marker": {"symbol": "star", "size": 12, "color": BEST_COLOR,
                                            "line": {"width": 1, "color": "black"}}})):
        fig.add_trace(go.Scatter(
            x=[p["latency_ms"] for p in rows], y=[p["value"] for p in rows], name=name,
            customdata=[p["number"] for p in rows],
            hovertemplate="trial %{customdata}: %{x:.3f} ms, %{y}<extra></extra>", **style))
    if data["max_latency_ms"] is not None:
        fig.add_vline(x=data["max_latency_ms"], line={"dash": "dash", "color": BUDGET_COLOR},
                      annotation_text=f"budget {data['max_latency_ms']:g} ms")
    fig.update_layout(title=f"job {data['job']}: Pareto front on {data['device']}",
                      xaxis_title=f"latency on {data['device']} (ms)",
                      yaxis_title=_metric(data), template="plotly_white")
    return fig


def _best_label(data: dict[str, Any], count: int) -> str:
    """What `nas best` lists; without a budget it also ranks trials with no latency, which
    have no point here."""
    budget = data["max_latency_ms"]
    label = f"nas best, top {len(data['best'])}"
    if budget is not None:
        label += f" under {budget:g} ms"
    return label if count == len(data["best"]) else f"{label} ({count} with a latency)"


def importance_figure(data: dict[str, Any]) -> Any:
    """A horizontal bar per decision, the most important on top."""
    import plotly.graph_objects as go

    rows = list(reversed(data["decisions"]))
    fig = go.Figure(go.Bar(x=[d["importance"] for d in rows], y=[d["name"] for d in rows],
                           orientation="h", marker={"color": BUDGET_COLOR},
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=f"job {data['job']}: which decisions matter for "
                            f"{data['objective']['metric']} ({data['trials']} trials)",
                      xaxis_title="share of the GBDT's split gain", template="plotly_white",
                      height=max(300, 60 + 24 * len(rows)))
    return fig


def parallel_figure(data: dict[str, Any]) -> Any:
    """One axis per decision (its candidates as ticks) and one for the objective; one line
    per completed trial, coloured by the objective."""
    import plotly.graph_objects as go

    rows = data["trials"]
    dimensions = [_dimension(d, [r["values"][i] for r in rows])
                  for i, d in enumerate(data["decisions"])]
    values = [r["value"] for r in rows]
    dimensions.append({"label": data["objective"]["metric"], "values": values})
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line={"color": values, "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": data["objective"]["metric"]}}}))
    fig.update_layout(title=f"job {data['job']}: decisions of {len(rows)} completed trials",
                      template="plotly_white")
    return fig


def _dimension(decision: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    if decision["kind"] == "float":
        return {"label": decision["name"], "values": values}
    labels = decision["candidates"]
    index = {label: i for i, label in enumerate(labels)}
    return {"label": decision["name"], "values": [index[v] for v in values],
            "tickvals": list(range(len(labels))), "ticktext": [str(x) for x in labels],
            "range": [0, max(len(labels) - 1, 1)]}


FIGURES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "history": history_figure, "pareto": pareto_figure, "importance": importance_figure,
    "parallel": parallel_figure}


def figure_div(fig: Any, titled: bool = True) -> str:
    """The figure as an HTML fragment for a page that loads plotly.js once itself; without
    `titled`, for a page whose own heading names the chart."""
    if not titled:
        fig.update_layout(title=None, margin={"t": 30})
    return fig.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)


def plotly_js() -> str:
    """plotly.js as shipped inside the plotly package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_html(fig: Any, path: Path) -> None:
    fig.write_html(str(path), include_plotlyjs=True, full_html=True, config=CONFIG)


# ---- matplotlib (PNG) --------------------------------------------------------------------------
def _history_png(data: dict[str, Any], fig: Any) -> None:
    done = [t for t in data["trials"] if t["value"] is not None]
    best = [t for t in data["trials"] if t["best_so_far"] is not None]
    lost = [t for t in data["trials"] if t["status"] in ("failed", "pruned")]
    floor = _below(t["value"] for t in done)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, label in zip(axes, ("number", "elapsed_s"),
                            ("trial", "seconds since the first trial started"), strict=True):
        ax.scatter([t[x] for t in done], [t["value"] for t in done], s=8, color=TRIAL_COLOR,
                   label=f"completed ({len(done)})")
        ax.step([t[x] for t in best], [t["best_so_far"] for t in best], where="post",
                color=FRONT_COLOR, label="best so far")
        if lost:
            ax.scatter([t[x] for t in lost], [floor] * len(lost), marker="x", color="black",
                       s=16, label=f"failed or pruned ({len(lost)})")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_metric(data))
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"job {data['job']}: search history")


def _pareto_png(data: dict[str, Any], fig: Any) -> None:
    ax = fig.subplots()
    points = data["points"]
    by_number = {p["number"]: p for p in points}
    front = [by_number[n] for n in data["front"]]
    chosen = [by_number[n] for n in sorted(_budget_set(data)) if n in by_number]
    ax.scatter([p["latency_ms"] for p in points], [p["value"] for p in points], s=8,
               color=TRIAL_COLOR, label=f"trials ({len(points)})")
    ax.step([p["latency_ms"] for p in front], [p["value"] for p in front], where="post",
            color=FRONT_COLOR, marker="o", ms=4, label=f"Pareto front ({len(front)})")
    ax.scatter([p["latency_ms"] for p in chosen], [p["value"] for p in chosen], marker="*",
               s=90, color=BEST_COLOR, edgecolors="black", linewidths=0.5, zorder=3,
               label=_best_label(data, len(chosen)))
    if data["max_latency_ms"] is not None:
        ax.axvline(data["max_latency_ms"], color=BUDGET_COLOR, linestyle="--",
                   label=f"budget {data['max_latency_ms']:g} ms")
    ax.set_xlabel(f"latency on {data['device']} (ms)")
    ax.set_ylabel(_metric(data))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"job {data['job']}: Pareto front on {data['device']}")


def _importance_png(data: dict[str, Any], fig: Any) -> None:
    ax = fig.subplots()
    rows = list(reversed(data["decisions"]))
    ax.barh([d["name"] for d in rows], [d["importance"] for d in rows], color=BUDGET_COLOR)
    ax.set_xlabel("share of the GBDT's split gain")
    ax.set_title(f"job {data['job']}: which decisions matter for "
                 f"{data['objective']['metric']} ({data['trials']} trials)")
    ax.grid(alpha=0.3, axis="x")


def _parallel_png(data: dict[str, Any], fig: Any) -> None:
    """Each axis scaled to [0, 1] (a choice: its candidate's index over the last index)."""
    import matplotlib as mpl

    ax = fig.subplots()
    rows = data["trials"]
    columns = [_unit_column(d, [r["values"][i] for r in rows])
               for i, d in enumerate(data["decisions"])]
    values = [r["value"] for r in rows]
    low, high = min(values, default=0.0), max(values, default=1.0)
    columns.append([(v - low) / (high - low) if high > low else 0.5 for v in values])
    norm = mpl.colors.Normalize(vmin=low, vmax=high)
    cmap = mpl.colormaps["viridis"]
    order = sorted(range(len(rows)), key=lambda j: values[j])  # the best drawn last, on top
    for j in order:
        ax.plot(range(len(columns)), [c[j] for c in columns], color=cmap(norm(values[j])),
                alpha=0.6, lw=1)
    names = [d["name"] for d in data["decisions"]] + [data["objective"]["metric"]]
    ax.set_xticks(range(len(columns)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks([])
    for x in range(len(columns)):
        ax.axvline(x, color="black", lw=0.5)
    for x, decision in enumerate(data["decisions"]):  # each candidate named on its axis
        labels = decision["candidates"] or []
        for i, label in enumerate(labels):
            ax.text(x + 0.03, i / max(len(labels) - 1, 1), str(label), fontsize=7,
                    va="center", bbox={"facecolor": "white", "alpha": 0.7, "pad": 1,
                                       "edgecolor": "none"})
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                 label=data["objective"]["metric"])
    ax.set_title(f"job {data['job']}: decisions of {len(rows)} completed trials")


def _unit_column(decision: dict[str, Any], values: list[Any]) -> list[float]:
    if decision["kind"] == "float":
        low, high = min(values, default=0.0), max(values, default=1.0)
        return [(v - low) / (high - low) if high > low else 0.5 for v in values]
    index = {label: i for i, label in enumerate(decision["candidates"])}
    last = max(len(index) - 1, 1)
    return [index[v] / last for v in values]


PNG_DRAWERS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "history": _history_png, "pareto": _pareto_png, "importance": _importance_png,
    "parallel": _parallel_png}
PNG_SIZES = {"history": (10, 4.2), "pareto": (6.4, 4.2), "importance": (6.4, 4.2),
             "parallel": (10, 4.8)}


def write_png(kind: str, data: dict[str, Any], path: Path) -> None:
    """Draw `kind` with matplotlib (Agg) to `path` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=PNG_SIZES[kind], dpi=120, layout="constrained")
    PNG_DRAWERS[kind](data, fig)
    fig.savefig(path, format="png")


# ---- `nas plot` --------------------------------------------------------------------------------
FORMATS = (".png", ".html")


def check_plot_target(kind: str, path: Path) -> None:
    """Refuse a bad kind, extension or folder before anything is read or written."""
    from .errors import NasError

    if kind not in KINDS:
        raise NasError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if path.suffix.lower() not in FORMATS:
        raise NasError(f"-o: expected a .png or .html file name, got {str(path)!r}")
    if not path.parent.resolve().is_dir():
        raise NasError(f"-o: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise NasError(f"-o: {str(path)!r} is a folder")


def chart_data(storage: Any, job_id: int, kind: str, device: str | None = None,
               max_latency_ms: float | None = None) -> dict[str, Any]:
    """The `nas.insights` data a chart of `kind` draws."""
    from . import insights
    from .errors import NasError

    if kind != "pareto" and (device is not None or max_latency_ms is not None):
        raise NasError(f"--device and --max-latency-ms apply to --kind pareto, not {kind}")
    if kind == "pareto":
        return insights.pareto_points(storage, job_id, device, max_latency_ms)
    data = {"history": insights.history, "importance": insights.importance,
            "parallel": insights.parallel}[kind](storage, job_id)
    if not data.get("trials"):  # an empty chart says less than this line
        state = "finished" if kind == "history" else "completed"
        raise NasError(f"job {job_id} has no {state} trial to draw yet")
    return data


def plot(storage: Any, job_id: int, kind: str, path: Path, device: str | None = None,
         max_latency_ms: float | None = None, option: str = "-o") -> dict[str, Any]:
    """Write a chart of a job to `path` (.png with matplotlib, .html with plotly, whole or
    not at all); returns the data drawn."""
    from .export import write_atomically

    check_plot_target(kind, path)
    data = chart_data(storage, job_id, kind, device, max_latency_ms)
    if path.suffix.lower() == ".png":
        write_atomically(path, lambda tmp: write_png(kind, data, tmp), option=option)
    else:
        fig = FIGURES[kind](data)
        write_atomically(path, lambda tmp: write_html(fig, tmp), option=option)
    return data
