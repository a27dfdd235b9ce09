"""A real webhook receiver for tests: a threaded ``http.server`` on a loopback port that records every request
(headers and body, byte for byte) and answers from a script: a status code per call, ``"hang"`` (answer nothing
for longer than the sender's timeout), ``"trickle"`` (a 200 status line and headers at once, then the body one byte
every ``trickle_seconds``, for ``hang_seconds``: each read is quick, the answer never ends) or ``"flood"`` (a 200
with an endless body, as fast as the sender reads it). It can be down (nothing listens on its port) and come up later on the
same port, as a receiver that is down for a while does."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from tests.support.brokers import free_port

Answer = int | Literal["hang", "trickle", "flood"]


@dataclass(frozen=True)
class Received:
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """Answers call ``n`` (from 0) with ``script[n]``, and 200 once the script is used up."""

    def __init__(
        self, script: list[Answer] | None = None, *, hang_seconds: float = 5.0, trickle_seconds: float = 0.2
    ) -> None:
        self.port = free_port()
        self.script = list(script or [])
        self.hang_seconds = hang_seconds
        self.trickle_seconds = trickle_seconds
        self.received: list[Received] = []
        #: Per call: seconds from the request's arrival until the sender went away or the answer ended.
        self.held: list[float] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/inferq"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    n = len(receiver.received)
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                answer = receiver.script[n] if n < len(receiver.script) else 200
                if answer == "hang":
                    receiver._release.wait(receiver.hang_seconds)
                    return  # close without an answer
                if answer in ("trickle", "flood"):
                    self._endless(answer)
                    return
                self.send_response(answer)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def _endless(self, answer: str) -> None:
                started = time.monotonic()
                self.send_response(200)
                self.send_header("content-length", str(1 << 40))
                self.end_headers()
                piece = b"x" if answer == "trickle" else b"x" * 65536
                try:
                    while time.monotonic() - started < receiver.hang_seconds and not receiver._release.is_set():
                        self.wfile.write(piece)
                        self.wfile.flush()
                        if answer == "trickle":
                            receiver._release.wait(receiver.trickle_seconds)
                except OSError:
                    pass  # the sender went away
                with receiver._lock:
                    receiver.held.append(time.monotonic() - started)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """The first ``n`` requests, once they have come (`AssertionError` after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received[:n])
            assert time.monotonic() < deadline, f"{len(self.received)} of {n} webhook requests after {timeout}s"
            time.sleep(0.05)
