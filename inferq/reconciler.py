"""The reconciler: `inferq.recovery.recover` every ``INFERQ_RECOVER_INTERVAL`` seconds, in a daemon thread of each
worker's main process, so that chunks whose message the broker lost are re-enqueued without a human, and
`inferq.webhooks.enqueue_due`, so that a webhook delivery whose message was lost (or whose next attempt is hours
away) is sent once it is due; between those rounds, its expired-lease rule alone every half lease, so that a
dead worker's chunks go back to the broker within a lease and a half (45 s by default)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from inferq.recovery import recover
from inferq.settings import Settings
from inferq.webhooks import enqueue_due

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


class Reconciler:
    """Runs `recover` every ``settings.recover_interval`` seconds in a daemon thread (a worker's main process
    starts one), and its expired-lease rule every `lease_check_interval` in between. Failures are logged and
    retried at the next round."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], celery: Celery) -> None:
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.recover_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="inferq-reconciler", daemon=True)
        self._thread.start()
        log.info(
            "reconciler: every %ss, expired leases every %ss",
            self.settings.recover_interval,
            lease_check_interval(self.settings),
        )

    def stop(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Stop after the current round; ``wait=False`` only asks (safe in a signal handler)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        tick = lease_check_interval(self.settings)
        next_full = time.monotonic() + self.settings.recover_interval
        while not self._stop.wait(tick):
            full = time.monotonic() >= next_full - tick / 2
            self._run("recover", recover, tick, leases_only=not full)
            if full:
                self._run("enqueue_due", enqueue_due, tick)
                next_full = time.monotonic() + self.settings.recover_interval

    def _run(self, name: str, what: Callable[..., object], retry_in: float, **kwargs: Any) -> None:
        """One round of ``what``, on its own: a failure is logged and does not keep the other rounds from running."""
        try:
            what(self.settings, self.sessions, self.celery, **kwargs)
        except Exception as exc:
            log.warning("reconciler: %s: %s: %s; trying again in %ss", name, type(exc).__name__, exc, retry_in)


def lease_check_interval(settings: Settings) -> float:
    """Seconds between two looks at expired leases: half a lease (a dead worker's chunk then waits at most a lease
    and a half), or the full rounds' interval when that is shorter; at least a second."""
    return max(1.0, min(float(settings.recover_interval), settings.lease_seconds / 2))
