"""`nas report` (issue 16): one self-contained HTML file about a real NB201 job (some trials
failed): nothing it references leaves the file, it holds the summary, the failures with
their counts, the best trials, the best architecture's picture and a chart per kind and per
device; in headless chromium, offline, it loads no URL, raises no error and draws every
chart (screenshot: docs/screenshots/report.png with NAS_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from nas import insights, results
from tests.conftest import ROOT, skip_or_fail
from tests.test_plots import external_references, figure_json, make_jobs, nas

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def report(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("report")
    jobs = make_jobs(shared_data, folder)
    path = folder / "report.html"
    out = nas("--db", jobs["url"], "report", str(jobs["job"]), "-o", str(path)).stdout
    assert str(path) in out
    return {**jobs, "path": path, "html": path.read_text(encoding="utf-8")}


def text_of(html: str) -> str:
    """The page's visible text, roughly: tags and scripts dropped, entities decoded."""
    html = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.mark.integration
def test_report_references_nothing_outside_itself(report):
    assert external_references(report["html"]) == []
    assert "<link" not in report["html"]
    assert report["html"].count("Plotly.newPlot(") >= 4
    assert len(report["html"]) > 3_000_000  # plotly.js inlined once, not per chart
    assert len(report["html"]) < 6_000_000


@pytest.mark.integration
def test_report_shows_the_summary_the_best_trial_and_the_failures(report):
    storage, job = report["storage"], report["job"]
    status = results.status(storage, job)
    page = report["html"]
    best = status["best"]["trial"]
    assert f'<div class="value" id="best-trial">{best}</div>' in page
    for state in ("completed", "failed"):
        assert f'id="count-{state}">{status["trials"][state]}</div>' in page
    text = text_of(page)
    assert status["best"]["key"] in text
    failures = storage.trials.common_errors(job, limit=10)
    assert failures and status["trials"]["failed"] > 0
    for error, count in failures:
        assert f"{count} {error}" in text
    top = results.best(storage, job, 10)["results"]
    rows = re.findall(r'<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>', page)
    assert [int(trial) for _, trial in rows[:10]] == [r["trial"] for r in top]


def test_report_draws_every_chart_and_a_front_per_device(report):
    storage, job = report["storage"], report["job"]
    page = report["html"]
    devices = insights.job_devices(storage, job)
    assert devices  # the latency table gives the job several devices
    for device in devices:
        assert f"Pareto front on {device}</h2>" in page
    for section in ("chart-history", "chart-importance", "chart-parallel"):
        part = page[page.index(f'id="{section}"'):]
        assert part.index("Plotly.newPlot(") < part.index("</section>"), section
    assert page.count("Plotly.newPlot(") == 3 + len(devices)
    history = page[page.index('id="chart-history"'):]
    traces, _ = figure_json(history)
    completed = next(t for t in traces if t["name"].startswith("completed"))
    assert len(completed["x"]) == storage.trials.counts(job)["completed"]


def test_report_pictures_the_best_architecture(report):
    page = report["html"]
    section = page[page.index('id="best-architecture"'):]
    section = section[:section.index("</section>")]
    best = results.status(report["storage"], report["job"])["best"]
    assert f"trial {best['trial']}</h2>" in section
    assert "<svg" in section
    for i, op in enumerate(best["arch"]["ops"]):
        assert f"<code>ops[{i}]</code></td><td>{op}</td>" in section


@pytest.mark.integration
def test_report_of_a_job_with_few_or_no_trials_says_why_a_chart_is_missing(report, tmp_path):
    path = tmp_path / "small.html"
    nas("--db", report["url"], "report", str(report["small"]), "-o", str(path))
    text = text_of(path.read_text())
    assert "importance needs at least 10" in text
    path = tmp_path / "pending.html"
    nas("--db", report["url"], "report", str(report["pending"]), "-o", str(path))
    text = text_of(path.read_text())
    assert "status pending" in text and "No completed trial yet" in text
    assert "has no finished trial to draw yet" in text
    assert "Plotly.newPlot(" not in path.read_text()


@pytest.mark.parametrize("job, output, message", [
    ("1", "{tmp}/r.pdf", "expected an .html file name"),
    ("1", "{tmp}/missing/r.html", "does not exist"),
    ("999999", "{tmp}/r.html", "no job 999999"),
    ("0", "{tmp}/r.html", "JOB must be a positive job id"),
])
def test_bad_input_is_one_line_and_writes_nothing(report, tmp_path, job, output, message):
    result = nas("--db", report["url"], "report", job, "-o", output.format(tmp=tmp_path),
                 code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.system
def test_report_renders_offline_in_chromium(report, tmp_path):
    """Every request but the file itself is refused: the page must not need one."""
    if shutil.which(CHROMIUM) is None:
        skip_or_fail(f"chromium not found at {CHROMIUM} (./setup.sh installs Debian's)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    out = SCREENSHOTS if os.environ.get("NAS_UPDATE_SCREENSHOTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    url = report["path"].resolve().as_uri()
    outside, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("**/*", lambda route: route.continue_() if route.request.url == url
                       else (outside.append(route.request.url), route.abort()))
            page.goto(url, wait_until="load")
            page.wait_for_function(
                "document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                f"{report['html'].count('Plotly.newPlot(')}", timeout=30_000)
            drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
            best = page.inner_text("#best-trial")
            page.screenshot(path=str(out / "report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [] and errors == []
    assert drawn == report["html"].count("Plotly.newPlot(")
    assert best == str(results.status(report["storage"], report["job"])["best"]["trial"])
    assert (out / "report.png").stat().st_size > 50_000
