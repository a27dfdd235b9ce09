"""The life cycles of jobs, chunks and items, as stored in SQL."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    #: Stored and enqueued; no worker has started any of its chunks yet.
    QUEUED = "queued"
    #: At least one chunk has started; some items are still unfinished.
    RUNNING = "running"
    #: Every item ended (each one succeeded or failed on its own).
    SUCCEEDED = "succeeded"
    #: The job as a whole could not run (its model would not load, say); see `Job.error`.
    FAILED = "failed"
    #: Stopped by the user; finished items keep their results.
    CANCELLED = "cancelled"
    #: Its deadline (`Job.deadline_at`) passed before every item ended; finished items keep their results.
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATES


FINISHED_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})
#: The others: a job that a worker may still claim, cancel or finish.
UNFINISHED_JOB_STATES = frozenset(JobState) - FINISHED_JOB_STATES


class ItemState(str, Enum):
    """An item's state is stored only once it has ended by itself (`inferq.schema.Result.state`: succeeded or
    failed); before that it follows its job's (`item_state_of`)."""

    #: Waiting for a worker (also while its chunk is being computed).
    QUEUED = "queued"
    #: Has its result.
    SUCCEEDED = "succeeded"
    #: Has an error code and message instead of a result.
    FAILED = "failed"
    #: Its job was cancelled before it ran.
    CANCELLED = "cancelled"
    #: Its job's completion window passed before it ran.
    EXPIRED = "expired"


#: The item states a result row stores: the item ended by itself.
STORED_ITEM_STATES = (ItemState.SUCCEEDED, ItemState.FAILED)

#: What an item without a result is, by its job's state: a job stopped before the item ran leaves it cancelled or
#: expired; any other job's item is still waiting.
UNRUN_ITEM_STATE = {JobState.CANCELLED: ItemState.CANCELLED, JobState.EXPIRED: ItemState.EXPIRED}


def item_state_of(stored: ItemState | str | None, job: JobState) -> ItemState:
    """An item's state from its result row's state (``None``: no result yet) and its job's state."""
    if stored is not None:
        return ItemState(stored)
    return UNRUN_ITEM_STATE.get(job, ItemState.QUEUED)


class ChunkState(str, Enum):
    #: Stored and waiting: with a message on the broker once released (`Chunk.enqueued_at` set, by the submit on
    #: SQLite, by the dispatcher on PostgreSQL: `inferq.dispatcher`), in SQL alone before.
    QUEUED = "queued"
    #: Claimed by a worker whose lease runs until `Chunk.lease_until`.
    RUNNING = "running"
    #: Every item of the chunk has ended.
    DONE = "done"


class DeliveryState(str, Enum):
    #: Not yet received by the endpoint; its next attempt is due at `WebhookDelivery.next_attempt_at`.
    PENDING = "pending"
    #: The endpoint answered 2xx.
    DELIVERED = "delivered"
    #: Every attempt failed for longer than the retry schedule allows; kept, with its attempts, for the user.
    FAILED = "failed"
