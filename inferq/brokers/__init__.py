"""What a broker still holds, read for recovery: one module per broker, each behind `BrokerInspector`.

Recovery (`inferq.recovery`) decides from SQL which chunks may have lost their message; a broker that can list
its messages (`inferq.brokers.redis`) lets it tell a lost message from one that is still waiting or being run. A
broker that cannot (`inferq.brokers.amqp`, the embedded SQLAlchemy broker) answers ``None``, and only the rules
that SQL alone proves apply there.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from inferq.errors import BrokerUnavailable

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection

#: A chunk message's ``(job_id, seq)``.
ChunkKey = tuple[str, int]


@dataclass
class Listed:
    """The chunk messages a broker holds."""

    #: Messages waiting in a queue, or delivered recently and not yet acknowledged.
    live: set[ChunkKey] = field(default_factory=set)
    #: Messages delivered long ago and never acknowledged (their worker is gone).
    stranded: set[ChunkKey] = field(default_factory=set)


class BrokerInspector(Protocol):
    """Reads one broker's messages over an open connection, without taking or changing any."""

    def chunk_messages(self, queues: Collection[str], *, stranded_after: float) -> Listed | None:
        """Every chunk message waiting in ``queues`` or delivered but not yet acknowledged (stranded when
        delivered more than ``stranded_after`` seconds ago); ``None`` when this broker cannot tell."""
        ...


def inspector_for(connection: Connection) -> BrokerInspector | None:
    """The inspector of the connection's broker; ``None`` for a broker that has none (the embedded one)."""
    driver = connection.transport.driver_type
    if driver == "redis":
        from inferq.brokers.redis import RedisInspector

        return RedisInspector(connection)
    if driver == "amqp":
        from inferq.brokers.amqp import AmqpInspector

        return AmqpInspector(connection)
    return None


def listed_chunk_messages(celery: Celery, queues: Collection[str], *, stranded_after: float) -> Listed | None:
    """`BrokerInspector.chunk_messages` on a connection of ``celery``'s; `BrokerUnavailable` when the broker
    cannot be read."""
    try:
        with celery.connection_for_read() as conn:
            inspector = inspector_for(conn)
            return None if inspector is None else inspector.chunk_messages(queues, stranded_after=stranded_after)
    except Exception as exc:
        raise BrokerUnavailable(f"could not read the broker's messages: {type(exc).__name__}: {exc}") from exc
