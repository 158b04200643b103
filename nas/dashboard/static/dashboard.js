// nas dashboard: polls the JSON endpoints every 2 s and updates the page in place.
// Plain DOM and Plotly.react; every text from the database goes in through textContent.
"use strict";

const POLL_MS = 2000;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  return Number(value.toPrecision(digits || 4)).toString();
}

function link(href, text) { return el("a", text, { href: href }); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const type = response.headers.get("content-type") || "";
  if (!type.includes("json")) {  // a proxy's or the server's plain-text error page
    throw new Error(url + ": " + response.status + " " + (await response.text()).slice(0, 200));
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function setLive(ok) {
  const live = document.getElementById("live");
  if (!live) return;
  live.classList.toggle("offline", !ok);
  live.textContent = ok ? "live" : "offline";
}

function poll(task) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await task(); setLive(true); } catch (e) { setLive(false); console.error(e); }
    busy = false;
  };
  tick();
  setInterval(tick, POLL_MS);
}

function progressBar(phase) {
  const bar = el("div", null, { class: "bar" });
  const fill = el("div", null, { class: "fill" });
  fill.style.width = ((phase.fraction || 0) * 100).toFixed(1) + "%";
  bar.appendChild(fill);
  let text = phase.phase + " " + phase.done + "/" + (phase.total === null ? "?" : phase.total);
  bar.appendChild(el("span", text));
  return bar;
}

// ---- the jobs page --------------------------------------------------------------------------
function jobsPage() {
  poll(async () => {
    const jobs = await getJSON("/api/jobs");
    const body = document.getElementById("jobs-body");
    body.replaceChildren(...jobs.map((j) => {
      const last = j.progress.length ? j.progress[j.progress.length - 1] : null;
      const best = j.best ? j.best.metric + " " + fmt(j.best.value) + " (#" + j.best.trial + ")" : "-";
      const status = el("span", j.status, { class: "status status-" + j.status });
      const tr = row([link("/jobs/" + j.id, j.id), link("/jobs/" + j.id, j.name), status,
        j.runner || "-", last ? progressBar(last) : "", j.trials.completed, j.trials.failed,
        j.trials.pruned, best, j.space, j.strategy, j.created_at.slice(0, 16).replace("T", " ")]);
      tr.dataset.job = j.id;
      [5, 6, 7].forEach((i) => tr.children[i].classList.add("num"));
      tr.children[4].classList.add("wide");
      return tr;
    }));
    if (!jobs.length) body.appendChild(row(["no jobs yet"]));
    document.getElementById("job-count").textContent = "(" + jobs.length + ")";
  });
}

// ---- a job's page ---------------------------------------------------------------------------
function drawFigure(id, figure) {
  const node = document.getElementById(id);
  if (!node || !window.Plotly) return;
  if (!figure || figure.message) {
    Plotly.purge(node);
    node.replaceChildren(el("p", figure ? figure.message : "nothing to show yet", { class: "muted" }));
    return;
  }
  if (node.firstChild && node.firstChild.tagName === "P") node.replaceChildren();
  // the card's heading names the chart: no title; the legend below, the width the card's
  const layout = Object.assign({}, figure.layout, {
    autosize: true, width: null,
    height: figure.layout.height || (node.classList.contains("wide") ? 380 : 340),
    title: { text: "" }, margin: { t: 36, r: 16, b: 50, l: 60 },
    legend: { orientation: "h", x: 0, y: -0.22, yanchor: "top" },
  });
  if (figure.data.length && figure.data[0].type === "parcoords") {
    layout.margin = { t: 50, r: 70, b: 30, l: 110 };  // room for the axes' tick labels
  }
  Plotly.react(node, figure.data, layout, { responsive: true, displaylogo: false });
}

function jobPage() {
  const job = document.body.dataset.job;
  const metrics = document.body.dataset.metrics.split(",");
  let seen = null;
  const table = { offset: 0, total: 0 };

  async function refreshCharts() {
    await Promise.all(["history", "importance", "parallel"].map(async (kind) => {
      drawFigure("chart-" + kind, await getJSON("/api/jobs/" + job + "/charts/" + kind));
    }));
    document.body.dataset.chartsReady = String(Date.now());
  }
  // the charts and the Pareto front cover every trial: on a big job they take the server
  // a while, so they follow a running job at most every 5x their last time (2 s at least)
  const heavy = { last: 0, took: 0, busy: false, pending: false };
  async function refreshHeavy() {
    if (heavy.busy || Date.now() - heavy.last < Math.max(POLL_MS, 5 * heavy.took)) {
      heavy.pending = true;
      return;
    }
    heavy.busy = true; heavy.pending = false;
    const start = Date.now();
    try {
      await Promise.all([refreshCharts(), pareto.refresh()]);
    } catch (e) {  // the server failed one figure: say so, and try again at the next tick
      heavy.pending = true;
      setLive(false);
      console.error(e);
    } finally {
      heavy.busy = false; heavy.last = Date.now(); heavy.took = heavy.last - start;
    }
  }

  function showSummary(s) {
    const status = document.getElementById("job-status");
    status.textContent = s.status;
    status.className = "status status-" + s.status;
    document.getElementById("job-runner").textContent = s.runner || "none";
    document.getElementById("job-elapsed").textContent = s.elapsed_s.toFixed(1) + " s";
    for (const k of ["completed", "failed", "pruned", "running", "queued"]) {
      document.getElementById("count-" + k).textContent = s.trials[k];
    }
    const best = document.getElementById("job-best");
    if (s.best) {
      const parts = Object.entries(s.best.objectives).map(([m, v]) => m + "=" + fmt(v)).join(" ");
      best.replaceChildren("trial ", link("/jobs/" + job + "/trials/" + s.best.trial, s.best.trial),
        " " + parts + " ", el("code", s.best.key));
    }
    document.getElementById("job-note").textContent = s.note || "";
    document.getElementById("job-error").textContent = s.error || "";
    document.getElementById("progress").replaceChildren(...s.progress.map((p) => {
      const div = el("div", null, { class: "phase", "data-phase": p.phase });
      div.appendChild(el("span", p.phase, { class: "label" }));
      const bar = progressBar(p);
      let extra = [];
      for (const [k, v] of Object.entries(p.detail || {})) extra.push(k + " " + fmt(v));
      if (p.eta_s !== null && p.eta_s !== undefined && p.eta_s > 0) extra.push("ETA " + Math.round(p.eta_s) + " s");
      bar.lastChild.textContent = p.done + "/" + (p.total === null ? "?" : p.total) +
        (extra.length ? "  · " + extra.join(", ") : "");
      div.appendChild(bar);
      return div;
    }));
    const reasons = document.getElementById("failures-body");
    reasons.replaceChildren(...s.failures.map((f) => row([f.count, f.error])));
    if (!s.failures.length) reasons.appendChild(row(["", "no failed trial"]));
    for (const what of ["cancel", "resume"]) {
      const button = document.getElementById("action-" + what);
      if (button) button.disabled = !s.actions[what];
    }
  }

  async function refreshTable() {
    const q = new URLSearchParams({
      status: document.getElementById("trials-status").value,
      sort: document.getElementById("trials-sort").value,
      order: document.getElementById("trials-order").value,
      limit: document.getElementById("trials-limit").value,
      offset: table.offset,
    });
    const page = await getJSON("/api/jobs/" + job + "/trials?" + q);
    table.total = page.total;
    document.getElementById("trials-body").replaceChildren(...page.rows.map((r) => {
      const tr = row([link("/jobs/" + job + "/trials/" + r.trial, r.trial),
        el("span", r.status, { class: "status status-" + r.status }),
        ...r.values.map((v) => fmt(v)), fmt(r.score), r.feasible === null ? "-" : (r.feasible ? "yes" : "no"),
        fmt(r.duration_s, 3), r.attempt, el("code", r.key), r.error || ""]);
      tr.dataset.trial = r.trial;
      const error = tr.lastChild;  // one line; the whole first line on hover
      error.className = "error-cell";
      if (r.error) error.title = r.error;
      return tr;
    }));
    const end = Math.min(page.offset + page.rows.length, page.total);
    document.getElementById("trials-range").textContent =
      page.total ? (page.offset + 1) + "-" + end + " of " + page.total : "none";
    document.getElementById("trials-total").textContent = "(" + page.total + ")";
    document.getElementById("trials-prev").disabled = page.offset === 0;
    document.getElementById("trials-next").disabled = end >= page.total;
  }

  async function refreshFailed() {
    const failed = await getJSON("/api/jobs/" + job + "/failed");
    document.getElementById("failed-list").replaceChildren(...failed.map((f) => {
      const box = el("div", null, { class: "failed", "data-trial": f.trial });
      const title = el("p");
      title.append(link("/jobs/" + job + "/trials/" + f.trial, "trial " + f.trial), " ",
        el("code", f.key), " attempt " + f.attempt + (f.worker ? " on " + f.worker : ""));
      box.append(title, el("pre", f.error || "(no error message)", { class: "error-message" }));
      return box;
    }));
  }

  const pareto = setupPareto(job, metrics);

  for (const id of ["trials-status", "trials-sort", "trials-order", "trials-limit"]) {
    document.getElementById(id).addEventListener("change", () => { table.offset = 0; refreshTable(); });
  }
  document.getElementById("trials-prev").addEventListener("click", () => {
    table.offset = Math.max(0, table.offset - Number(document.getElementById("trials-limit").value));
    refreshTable();
  });
  document.getElementById("trials-next").addEventListener("click", () => {
    table.offset += Number(document.getElementById("trials-limit").value);
    refreshTable();
  });
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      const what = button.dataset.action;
      if (!confirm(what + " job " + job + "?")) return;
      const response = await fetch("/api/jobs/" + job + "/" + what,
        { method: "POST", credentials: "same-origin", headers: { "X-NAS-Action": what } });
      const data = await response.json();
      document.getElementById("action-result").textContent =
        response.ok ? "job " + job + " " + data.status : "refused: " + data.error;
    });
  }

  poll(async () => {
    const s = await getJSON("/api/jobs/" + job);
    showSummary(s);
    const state = JSON.stringify([s.trials, s.status]);
    if (state !== seen) {  // something finished: the charts and tables change too
      seen = state;
      refreshHeavy();
      await Promise.all([refreshTable(), refreshFailed()]);
    } else if (heavy.pending) {
      refreshHeavy();
    }
  });
}

function setupPareto(job, metrics) {
  const device = document.getElementById("pareto-device");
  const slider = document.getElementById("budget");
  const shown = document.getElementById("budget-value");
  if (!device) return { refresh: async () => {} };
  let budget = null;  // null: no budget yet (the loosest)
  let timer = null;
  let asked = 0;  // answers to an older question than the last one asked are dropped

  function showBest(data) {
    document.getElementById("best-body").replaceChildren(...data.results.map((r, i) => {
      const tr = row([i + 1, link("/jobs/" + job + "/trials/" + r.trial, r.trial),
        ...metrics.map((m) => fmt(r.objectives[m])), fmt(r.device_value),
        r.device_source || "unknown", el("code", r.key)]);
      tr.dataset.trial = r.trial;
      return tr;
    }));
    const command = "nas best " + job + " --device " + data.device +
      (data.max_latency_ms === null ? "" : " --max-latency-ms " + data.max_latency_ms);
    document.getElementById("best-command").textContent = command;
    document.getElementById("budget-note").textContent = data.unknown_latency ?
      data.unknown_latency + " completed trials have no latency on " + data.device +
      (data.max_latency_ms === null ? " (shown as -)" : " (not ranked)") : "";
  }

  // the budget on the figure drawn by the server (nas.charts.pareto_figure): a dashed line,
  // and its third trace, the stars, moved onto what `nas best` returned
  function markBudget(data) {
    const node = document.getElementById("chart-pareto");
    if (!node.data || node.data.length < 3 || data.max_latency_ms === null) return;
    const stars = data.results.filter((r) => r.device_value !== null);
    Plotly.restyle(node, {
      x: [stars.map((r) => r.device_value)], y: [stars.map((r) => r.objectives[metrics[0]])],
      customdata: [stars.map((r) => r.trial)],
      name: "nas best, top " + data.results.length + " under " + data.max_latency_ms + " ms",
    }, [2]);
    Plotly.relayout(node, {
      shapes: [{ type: "line", xref: "x", yref: "paper", x0: data.max_latency_ms,
        x1: data.max_latency_ms, y0: 0, y1: 1, line: { dash: "dash", color: "#1f77b4" } }],
      annotations: [{ xref: "x", yref: "paper", x: data.max_latency_ms, y: 1, yanchor: "bottom",
        showarrow: false, text: "budget " + data.max_latency_ms + " ms" }],
    });
  }

  function bestQuery() {
    const q = new URLSearchParams({ device: device.value });
    if (budget !== null) q.set("max_latency_ms", budget);
    return q;
  }

  async function refreshBest() {  // exactly `nas best --json` (the same function)
    const mine = ++asked;
    const data = await getJSON("/api/jobs/" + job + "/best?" + bestQuery());
    if (mine !== asked) return;
    showBest(data);
    markBudget(data);
    document.body.dataset.budget = budget === null ? "" : budget;
    document.body.dataset.paretoReady = String(Date.now());
  }

  async function refresh() {  // the figure (every trial of the device), then the list
    const panel = await getJSON("/api/jobs/" + job + "/pareto?device=" +
                                encodeURIComponent(device.value));
    if (panel.range) {
      const [low, high] = panel.range;
      slider.min = low; slider.max = high;
      slider.step = Math.max((high - low) / 500, 1e-6);
      if (budget === null) slider.value = high;
    }
    drawFigure("chart-pareto", panel.figure);
    shown.textContent = budget === null ? "none" : budget;
    await refreshBest();
  }

  slider.addEventListener("input", () => {
    budget = Number(Number(slider.value).toPrecision(6));
    shown.textContent = budget;
    clearTimeout(timer);
    timer = setTimeout(refreshBest, 80);
  });
  device.addEventListener("change", () => { budget = null; refresh(); });
  return { refresh: refresh };
}

const pages = { jobs: jobsPage, job: jobPage };
document.addEventListener("DOMContentLoaded", () => {
  const start = pages[document.body.dataset.page];
  if (start) start();
});
