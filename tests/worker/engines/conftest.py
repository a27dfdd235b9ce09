"""Fixtures shared by the engine tests: the one factory their models come from (``one_torch_thread`` lives in
tests/conftest.py, for the benchmark's engine tests too)."""

from __future__ import annotations

import pytest

from tests.support.engines import TinyEngines


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory) -> TinyEngines:
    """Tiny random-weight models of any task, by name and builder arguments, each built once a session."""
    return TinyEngines(tmp_path_factory.mktemp("engine-models"))
