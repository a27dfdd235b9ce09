// The job pages' script: reads the JSON API (/v1/...) with the API key kept in this tab's sessionStorage,
// sent as `Authorization: Bearer <key>` on the page's own requests only. No build step, no framework.
"use strict";

const KEY = "inferq.apiKey";
const FINISHED = new Set(["succeeded", "failed", "cancelled", "expired"]);
const $ = (id) => document.getElementById(id);

function key() { return sessionStorage.getItem(KEY) || ""; }

function say(text, isError) {
  const el = $("message");
  if (!el) return;
  el.textContent = text || "";
  el.className = "message" + (isError ? " error" : "");
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers = Object.assign({ Authorization: "Bearer " + key() }, opts.headers);
  const response = await fetch(path, opts);
  if (!response.ok) {
    let detail = response.status + " " + response.statusText;
    try { const body = await response.json(); if (body.error) detail = body.error.code + ": " + body.error.message; } catch (e) { /* not JSON */ }
    const err = new Error(detail);
    err.status = response.status;
    throw err;
  }
  return response;
}

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
}

// The dispatcher's state on the job's queue (see Fair share): who leads, its last round, the window and what waits.
function dispatcherText(d) {
  if (!d) return "–";
  if (d.mode === "direct") return "direct: every chunk sent at submit";
  if (!d.leader) return "no leader" + (d.last_round ? " (last round " + age(d.last_round) + " ago)" : "");
  const parts = ["leader " + d.leader + ", last round " + age(d.last_round) + " ago, released " + d.released];
  for (const q of d.queues || []) {
    let held = q.held + " held back";
    if (q.held_by_cap) held += " (" + q.held_by_cap + " by tenant caps" + (q.capped.length ? ": " + q.capped.join(", ") : "") + ")";
    parts.push("queue " + q.queue + ": " + q.waiting + "/" + q.window + " waiting, " + q.running + " running, " + held);
  }
  return parts.join("; ");
}

function percent(job) { return job.total ? Math.floor((100 * job.done) / job.total) : 0; }

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function keyForm(onChange) {
  const form = $("key-form");
  const status = () => { $("key-status").textContent = key() ? "key set" : "no key"; };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("key-input").value.trim();
    if (value) sessionStorage.setItem(KEY, value);
    $("key-input").value = "";
    status();
    onChange();
  });
  $("key-forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); status(); onChange(); });
  status();
}

// -- the list --------------------------------------------------------------------------------------------------

function listPage() {
  let cursors = [null]; // the `after` of each page shown so far; the last is the current page's
  let nextAfter = null;
  let timer = null;

  function query() {
    // A page of 20 jobs, or of the page's own ?limit= (1 to 100, as the API takes).
    const params = new URLSearchParams({ limit: new URLSearchParams(location.search).get("limit") || "20" });
    const form = new FormData($("filters"));
    for (const [name, value] of form.entries()) if (value) params.set(name, value);
    const after = cursors[cursors.length - 1];
    if (after) params.set("after", after);
    return params;
  }

  async function load() {
    clearTimeout(timer);
    const body = $("jobs").tBodies[0];
    if (!key()) { body.replaceChildren(); say("Enter an API key to see your jobs."); return; }
    try {
      const page = await (await api("/v1/jobs?" + query())).json();
      say(page.data.length ? "" : "No jobs.");
      body.replaceChildren(...page.data.map((job) => {
        const row = document.createElement("tr");
        row.dataset.job = job.id;
        row.className = "job";
        const link = document.createElement("a");
        link.href = "/jobs/" + job.id;
        link.textContent = job.id.slice(0, 12);
        cell(row, link);
        const state = document.createElement("span");
        state.className = "state state-" + job.state;
        state.textContent = job.state;
        cell(row, state);
        cell(row, job.task);
        cell(row, job.model);
        const bar = document.createElement("div");
        bar.className = "progress small state-" + job.state;
        bar.innerHTML = '<div class="bar"></div>';
        bar.firstChild.style.width = percent(job) + "%";
        const progress = cell(row, bar, "progress-cell");
        progress.append(" " + job.done + " / " + job.total);
        cell(row, age(job.created_at));
        return row;
      }));
      nextAfter = page.next_after;
      $("next").disabled = !page.has_more;
      $("first").disabled = cursors.length === 1;
    } catch (err) {
      body.replaceChildren();
      say(err.message, true);
    }
    timer = setTimeout(load, 3000);
  }

  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); cursors = [null]; load(); });
  $("next").addEventListener("click", () => { if (nextAfter) { cursors.push(nextAfter); load(); } });
  $("first").addEventListener("click", () => { cursors = [null]; load(); });
  keyForm(() => { cursors = [null]; load(); });
  load();
}

// -- one job -----------------------------------------------------------------------------------------------------

function jobPage(jobId) {
  let plot = null;
  let timer = null;
  let ticks = 0;

  function drawPlot(timeline) {
    const xs = timeline.points.map((p) => Date.parse(p.t) / 1000 + timeline.bucket_seconds / 2);
    const ys = timeline.points.map((p) => p.items_per_second);
    const el = $("plot");
    el.dataset.points = String(xs.length);
    el.dataset.bucketSeconds = String(timeline.bucket_seconds);
    if (!xs.length) return;
    if (!plot) {
      plot = new uPlot({
        width: Math.min(900, el.clientWidth || 800),
        height: 260,
        scales: { x: { time: true } },
        axes: [{}, { label: "items/s" }],
        series: [{}, { label: "items/s (" + timeline.bucket_seconds + " s buckets)", stroke: "#2563eb",
                       fill: "rgba(37,99,235,0.12)", width: 2, points: { show: true, size: 6 } }],
      }, [xs, ys], el);
    } else {
      plot.setData([xs, ys]);
    }
  }

  function drawErrors(summary) {
    const body = $("errors").tBodies[0];
    body.replaceChildren(...summary.data.map((e) => {
      const row = document.createElement("tr");
      cell(row, e.code, "code");
      cell(row, String(e.count));
      cell(row, e.sample_message || "");
      return row;
    }));
    if (!summary.data.length) {
      const row = document.createElement("tr");
      cell(row, "No failed items.").colSpan = 3;
      body.appendChild(row);
    }
  }

  function drawJob(job) {
    const state = $("state");
    state.textContent = job.state;
    state.className = "state state-" + job.state;
    document.body.dataset.state = job.state;
    $("bar").style.width = percent(job) + "%";
    $("progress-text").textContent = job.done + " of " + job.total + " items (" + percent(job) + "%)";
    $("n-succeeded").textContent = job.succeeded;
    $("n-failed").textContent = job.failed;
    $("rest-label").textContent = job.state === "cancelled" ? "Cancelled"
      : job.state === "expired" ? "Expired" : "Queued or running";
    $("n-rest").textContent = job.total - job.done;
    $("n-total").textContent = job.total;
    $("task").textContent = job.task;
    $("model").textContent = job.model;
    $("rate").textContent = job.items_per_second ? job.items_per_second.toFixed(1) + " items/s" : "–";
    $("eta").textContent = FINISHED.has(job.state) ? "finished" : duration(job.eta_seconds);
    $("created").textContent = job.created_at + " (" + age(job.created_at) + " ago)";
    $("finished").textContent = job.finished_at || "–";
    $("priority").textContent = job.priority === undefined ? "–" : String(job.priority);
    $("deadline").textContent = job.deadline_at || "–";
    // Chunks that go to the workers before this job's next one (the dispatcher's line; see Fair share).
    $("position").textContent = job.position === null || job.position === undefined ? "–"
      : job.position === 0 ? (job.state === "running" ? "running" : "next") : job.position + " chunks ahead";
    $("dispatcher").textContent = dispatcherText(job.dispatcher);
    $("cancel").disabled = FINISHED.has(job.state);
  }

  async function refresh() {
    clearTimeout(timer);
    if (!key()) { say("Enter an API key to see this job."); return; }
    try {
      const job = await (await api("/v1/jobs/" + jobId)).json();
      drawJob(job);
      const done = FINISHED.has(job.state);
      // The plot and the errors change more slowly than the counts: every other poll, and once more at the end.
      if (done || ticks % 2 === 0) {
        drawPlot(await (await api("/v1/jobs/" + jobId + "/timeline")).json());
        drawErrors(await (await api("/v1/jobs/" + jobId + "/error_summary")).json());
      }
      ticks += 1;
      say("");
      if (!done) timer = setTimeout(refresh, 1000);
    } catch (err) {
      say(err.status === 404 ? "No such job for this key." : err.message, true);
      if (err.status !== 404 && err.status !== 401) timer = setTimeout(refresh, 3000);
    }
  }

  async function download(path, name) {
    try {
      const blob = await (await api(path)).blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = name;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    } catch (err) { say(err.message, true); }
  }

  const downloads = {
    "download-results": ["/results?format=jsonl", ".jsonl"],
    "download-csv": ["/results?format=csv", ".csv"],
    "download-errors": ["/errors", ".errors.jsonl"],
  };
  for (const [id, [suffix, ext]] of Object.entries(downloads)) {
    $(id).href = "/v1/jobs/" + jobId + suffix;
    $(id).addEventListener("click", (ev) => { ev.preventDefault(); download("/v1/jobs/" + jobId + suffix, jobId + ext); });
  }
  $("cancel").addEventListener("click", async () => {
    $("cancel").disabled = true;
    try {
      drawJob(await (await api("/v1/jobs/" + jobId + "/cancel", { method: "POST" })).json());
      refresh();
    } catch (err) { say(err.message, true); $("cancel").disabled = false; }
  });
  keyForm(refresh);
  refresh();
}

if (document.body.dataset.page === "list") listPage();
else if (document.body.dataset.page === "job") jobPage(document.body.dataset.job);
