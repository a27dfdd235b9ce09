"""The continuation in real workers, on Redis and RabbitMQ: one message runs the chunks queued after its own, each
claimed once, and the chunks' own messages, delivered later, claim nothing. A pool process SIGKILLed while its
message runs a continued chunk loses nothing and repeats nothing: the main process hands the message back, which
finds its own chunk done; the continued chunk's own message is deferred while its lease lives, then runs it."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.faults.conftest import EnvFor
from tests.support.jobs import client_for, pid_of, sentences
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: Chunks of the job, and items per chunk: a few tenths of a second each of the slow model.
CHUNKS = 5
CHUNK = 24


def continued_chunks(log: str, job_id: str) -> list[int]:
    """The chunks of ``job_id`` a message ran after its own, as the worker's log says, in the order they ended."""
    return [int(seq) for seq in re.findall(rf"job {job_id} chunk (\d+): done, .*continuing chunk", log)]


@pytest.mark.parametrize("dispatch", ["direct", "fair"])
def test_one_message_runs_the_chunks_after_its_own_each_claimed_once(
    tmp_path: Path, env_for: EnvFor, record: Record, dispatch: str
) -> None:
    # Given one worker of one pool process with the continuation on, and a job of five chunks (every message sent at submit, or released by
    # the dispatcher as it goes)
    env = env_for(dispatch=dispatch, continue_chunks=64)
    log_path = tmp_path / "worker.log"
    with running_worker(env, log_path, "--models", "slow"), client_for(env) as client:
        # When the job runs
        job_id = client.submit("classification", "slow", sentences(CHUNKS * CHUNK), chunk_size=CHUNK).job_id
        status = client.wait(job_id, timeout=120)

    # Then every item ended once, every chunk was claimed once, and messages ran chunks after their own: under
    # ``direct`` the first message ran them all, its followers' messages found them done
    assert status.state.value == "succeeded"
    items = record.assert_every_item_once(job_id)
    assert {item.attempts for item in items} == {1}
    assert [c.attempts for c in record.chunks(job_id)] == [1] * CHUNKS
    continued = continued_chunks(worker_log(log_path), job_id)
    if dispatch == "direct":
        assert continued == list(range(1, CHUNKS))
    else:
        assert continued and set(continued) <= set(range(1, CHUNKS))


def test_a_pool_process_killed_mid_continuation_loses_and_repeats_nothing(
    tmp_path: Path, env_for: EnvFor, record: Record
) -> None:
    # Given one worker of one pool process (leases of 30 s: the killed chunk's own message comes back well within
    # one, after the pool process's restart), and a job of three chunks of a couple of seconds each
    env = env_for(lease_seconds=30, continue_chunks=64)
    log_path = tmp_path / "worker.log"
    with running_worker(env, log_path, "--models", "slow"), client_for(env) as client:
        job_id = client.submit("classification", "slow", sentences(3 * 150), chunk_size=150).job_id

        # When the pool process is SIGKILLed while its first message runs the next chunk, the first one stored
        def continuing() -> str | None:
            first, second, _ = record.chunks(job_id)
            leading = first.state == "done" and second.state == "running"
            return second.worker if leading and second.leader == f"{job_id}/0" else None

        victim = wait_for(continuing, 120, "a continued chunk to start")
        os.kill(pid_of(victim), signal.SIGKILL)
        status = client.wait(job_id, timeout=180)

    # Then every item ended once; the killed chunk ran again (its items count two attempts), the others once
    assert status.state.value == "succeeded"
    items = record.assert_every_item_once(job_id)
    assert [c.attempts for c in record.chunks(job_id)] == [1, 2, 1]
    assert {i.index for i in items if i.attempts == 2} == set(range(150, 300))
    # And the killed chunk's own message was deferred while its lease lived, then ran it
    log = worker_log(log_path)
    assert f"job {job_id} chunk 1: running in another worker's batch; looking again later" in log
