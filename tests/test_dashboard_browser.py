"""`nas dashboard` in a real headless browser (Debian's chromium, driven by playwright) over a
real `nas dashboard` process and jobs run by real `nas` processes: the jobs list renders, a
running job's progress advances without a reload, moving the budget slider shows what
`nas best` prints, a failed trial's error is shown, the NB201 cell picture has 4 nodes and 6
labelled edges, read-only mode has no buttons and refuses POSTs, the token is enforced.

Screenshots of the main pages go to $NAS_DASHBOARD_SCREENSHOTS when set (docs/screenshots/
holds the committed ones), else to the test's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nas.storage import Storage, get_trial
from tests.conftest import nb201_spec, skip_or_fail, wait_until
from tests.test_dashboard import small_table, start_dashboard

pytestmark = pytest.mark.system
CHROMIUM = Path("/usr/bin/chromium")
DEVICE = "pixel3"


def nas(url: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nas", "--db", url, *args],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode in (0, 1), result.stderr
    return result


def write_spec(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(nb201_spec(**overrides)))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A database with a finished job (completed and failed trials, pixel3 latencies), run
    by `nas submit --wait`, and a read-only `nas dashboard` over it: (url, base, job, env)."""
    folder = tmp_path_factory.mktemp("dashboard")
    env = {**os.environ, "NAS_ARTIFACTS": str(folder / "artifacts")}
    url = f"sqlite:///{folder / 'nas.db'}"
    spec = write_spec(folder / "finished.yaml", name="finished-search", strategy="random",
                      strategy_args={}, budget={"trials": 60},
                      evaluator_args={"table": str(small_table(folder / "small.csv")),
                                      "latency_table": "hw-nas-bench-cifar10"})
    done = nas(url, "submit", str(spec), "--wait", "--json", env=env)
    job = json.loads(done.stdout)["id"]
    procs: list[subprocess.Popen] = []
    server, base, _ = start_dashboard(url, env=env, procs=procs)
    yield {"url": url, "base": base, "job": job, "env": env, "folder": folder,
           "server": server}
    for proc in procs:
        proc.kill()
        proc.wait()
    # the pages tolerate a failed request (they retry), so a server exception would pass
    # unseen: none may have happened while the browser tests ran
    logged = "\n".join(server.output)
    assert "Traceback" not in logged, logged[-6000:]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        skip_or_fail(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    logged = len(site["server"].output)
    yield tab
    context.close()
    # no script error on any page; if there is one, what the server logged meanwhile
    assert errors == [], "\n".join(site["server"].output[logged:][-80:])


def test_the_jobs_list_renders(site, page):
    page.goto(site["base"] + "/")
    row = page.locator(f'#jobs-body tr[data-job="{site["job"]}"]')
    row.wait_for()
    assert "finished-search" in row.inner_text() and "completed" in row.inner_text()
    wait_js(page, "document.getElementById('live').textContent === 'live'")
    assert page.locator("#jobs-body tr[data-job]").count() == 1
    assert page.locator("#mode").inner_text() == "read-only"


def test_a_running_jobs_progress_advances_without_a_reload(site, page, tmp_path):
    spec = write_spec(site["folder"] / "running.yaml", name="running-search",
                      strategy="random", strategy_args={}, budget={"trials": 15000},
                      parallelism=1, batch_size=1)
    submitted = nas(site["url"], "submit", str(spec), "--json", env=site["env"])
    job = json.loads(submitted.stdout)["job"]
    storage = Storage(site["url"])
    try:
        wait_until(lambda: storage.trials.counts(job).get("completed", 0) > 0,
                   "the background driver's first trial", timeout=120)
        page.goto(f"{site['base']}/jobs/{job}")
        page.evaluate("window.notReloaded = true")
        completed = page.locator("#count-completed")
        first = int(completed.inner_text())
        wait_js(page, f"Number(document.getElementById('count-completed').textContent) > {first}")
        bar = page.locator('#progress .phase[data-phase="trials"] .bar span')
        shown = bar.inner_text()
        wait_js(page, "text => document.querySelector('#progress .phase[data-phase=\"trials\"] "
                      ".bar span').textContent !== text", shown)
        points = "document.getElementById('chart-history').data[0].x.length"
        drawn = wait_js(page, points)
        # the history chart follows the job too, throttled to every 5x its last refresh
        # (the importance chart fits a GBDT): on a loaded machine that is a minute or more
        wait_js(page, f"{points} > {drawn}", timeout=180.0)
        assert page.evaluate("window.notReloaded") is True  # updated in place
        assert page.locator("#job-runner").inner_text() == "driver"
        assert page.locator("#job-status").inner_text() == "running"
        page.goto(site["base"] + "/")  # the jobs list with this job running
        row = page.locator(f'#jobs-body tr[data-job="{job}"]')
        row.wait_for()
        assert "running" in row.inner_text() and "driver" in row.inner_text()
        page.set_viewport_size({"width": 1400, "height": 300})
        page.screenshot(path=str(screenshots(tmp_path) / "dashboard-jobs.png"))
    finally:
        nas(site["url"], "cancel", str(job), env=site["env"])
        wait_until(lambda: storage.jobs.get(job).status == "cancelled",
                   "the driver to stop after nas cancel", timeout=60)
        storage.close()


def wait_js(page, expression: str, arg=None, timeout: float = 60.0):  # noqa: ANN001, ANN201
    """Poll `expression` (a JS function of `arg`, or an expression) until truthy. Not
    playwright's wait-for-function: that evaluates strings in the page, which the
    dashboard's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {expression}")
        time.sleep(0.1)


def best_trials_shown(page) -> list[int]:
    return [int(t) for t in page.eval_on_selector_all(
        "#best-body tr[data-trial]", "rows => rows.map(r => r.dataset.trial)")]


def test_moving_the_budget_slider_shows_what_nas_best_prints(site, page):
    job = site["job"]
    page.goto(f"{site['base']}/jobs/{job}")
    wait_js(page, "document.body.dataset.paretoReady")
    ready = page.evaluate("document.body.dataset.paretoReady")
    page.select_option("#pareto-device", DEVICE)
    wait_js(page, "r => document.body.dataset.paretoReady !== r", ready)
    loose = best_trials_shown(page)
    assert len(loose) == 5
    low, high = page.evaluate("[Number(budget.min), Number(budget.max)]")
    lists = []
    for share in (0.15, 0.4):
        ready = page.evaluate("document.body.dataset.paretoReady")
        slider = page.locator("#budget")
        slider.focus()
        # what a drag does: the value moves, then `input` fires
        page.evaluate("v => { budget.value = v; budget.dispatchEvent(new Event('input')); }",
                      low + share * (high - low))
        wait_js(page, "r => document.body.dataset.paretoReady !== r", ready)
        budget = page.evaluate("document.body.dataset.budget")
        assert page.locator("#budget-value").inner_text() == budget
        printed = nas(site["url"], "best", str(job), "--device", DEVICE, "--max-latency-ms",
                      budget, "--json", env=site["env"])
        expected = [r["trial"] for r in json.loads(printed.stdout)["results"]]
        assert expected and best_trials_shown(page) == expected
        assert f"--max-latency-ms {budget}" in page.locator("#best-command").inner_text()
        lists.append(expected)
    assert lists[0] != loose  # a tight budget leaves other trials than no budget


def test_a_failed_trials_error_is_shown(site, page):
    job = site["job"]
    page.goto(f"{site['base']}/jobs/{job}")
    first = page.locator("#failed-list .failed").first
    first.wait_for()
    number = int(first.get_attribute("data-trial"))
    storage = Storage(site["url"])
    stored = get_trial(storage, job, number)
    reasons = storage.trials.common_errors(job, limit=10)
    storage.close()
    assert stored["status"] == "failed" and stored["error"]
    assert first.locator("pre").inner_text() == stored["error"].strip()
    shown = page.eval_on_selector_all("#failures-body tr", "rows => rows.map(r => "
                                      "[r.cells[1].textContent, Number(r.cells[0].textContent)])")
    assert [tuple(r) for r in shown] == reasons  # the failure reasons with their counts
    page.goto(f"{site['base']}/jobs/{job}/trials/{number}")
    assert page.locator("#trial-error").inner_text().strip() == stored["error"].strip()


def test_the_nb201_cell_picture_has_4_nodes_and_6_labelled_edges(site, page):
    storage = Storage(site["url"])
    from nas import results

    best = results.status(storage, site["job"])["best"]
    storage.close()
    page.goto(f"{site['base']}/jobs/{site['job']}/trials/{best['trial']}")
    picture = page.locator('#architecture svg[data-kind="nb201"]')
    assert picture.is_visible()
    assert picture.locator("g.node").count() == 4
    edges = picture.locator("g.edge")
    assert edges.count() == 6
    labels = [edges.nth(i).locator("text").text_content() for i in range(6)]
    assert labels == best["arch"]["ops"]  # each edge labelled with its operation
    box = picture.bounding_box()
    assert box["width"] > 300 and box["height"] > 100


def test_read_only_mode_has_no_action_buttons_and_refuses_posts(site, page):
    page.goto(f"{site['base']}/jobs/{site['job']}")
    page.locator("#job-status").wait_for()
    assert page.locator("button[data-action]").count() == 0
    answer = page.evaluate(
        """job => fetch('/api/jobs/' + job + '/cancel', {method: 'POST',
                 headers: {'X-NAS-Action': 'cancel'}})
             .then(r => r.json().then(body => [r.status, body.error]))""", site["job"])
    assert answer[0] == 403 and "read-only" in answer[1]


def test_the_token_is_enforced(site, browser):
    procs: list[subprocess.Popen] = []
    _, base, _ = start_dashboard(site["url"], env={**site["env"],
                                                   "NAS_DASHBOARD_TOKEN": "open-sesame"},
                                 procs=procs)
    context = browser.new_context()
    try:
        tab = context.new_page()
        assert tab.goto(base + "/").status == 401
        assert "a token is required" in tab.content()
        assert tab.goto(base + "/?token=wrong").status == 401
        landed = tab.goto(base + "/?token=open-sesame")
        assert landed.status == 200 and tab.url == base + "/"  # the token left the URL
        tab.locator(f'#jobs-body tr[data-job="{site["job"]}"]').wait_for()
        wait_js(tab, "document.getElementById('live').textContent === 'live'")
        fresh = browser.new_context()
        assert fresh.new_page().goto(base + "/api/jobs").status == 401  # no cookie, no entry
        fresh.close()
    finally:
        context.close()
        for proc in procs:
            proc.kill()
            proc.wait()


def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("NAS_DASHBOARD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_screenshots_of_the_job_and_trial_pages(site, page, tmp_path):
    folder = screenshots(tmp_path)
    job = site["job"]
    storage = Storage(site["url"])
    from nas import results

    best = results.status(storage, job)["best"]["trial"]
    storage.close()
    page.goto(f"{site['base']}/jobs/{job}")
    wait_js(page, "document.body.dataset.chartsReady && document.body.dataset.paretoReady")
    page.evaluate("v => { budget.value = v; budget.dispatchEvent(new Event('input')); }",
                  page.evaluate("Number(budget.min) + 0.4 * (budget.max - budget.min)"))
    time.sleep(1.5)
    parallel = page.locator("#chart-parallel")
    assert parallel.locator("canvas").count() > 0  # drawn with WebGL
    assert "WebGL is not supported" not in parallel.inner_text()  # (the CSP lets regl run)
    page.screenshot(path=str(folder / "dashboard-job.png"), full_page=True)
    page.goto(f"{site['base']}/jobs/{job}/trials/{best}")
    page.screenshot(path=str(folder / "dashboard-trial.png"), full_page=True)
    for name in ("job", "trial"):
        assert (folder / f"dashboard-{name}.png").stat().st_size > 10_000
