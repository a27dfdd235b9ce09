"""Brokers for fault tests: the shared RabbitMQ, and private Redis servers that a test may restart empty without
touching the shared one."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kombu import Connection, Queue

from server.process import free_port
from tests.support.services import AMQP_URL, _reachable, unavailable


def require_amqp() -> str:
    if not _reachable("127.0.0.1", 5672):
        unavailable("RabbitMQ is not reachable at 127.0.0.1:5672 (start it with `rabbitmq-server -detached`)")
    return AMQP_URL


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free port, keeping nothing on disk: `restart` really brings it
    back empty, as a production Redis without persistence comes back."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart_empty(self) -> None:
        """Kill it and start it again: everything it held (queues, unacknowledged messages) is gone."""
        self.stop()
        self.start()

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url)


@contextmanager
def private_redis(workdir: Path, password: str | None = None) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = PrivateRedis(workdir, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ready_messages(broker_url: str, queue: str) -> int:
    """Messages waiting in ``queue`` (not delivered to any worker), on Redis or RabbitMQ."""
    with Connection(broker_url) as conn:
        if conn.transport.driver_type == "redis":
            return int(conn.default_channel.client.llen(queue))
        try:
            _, count, _ = Queue(queue, channel=conn.default_channel).queue_declare(passive=True)
        except conn.channel_errors:
            return 0  # not declared yet
        return int(count)


def delete_queue(broker_url: str, queue: str) -> None:
    """Remove a test's queue (RabbitMQ keeps durable queues forever otherwise)."""
    with Connection(broker_url) as conn, suppress(*conn.channel_errors):
        Queue(queue, channel=conn.default_channel).delete()
