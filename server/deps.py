"""What every route depends on: the running app's `Runtime` (made in the app's lifespan)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from inferq.settings import Settings
from producer.client import Client


@dataclass
class Runtime:
    """What the app made at start: the settings and a `Client` on the app's database engine and Celery app."""

    settings: Settings
    client: Client


def runtime(request: Request) -> Runtime:
    """The running app's `Runtime`."""
    made = request.app.state.runtime
    assert isinstance(made, Runtime), "the app has not started (its lifespan did not run)"
    return made


Made = Annotated[Runtime, Depends(runtime)]
