"""Security headers on every answer: the job pages may load from their own origin only, every other answer nothing,
no page may be framed, no answer sniffed, no referrer sent; and the pages hold nothing that their policy would block
(no inline script, style or event handler), so that they work under it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inferq.settings import Settings
from server.app import create_app
from server.headers import DEFAULT_POLICY, DOCS_POLICY, PAGE_POLICY


@pytest.fixture
def app_client(sqlite_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as client:
        yield client


#: A job page's path: any id serves the page (its script then asks the API); fixed, so that every pytest-xdist
#: process collects the same test ids.
JOB_PAGE = f"/jobs/{'0' * 32}"


def directives(policy: str) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in (part.strip() for part in policy.split(";")) if d}


@pytest.mark.parametrize(
    ("path", "status", "policy"),
    [
        ("/", 200, PAGE_POLICY),
        (JOB_PAGE, 200, PAGE_POLICY),
        ("/static/page.js", 200, PAGE_POLICY),
        ("/healthz", 200, DEFAULT_POLICY),
        ("/v1/jobs", 401, DEFAULT_POLICY),
        ("/v1/jobs/%00", 400, DEFAULT_POLICY),
        ("/nowhere", 404, DEFAULT_POLICY),
        ("/openapi.json", 200, DEFAULT_POLICY),
        ("/docs", 200, DOCS_POLICY),
    ],
)
def test_every_answer_carries_the_security_headers(app_client: TestClient, path: str, status: int, policy: str) -> None:
    answer = app_client.get(path)
    assert answer.status_code == status
    assert answer.headers["content-security-policy"] == policy
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert directives(policy)["frame-ancestors"] == "'none'"


def test_the_page_policy_allows_this_origin_only() -> None:
    page = directives(PAGE_POLICY)
    assert page["default-src"] == "'none'"
    for kind in ("script-src", "style-src", "connect-src"):
        assert page[kind] == "'self'", kind
    assert "unsafe" not in PAGE_POLICY and "http" not in PAGE_POLICY
    assert directives(DEFAULT_POLICY)["default-src"] == "'none'"


@pytest.mark.parametrize("path", ["/", JOB_PAGE])
def test_the_pages_hold_nothing_their_policy_blocks(app_client: TestClient, path: str) -> None:
    html = app_client.get(path).text
    # Every script is a file of this origin, none inline
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all(re.search(r'src="/static/', attrs) and not body.strip() for attrs, body in scripts)
    # Every stylesheet too, and no inline style or event handler
    assert re.findall(r'<link rel="stylesheet" href="(/static/[^"]+)"', html)
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html) and "javascript:" not in html
