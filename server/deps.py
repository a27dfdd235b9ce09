"""What every route depends on: the running app's `Runtime` (made in the app's lifespan)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request
from sqlalchemy import Engine

from inferq.settings import Settings
from producer.client import Client
from server.openai.validation import Validator


@dataclass
class Runtime:
    """What the app made at start: the settings and a `Client` on the app's database engine and Celery app."""

    settings: Settings
    client: Client
    #: The status polls' engine: autocommit (one statement, sent without BEGIN and ROLLBACK) and no ping on
    #: checkout (`server.auth.job_for_key` retries once after a dropped connection instead).
    polls: Engine
    #: The threads status polls run in, fewer than the pool's 40: a poll holds the GIL for most of its time,
    #: and more threads than cores only queue on it, each wait a switch interval long.
    poll_threads: CapacityLimiter
    #: Slots of the synchronous calls of the OpenAI-compatible API (`server.openai.sync`): one taken per call, a
    #: call that finds none is answered 503.
    sync_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(16))
    #: The threads that validate batches of the OpenAI-compatible API (`server.openai.validation`).
    validator: Validator | None = None

    @property
    def validation(self) -> Validator:
        assert self.validator is not None, "the app has not started (its lifespan did not run)"
        return self.validator


async def runtime(request: Request) -> Runtime:
    """The running app's `Runtime`. A coroutine, so that FastAPI runs it on the event loop instead of sending it
    to its thread pool (a thread hop costs more than the lookup)."""
    made = request.app.state.runtime
    assert isinstance(made, Runtime), "the app has not started (its lifespan did not run)"
    return made


Made = Annotated[Runtime, Depends(runtime)]
