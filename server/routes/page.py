"""The job pages: ``/`` lists jobs, ``/jobs/{job_id}`` shows one, live. Plain HTML from the server, a little
JavaScript (``static/page.js``) that reads the JSON API with the user's API key, and uPlot (vendored, MIT) for the
plot; no build step.

The pages themselves need no key and hold no data: the key is typed into a form, kept in the tab's
``sessionStorage`` (gone when the tab closes; never a cookie, never sent but as ``Authorization: Bearer`` on the
page's own requests to the API), so a tenant's key shows its jobs only, exactly as the API answers it."""

from __future__ import annotations

import html
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from inferq.errors import JobNotFound

router = APIRouter(include_in_schema=False)

#: The page's own files (CSS, JavaScript, the vendored plot library).
STATIC = Path(__file__).resolve().parent.parent / "static"

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/page.css"><link rel="stylesheet" href="/static/uplot/uPlot.min.css">
</head><body data-page="{page}"{extra}>
<header><a href="/" class="brand">inferq</a><span class="sub">jobs</span>
<form id="key-form" autocomplete="off"><input id="key-input" type="password" placeholder="API key (iq_…)"
 aria-label="API key"><button type="submit" id="key-save">Use key</button>
<button type="button" id="key-forget">Forget key</button><span id="key-status"></span></form></header>
<main>
"""
_TAIL = """</main>
<script src="/static/uplot/uPlot.iife.min.js"></script><script src="/static/page.js"></script>
</body></html>
"""

_LIST = """<h1>Jobs</h1>
<form id="filters"><label>State <select name="state"><option value="">any</option>
<option>queued</option><option>running</option><option>succeeded</option><option>failed</option>
<option>cancelled</option></select></label>
<label>Task <input name="task" size="18"></label><label>Model <input name="model" size="18"></label>
<button type="submit">Filter</button></form>
<p id="message" class="message"></p>
<table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Task</th><th>Model</th><th>Progress</th><th>Age</th>
</tr></thead><tbody></tbody></table>
<nav class="pager"><button id="first" type="button">Newest</button><button id="next" type="button">Older →</button></nav>
"""

_JOB = """<p><a href="/">← all jobs</a></p>
<h1>Job <code id="job-id">{job_id}</code> <span id="state" class="state"></span></h1>
<p id="message" class="message"></p>
<section class="summary">
<div class="progress"><div id="bar" class="bar"></div></div>
<p id="progress-text"></p>
<table id="counts"><tr><th>Succeeded</th><th>Failed</th><th id="rest-label">Queued or running</th><th>Total</th>
</tr><tr><td id="n-succeeded"></td><td id="n-failed"></td><td id="n-rest"></td><td id="n-total"></td></tr></table>
<dl><dt>Task</dt><dd id="task"></dd><dt>Model</dt><dd id="model"></dd><dt>Rate</dt><dd id="rate"></dd>
<dt>ETA</dt><dd id="eta"></dd><dt>Created</dt><dd id="created"></dd><dt>Finished</dt><dd id="finished"></dd>
<dt>Priority</dt><dd id="priority"></dd><dt>Deadline</dt><dd id="deadline"></dd>
<dt>In line</dt><dd id="position"></dd><dt>Dispatcher</dt><dd id="dispatcher"></dd></dl>
<p class="actions"><button id="cancel" type="button">Cancel job</button>
<a id="download-results" href="#">Download results (JSONL)</a>
<a id="download-csv" href="#">CSV</a> <a id="download-errors" href="#">Download errors</a></p>
</section>
<h2>Items per second</h2><div id="plot"></div>
<h2>Most frequent errors</h2>
<table id="errors"><thead><tr><th>Code</th><th>Items</th><th>Sample message</th></tr></thead><tbody></tbody></table>
"""


def _page(title: str, page: str, body: str, extra: str = "") -> HTMLResponse:
    return HTMLResponse(
        _HEAD.format(title=html.escape(title), page=page, extra=extra) + body + _TAIL,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@router.get("/", response_class=HTMLResponse)
def job_list() -> HTMLResponse:
    """The job list (state, task, model, progress, age), filtered and a page at a time."""
    return _page("inferq jobs", "list", _LIST)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> HTMLResponse:
    """One job, live: progress, counts, items/s over time, ETA, errors, downloads, cancel."""
    if not _JOB_ID.match(job_id):
        raise JobNotFound(f"no job {job_id!r}")
    return _page(f"inferq job {job_id}", "job", _JOB.format(job_id=job_id), f' data-job="{job_id}"')


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)
