"""The README stays a newcomer's five minutes and points only at pages that exist; the documentation site builds
strictly (a broken link, a missing anchor or a reference to a name that no longer exists fails it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.services import unavailable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The README is read in five minutes; everything else lives in docs/.
README_MAX_LINES = 200

#: A Markdown link or image target: `[text](target)` / `![alt](target)`.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: A mkdocstrings directive naming the object a reference page documents.
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.MULTILINE)


def _local_targets(markdown: str) -> list[str]:
    """The link targets that are files of this repository (no scheme, no pure anchor), without their anchors."""
    targets = []
    for target in LINK.findall(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def _nav_pages(nav: list[object]) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages.extend(_nav_pages(value))
            else:
                pages.append(str(value))
    return pages


def test_readme_is_short() -> None:
    # Given the README, when its lines are counted, then a newcomer reads it in five minutes.
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_links_to_docs_exist() -> None:
    # Given the README's links into the repository, then each names a file that exists, and they reach the docs.
    targets = _local_targets(README.read_text(encoding="utf-8"))
    to_docs = [t for t in targets if t.startswith("docs/")]
    assert len(to_docs) >= 10, f"the README should point to the docs' pages, found {to_docs}"
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    # Given mkdocs.yml's navigation and the pages under docs/, then they are the same set.
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = set(_nav_pages(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert nav - pages == set(), f"nav entries without a page: {sorted(nav - pages)}"
    assert pages - nav == set(), f"pages missing from the nav: {sorted(pages - nav)}"


def test_reference_pages_name_modules_that_exist() -> None:
    # Given the reference pages' mkdocstrings directives, then each names a module of the project (the build
    # resolves the names inside them; this says which module went missing without building).
    names = [name for page in (DOCS / "reference").glob("*.md") for name in DIRECTIVE.findall(page.read_text())]
    assert "producer" in names
    missing = [name for name in names if not _is_module(name)]
    assert not missing, f"reference pages name missing modules: {missing}"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent is missing, or is a module rather than a package
        return False


@pytest.mark.slow
def test_docs_build_strictly(tmp_path: Path) -> None:
    # Given the docs tools (the `docs` extra), when the site is built with --strict into a temporary directory,
    # then it builds: every link, anchor and documented name resolves. `.ci/run` builds it too, with `make docs`.
    if importlib.util.find_spec("mkdocs") is None:
        unavailable("mkdocs is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "http.html").is_file()
    assert "producer.Client" in (tmp_path / "site" / "reference" / "producer.html").read_text(encoding="utf-8")
