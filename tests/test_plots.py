"""`nas plot` (issue 16): every kind in both formats from a real NB201 job over the benchmark
table (with a quarter of the cells missing from it, so some trials fail), checked against
the database and against `nas best`; importance on a synthetic case where one decision alone
decides the score; bad input refused with one line and no file."""

from __future__ import annotations

import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from nas import api, insights, results
from nas.cli import app
from nas.storage import Storage
from search_spaces import get_space
from tests.conftest import nb201_spec, nb201_table_subset

runner = CliRunner()
TRIALS = 60
BUDGET_MS = 18.0


def nas(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, f"nas {' '.join(args)} -> {result.exit_code}\n" \
                                     f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result



def make_jobs(shared_data: Path, folder: Path) -> dict[str, Any]:
    """A finished 60-trial job (some trials failed), a finished 5-trial one and a pending one."""
    url = f"sqlite:///{folder / 'nas.db'}"
    storage = Storage(url)
    table = nb201_table_subset(folder / "partial.csv", rows=11719, seed=1)  # 3/4 of the cells
    args = {"table": str(table), "latency_table": "hw-nas-bench-cifar10"}
    job = api.submit(storage, nb201_spec(evaluator_args=args, budget={"trials": TRIALS}))
    small = api.submit(storage, nb201_spec(budget={"trials": 5}))
    assert api.run(storage, job) == "completed" and api.run(storage, small) == "completed"
    pending = api.submit(storage, nb201_spec())  # never run: no trial at all
    return {"url": url, "storage": storage, "job": job, "small": small, "pending": pending}


@pytest.fixture(scope="module")
def jobs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_jobs(shared_data, tmp_path_factory.mktemp("plots"))


def figure_json(html: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The traces and layout of the plotly figure in a page written by plotly."""
    start = html.index("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    at = html.index(",", start) + 1  # past the element id
    data, end = decoder.raw_decode(html, html.index("[", at))
    layout, _ = decoder.raw_decode(html, html.index("{", end))
    return data, layout


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def plot(jobs: dict[str, Any], path: Path, kind: str, *extra: str) -> Path:
    nas("--db", jobs["url"], "plot", str(jobs["job"]), "--kind", kind, "-o", str(path), *extra)
    assert path.is_file()
    return path


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["history", "pareto", "importance", "parallel"])
def test_every_kind_writes_a_real_png(jobs, tmp_path, kind):
    extra = ("--device", "pixel3", "--max-latency-ms", str(BUDGET_MS)) if kind == "pareto" else ()
    path = plot(jobs, tmp_path / f"{kind}.png", kind, *extra)
    width, height = png_size(path)
    assert 600 <= width <= 2000 and 300 <= height <= 1200, (width, height)
    assert path.stat().st_size > 10_000  # a drawn chart, not an empty canvas


@pytest.mark.integration
def test_history_html_has_every_trial_and_a_monotone_best(jobs, tmp_path):
    counts = jobs["storage"].trials.counts(jobs["job"])
    assert counts.get("failed", 0) > 0 and counts["completed"] + counts["failed"] == TRIALS
    data, layout = figure_json(plot(jobs, tmp_path / "h.html", "history").read_text())
    done = [t for t in data if t["name"].startswith("completed")]
    best = [t for t in data if t["name"] == "best so far"]
    lost = [t for t in data if t["name"].startswith("failed or pruned")]
    assert len(done) == len(best) == len(lost) == 2  # against trials, against time
    assert all(len(t["x"]) == counts["completed"] for t in done)
    assert all(len(t["x"]) == counts["failed"] for t in lost)
    for trace in best:
        assert trace["y"] == sorted(trace["y"])  # valid_acc is maximised
    status = results.status(jobs["storage"], jobs["job"])
    assert best[0]["y"][-1] == pytest.approx(status["best"]["objectives"]["valid_acc"])
    assert all(b >= a for a, b in zip(best[1]["x"], best[1]["x"][1:], strict=False))


@pytest.mark.integration
def test_pareto_budget_set_is_what_nas_best_returns(jobs, tmp_path):
    job, url = str(jobs["job"]), jobs["url"]
    data, layout = figure_json(plot(jobs, tmp_path / "p.html", "pareto", "--device", "pixel3",
                                    "--max-latency-ms", str(BUDGET_MS)).read_text())
    best = json.loads(nas("--db", url, "best", job, "--device", "pixel3", "--max-latency-ms",
                          str(BUDGET_MS), "--json").stdout)["results"]
    stars = next(t for t in data if t["name"].startswith("nas best"))
    assert sorted(stars["customdata"]) == sorted(r["trial"] for r in best) and best
    front = json.loads(nas("--db", url, "pareto", job, "--device", "pixel3", "--json").stdout)
    points = next(t for t in data if t["name"].startswith("trials"))
    line = next(t for t in data if t["name"].startswith("Pareto front"))
    assert len(points["x"]) == front["points"]
    assert line["customdata"] == [r["trial"] for r in front["front"]]
    assert [s["x0"] for s in layout["shapes"]] == [BUDGET_MS]  # the budget line
    assert all(r["device_value"] <= BUDGET_MS for r in best)


def test_pareto_points_agree_with_nas_best_for_any_budget(jobs):
    storage, job = jobs["storage"], jobs["job"]
    for budget in (5.0, 10.0, 18.0, None):
        data = insights.pareto_points(storage, job, "edgegpu", budget, top=3)
        assert data["best"] == results.best(storage, job, 3, "edgegpu", budget)["results"]
        within = [p for p in data["points"] if p["within_budget"]]
        # without a budget `nas best` also ranks trials with no latency (shown as -)
        known = {r["trial"] for r in data["best"] if r["device_value"] is not None}
        assert known <= {p["number"] for p in within} and data["best"]


def test_importance_html_names_every_decision(jobs, tmp_path):
    data, _ = figure_json(plot(jobs, tmp_path / "i.html", "importance").read_text())
    (bars,) = data
    assert sorted(bars["y"]) == [f"ops[{i}]" for i in range(6)]
    assert sum(bars["x"]) == pytest.approx(1.0)


def test_importance_ranks_the_decision_that_decides_above_the_dummies():
    """The score depends on ops[2] alone (plus a little noise): ops[2] comes first with most
    of the importance, every other decision is a dummy."""
    space = get_space("nb201")
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(80)]
    value = {"none": 0.0, "skip_connect": 1.0, "nor_conv_1x1": 3.0, "nor_conv_3x3": 4.0,
             "avg_pool_3x3": 2.0}
    scores = [value[a["ops"][2]] + 0.05 * rng.standard_normal() for a in archs]
    ranked = insights.decision_importance(space, archs, scores)
    assert ranked[0]["name"] == "ops[2]"
    assert ranked[0]["importance"] > 0.8
    assert sum(d["importance"] for d in ranked) == pytest.approx(1.0)


def test_parallel_html_has_an_axis_per_decision_and_a_line_per_trial(jobs, tmp_path):
    data, _ = figure_json(plot(jobs, tmp_path / "par.html", "parallel").read_text())
    (parcoords,) = data
    completed = jobs["storage"].trials.counts(jobs["job"])["completed"]
    labels = [d["label"] for d in parcoords["dimensions"]]
    assert labels == [f"ops[{i}]" for i in range(6)] + ["valid_acc"]
    assert all(len(d["values"]) == completed for d in parcoords["dimensions"])
    assert parcoords["dimensions"][0]["ticktext"] == [
        "none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


class _References(HTMLParser):
    """Every URL a page's tags or styles point at (scripts' own text is not parsed: plotly.js
    mentions URLs it never loads for these charts, e.g. its map tiles)."""

    ATTRIBUTES = ("src", "href", "action", "data", "poster", "srcset", "formaction")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        self.found += [v for k, v in attrs if k in self.ATTRIBUTES and v]
        self.found += [v for k, v in attrs if k == "style" and v and "url(" in v]

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.found += re.findall(r"url\([^)]*\)|@import[^;]*", data)


def external_references(html: str) -> list[str]:
    """The tags' and styles' references that leave the file (a scheme or //host)."""
    parser = _References()
    parser.feed(html)
    return [url for url in parser.found
            if re.match(r"\s*(url\(\s*['\"]?)?\s*([a-z][a-z0-9+.-]*:|//|@import)", url, re.I)
            and not url.lstrip().startswith(("#", "data:", "javascript:void"))]


def test_external_references_finds_what_a_page_would_load():
    page = ('<link href="https://cdn.example/x.css"><script src="//cdn.example/p.js"></script>'
            '<img src="data:image/png;base64,AA"><a href="#top">top</a>'
            '<style>body { background: url(http://example.org/b.png) }</style>'
            '<script>var u = "https://plot.ly";</script>')
    assert external_references(page) == [
        "https://cdn.example/x.css", "//cdn.example/p.js", "url(http://example.org/b.png)"]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["history", "parallel"])
def test_html_references_nothing_outside_itself(jobs, tmp_path, kind):
    html = plot(jobs, tmp_path / "chart.html", kind).read_text()
    assert external_references(html) == []
    assert len(html) > 1_000_000  # plotly.js inlined


@pytest.mark.parametrize("args, message", [
    (["--kind", "pie", "-o", "{out}.png"], "--kind must be one of"),
    (["--kind", "history", "-o", "{out}.svg"], "expected a .png or .html"),
    (["--kind", "history", "-o", "{tmp}/missing/x.png"], "does not exist"),
    (["--kind", "pareto", "-o", "{out}.png"], "has no latency objective on a device"),
    (["--kind", "pareto", "--device", "pixle3", "-o", "{out}.png"], "no latency_ms value"),
    (["--kind", "pareto", "--device", "pixel3", "--max-latency-ms", "-1", "-o", "{out}.png"],
     "--max-latency-ms must be a positive number"),
    (["--kind", "history", "--device", "pixel3", "-o", "{out}.png"], "apply to --kind pareto"),
])
def test_bad_input_is_one_line_and_writes_nothing(jobs, tmp_path, args, message):
    out = tmp_path / "chart"
    args = [a.format(out=out, tmp=tmp_path) for a in args]
    result = nas("--db", jobs["url"], "plot", str(jobs["job"]), *args, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("job_key, kind, message", [
    ("small", "importance", "importance needs at least 10"),
    ("pending", "history", "has no finished trial to draw yet"),
    ("pending", "parallel", "has no completed trial to draw yet"),
    (None, "history", "no job 999999"),
])
def test_unknown_job_and_too_few_trials(jobs, tmp_path, job_key, kind, message):
    job = str(jobs[job_key]) if job_key else "999999"
    result = nas("--db", jobs["url"], "plot", job, "--kind", kind, "-o",
                 str(tmp_path / "x.png"), code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_default_device_is_the_latency_objective_or_constraint():
    assert insights.default_device(nb201_spec()) is None
    assert insights.default_device(nb201_spec(objectives=[
        {"metric": "valid_acc", "mode": "max"},
        {"metric": "latency_ms", "mode": "min", "device": "edgegpu"}])) == "edgegpu"
    assert insights.default_device(nb201_spec(constraints=[
        {"metric": "latency_ms", "device": "pixel3", "max": 10}])) == "pixel3"


@pytest.mark.integration
def test_insights_on_sqlite_and_postgresql_with_a_minimised_objective(db_url, shared_data):
    """The same data on both databases; with `mode: min` the best so far only goes down and
    the front pairs low latency with a low value (score is the negated objective)."""
    storage = Storage(db_url)
    job = api.submit(storage, nb201_spec(
        strategy="random", strategy_args={}, budget={"trials": 24},
        objectives=[{"metric": "params_mb", "mode": "min"}]))
    assert api.run(storage, job) == "completed"
    history = insights.history(storage, job)
    best = [t["best_so_far"] for t in history["trials"]]
    assert len(best) == 24 and best == sorted(best, reverse=True)
    assert best[-1] == min(t["value"] for t in history["trials"])
    assert history["objective"] == {"metric": "params_mb", "mode": "min"}
    rows = insights.parallel(storage, job)["trials"]
    assert len(rows) == 24 and all(len(r["values"]) == 6 for r in rows)
    assert len(insights.importance(storage, job)["decisions"]) == 6
    data = insights.pareto_points(storage, job, "pixel3", 10.0)
    front = [next(p for p in data["points"] if p["number"] == n) for n in data["front"]]
    assert [p["value"] for p in front] == sorted((p["value"] for p in front), reverse=True)
    assert data["best"] == results.best(storage, job, 5, "pixel3", 10.0)["results"]
