"""The reconciler: `inferq.recovery.recover` every ``INFERQ_RECOVER_INTERVAL`` seconds, in a daemon thread of each
worker's main process, so that chunks whose message the broker lost are re-enqueued without a human; and
`inferq.webhooks.enqueue_due`, so that a webhook delivery whose message was lost (or whose next attempt is hours
away) is sent once it is due."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from inferq.recovery import recover
from inferq.settings import Settings
from inferq.webhooks import enqueue_due

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


class Reconciler:
    """Runs `recover` every ``settings.recover_interval`` seconds in a daemon thread (a worker's main process
    starts one). Failures are logged and retried at the next round."""

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
        log.info("reconciler: every %ss", self.settings.recover_interval)

    def stop(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Stop after the current round; ``wait=False`` only asks (safe in a signal handler)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.recover_interval):
            for what in (recover, enqueue_due):
                # Each on its own: a failure of one does not keep the other from running.
                try:
                    what(self.settings, self.sessions, self.celery)
                except Exception as exc:
                    log.warning(
                        "reconciler: %s: %s: %s; trying again in %ss",
                        what.__name__,
                        type(exc).__name__,
                        exc,
                        self.settings.recover_interval,
                    )
