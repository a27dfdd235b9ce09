"""RabbitMQ (AMQP). Its messages cannot be listed without taking them off their queue, so `AmqpInspector` cannot
tell which chunks still have one. Nor is that needed as on Redis: RabbitMQ keeps durable messages across its
restarts, and hands the unacknowledged messages of a dead connection back at once, so a message is not lost with
its worker. Only the rules that SQL alone proves (an expired lease, a chunk never enqueued) apply there.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from inferq.brokers import Listed

if TYPE_CHECKING:
    from kombu import Connection


class AmqpInspector:
    """`BrokerInspector` of a RabbitMQ broker."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def chunk_messages(self, queues: Collection[str], *, stranded_after: float) -> Listed | None:
        return None
