"""The Celery task's retry delays."""

from __future__ import annotations

from inferq import constants
from inferq.errors import backoff
from worker.tasks import RETRY_BASE_SECONDS, RETRY_MAX_SECONDS


def test_a_transient_failure_waits_2_4_8_seconds_up_to_a_minute() -> None:
    waits = [backoff(n, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS) for n in range(8)]
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff(10_000, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS) == 60  # no overflow, however long the outage


def test_a_deferred_chunk_looks_again_after_5_10_20_seconds_up_to_a_minute() -> None:
    base, cap = constants.COALESCED_RECHECK_SECONDS, constants.COALESCED_RECHECK_MAX_SECONDS
    assert [backoff(n, base, cap) for n in range(6)] == [5, 10, 20, 40, 60, 60]
