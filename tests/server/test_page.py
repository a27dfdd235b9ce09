"""The job pages in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
``inferq serve`` and a real ``inferq worker`` on PostgreSQL and Redis.

Story: a tenant submits two jobs over HTTP while no worker runs yet. On the second job's page it presses *Cancel job*
and sees the job cancelled. A worker starts; on the first job's page it sees the progress advance (the page polls)
and the job finish, with the items/s plot drawn (a canvas with points). The job list shows both jobs, a page at a
time and filtered by state. Another tenant's key sees neither. Screenshots go to the test's temporary directory.
The server runs two processes and logs JSON (``INFERQ_LOG_FORMAT=json``): one scrape of its ``/metrics`` agrees
with its access lines (route templates), and no key appears in its log.

Skips where Chromium or Playwright is missing (saying which); fails instead under ``CI=true``."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from inferq.tenants import set_share
from server.process import running_server
from tests.server.conftest import MODEL, MakeKey, bearer, jsonl
from tests.support.services import unavailable
from tests.support.tiny_models import corpus
from worker.process import running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: Debian's Chromium (``apt-get install chromium``); ``INFERQ_CHROMIUM`` points elsewhere.
CHROMIUM = os.environ.get("INFERQ_CHROMIUM", "/usr/bin/chromium")
#: Items and chunk size of the job watched. The tenant's cap of one chunk in flight paces the worker (the leader sends
#: the next chunk at its next poll, `DISPATCH_INTERVAL` apart): the page, polling each second, sees the job part done
#: however fast the machine runs the tiny model (on a fast CPU all 50 chunks ran between two of the page's polls).
ITEMS, CHUNK = 1500, 30
DISPATCH_INTERVAL = "0.3"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install 'inferq[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def submit(http: httpx.Client, key: str, rows: list[dict[str, str]]) -> dict[str, Any]:
    response = http.post(
        f"/v1/jobs?task=classification&model={MODEL}&chunk_size={CHUNK}",
        content=jsonl(rows),
        headers={**bearer(key), "Content-Type": "application/jsonl"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = http.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def use_key(page: Any, key: str) -> None:
    page.fill("#key-input", key)
    page.click("#key-save")


def test_the_job_page_shows_a_job_advance_and_finish_and_cancels_another_in_a_real_browser(
    browser: Any,
    api_env: dict[str, str],
    make_key: MakeKey,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    tiny_models: dict[str, Path],
) -> None:
    from playwright.sync_api import expect

    key, tenant = make_key()
    with sessions.begin() as session:
        set_share(session, tenant, max_chunks_in_flight=1)
    other_key, _ = make_key()
    texts = corpus()
    rows = [{"text": texts[i % len(texts)]} for i in range(ITEMS)]
    env = {**api_env, "INFERQ_LOG_FORMAT": "json", "INFERQ_METRICS_CACHE_SECONDS": "0"}
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # Two server processes: the page's requests spread over both, and one scrape must add up both processes' counts.
    with (
        running_server(env, tmp_path / "server.log", "--workers", "2") as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        # Given two jobs of one tenant, submitted while no worker runs
        watched = submit(http, key, rows)
        doomed = submit(http, key, rows[:500])
        context = browser.new_context(base_url=url, viewport={"width": 1100, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)

        # When the tenant opens the second job's page with its key and presses Cancel
        page.goto(f"/jobs/{doomed['id']}")
        use_key(page, key)
        expect(page.locator("#state")).to_have_text("queued")
        page.click("#cancel")

        # Then the page shows it cancelled, nothing run, and the API agrees
        expect(page.locator("#state")).to_have_text("cancelled")
        expect(page.locator("#rest-label")).to_have_text("Cancelled")
        expect(page.locator("#cancel")).to_be_disabled()
        page.screenshot(path=str(shots / "job-cancelled.png"), full_page=True)
        assert http.get(f"/v1/jobs/{doomed['id']}", headers=bearer(key)).json()["state"] == "cancelled"

        # When the first job's page is open (the key stays in the tab's sessionStorage) and a worker starts
        page.goto(f"/jobs/{watched['id']}")
        expect(page.locator("#progress-text")).to_contain_text(f"0 of {ITEMS} items")
        # (with its priority, no deadline, and its place in line: nothing ahead of it once the other is cancelled)
        expect(page.locator("#priority")).to_have_text("5")
        expect(page.locator("#deadline")).to_have_text("–")
        expect(page.locator("#position")).to_have_text("next")
        # (and the dispatcher: nobody leads while no worker runs)
        expect(page.locator("#dispatcher")).to_contain_text("no leader")
        seen: list[int] = []
        dispatcher: list[str] = []
        worker_env = {**api_env, "INFERQ_DISPATCH_INTERVAL": DISPATCH_INTERVAL}
        with running_worker(worker_env, tmp_path / "worker.log", "--models", MODEL, "--concurrency", "1"):
            # Then the page shows the progress advance, then the job finished
            deadline = time.monotonic() + 240
            while page.locator("#state").text_content() != "succeeded":
                dispatcher.append(page.locator("#dispatcher").text_content() or "")
                done = int(page.locator("#n-succeeded").text_content() or 0) + int(
                    page.locator("#n-failed").text_content() or 0
                )
                if not seen or done != seen[-1]:
                    seen.append(done)
                    if 0 < done < ITEMS and len(seen) == 2:
                        page.screenshot(path=str(shots / "job-running.png"), full_page=True)
                assert time.monotonic() < deadline, f"the page still shows {seen[-1]} done after 240 s"
                time.sleep(0.1)
        assert any(0 < n < ITEMS for n in seen), f"the page never showed the job part done: {seen}"
        # And while it ran, the dispatcher's leader (the worker's main process) and the job's queue against the window
        queue = api_env["INFERQ_DEFAULT_QUEUE"]
        leading = re.compile(rf"^leader [^ ]+:\d+, last round \d+ s ago, released \d+; queue {queue}: \d+/16 waiting")
        assert any(leading.match(text) for text in dispatcher), sorted(set(dispatcher))
        # (with the tenant's cap holding the job's other chunks back, named)
        assert any(f"by tenant caps: {tenant}" in text for text in dispatcher), sorted(set(dispatcher))
        # And once the job ended, the page no longer shows it (a finished job has no dispatcher)
        expect(page.locator("#dispatcher")).to_have_text("–")
        assert seen == sorted(seen), seen
        expect(page.locator("#progress-text")).to_have_text(f"{ITEMS} of {ITEMS} items (100%)")
        expect(page.locator("#n-succeeded")).to_have_text(str(ITEMS))
        expect(page.locator("#eta")).to_have_text("finished")
        expect(page.locator("#errors tbody")).to_contain_text("No failed items.")

        # and the items/s plot is drawn from the stored timeline: a canvas with its points, and pixels painted
        expect(page.locator("#plot canvas").first).to_be_visible()
        timeline = http.get(f"/v1/jobs/{watched['id']}/timeline", headers=bearer(key)).json()
        expect(page.locator("#plot")).to_have_attribute("data-points", str(len(timeline["points"])))
        assert sum(p["items"] for p in timeline["points"]) == ITEMS
        painted = page.evaluate(
            """() => { const c = document.querySelector('#plot canvas');
                       const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                       let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 100) n++;
                       return n; }"""
        )
        assert painted > 50, f"the plot's canvas has {painted} blue pixels"
        page.screenshot(path=str(shots / "job-finished.png"), full_page=True)
        if os.environ.get("INFERQ_PAGE_SCREENSHOT"):
            shutil.copy(shots / "job-finished.png", os.environ["INFERQ_PAGE_SCREENSHOT"])

        # When the job list is opened with the key, then it shows both jobs with their states
        page.goto("/")
        expect(page.locator(f"tr[data-job='{watched['id']}'] .state")).to_have_text("succeeded")
        expect(page.locator(f"tr[data-job='{doomed['id']}'] .state")).to_have_text("cancelled")
        page.screenshot(path=str(shots / "job-list.png"), full_page=True)

        # and a page at a time: with one job a page, the newest first, then the older one, then back
        page.goto("/?limit=1")
        expect(page.locator(f"tr[data-job='{doomed['id']}']")).to_be_visible()
        assert page.locator("tr[data-job]").count() == 1
        page.click("#next")
        expect(page.locator(f"tr[data-job='{watched['id']}']")).to_be_visible()
        expect(page.locator("#next")).to_be_disabled()
        page.click("#first")
        expect(page.locator(f"tr[data-job='{doomed['id']}']")).to_be_visible()
        # and filtered: only the cancelled one
        page.goto("/")
        page.select_option("#filters select[name=state]", "cancelled")
        page.click("#filters button[type=submit]")
        expect(page.locator(f"tr[data-job='{watched['id']}']")).to_have_count(0)
        expect(page.locator(f"tr[data-job='{doomed['id']}']")).to_be_visible()

        # When another tenant's key is used (a new tab: its own sessionStorage)
        stranger = context.new_page()
        stranger.goto("/")
        use_key(stranger, other_key)
        # Then its list holds neither job, and the first job's page says there is no such job
        expect(stranger.locator("#message")).to_have_text("No jobs.")
        assert stranger.locator("tr[data-job]").count() == 0
        stranger.goto(f"/jobs/{watched['id']}")
        expect(stranger.locator("#message")).to_have_text("No such job for this key.")
        expect(stranger.locator("#n-total")).to_have_text("")
        stranger.screenshot(path=str(shots / "other-tenant.png"), full_page=True)
        context.close()

        # And one scrape of the server's metrics agrees with the jobs and with its own access log
        time.sleep(1)  # requests the closed tab left in flight end
        metrics = scrape(http)
        time.sleep(0.5)  # their access lines reach the log file

    log = (tmp_path / "server.log").read_text()
    access = [json.loads(line) for line in log.splitlines() if '"inferq.access"' in line]
    by_route = Counter((a["route"], a["method"], str(a["status"])) for a in access)
    for (route, method, status), n in by_route.items():
        assert (
            metrics.get(("inferq_api_requests_total", (("method", method), ("route", route), ("status", status)))) == n
        )
    assert by_route[("/v1/jobs", "POST", "201")] == 2
    sizes = len(jsonl(rows)) + len(jsonl(rows[:500]))
    assert metrics[("inferq_api_upload_bytes_total", (("route", "/v1/jobs"),))] == sizes
    assert metrics[("inferq_jobs", (("state", "succeeded"),))] >= 1
    assert metrics[("inferq_jobs", (("state", "cancelled"),))] >= 1
    assert ("inferq_webhook_deliveries", (("state", "pending"),)) in metrics

    # And the server's log is JSON access lines by route template, without any key
    assert key not in log and other_key not in log
    assert key.split("_", 2)[2] not in log  # iq_<id>_<secret>: the secret may hold "_"
    routes = {(a["route"], a["status"]) for a in access}
    assert ("/v1/jobs/{job_id}/timeline", 200) in routes and ("/v1/jobs/{job_id}", 404) in routes
    assert ("/v1/jobs/{job_id}/cancel", 200) in routes and ("/v1/jobs", 201) in routes
    assert all(watched["id"] not in a["route"] for a in access)
