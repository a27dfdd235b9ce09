"""Fixtures shared by the engine tests (``one_torch_thread`` lives in tests/conftest.py, for the benchmark's
engine tests too)."""
