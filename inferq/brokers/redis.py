"""Redis, as kombu's Redis transport lays messages out: a list per queue (one more per priority step) of JSON
envelopes, and the messages delivered but not yet acknowledged in one hash (delivery tag → ``[envelope, exchange,
routing_key]``) with their delivery times in a sorted set.

The lists, the hash and the sorted set are read in one MULTI/EXEC, so that a message is seen in one place or the
other; a message moving from a list to the hash (two steps in kombu) can still be missed, which is why recovery
looks again, after a grace period, for a chunk it did not find.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from inferq.brokers import ChunkKey, Listed
from inferq.task_specs import RUN_CHUNK

if TYPE_CHECKING:
    from kombu import Connection


class RedisInspector:
    """`BrokerInspector` of a Redis broker."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def chunk_messages(self, queues: Collection[str], *, stranded_after: float) -> Listed:
        channel: Any = self.connection.default_channel
        names = [q if not pri else f"{q}{channel.sep}{pri}" for q in sorted(queues) for pri in channel.priority_steps]
        with channel.client.pipeline(transaction=True) as pipe:
            for name in names:
                pipe.lrange(name, 0, -1)
            pipe.hgetall(channel.unacked_key)
            pipe.zrange(channel.unacked_index_key, 0, -1, withscores=True)
            *lists, unacked, delivered = pipe.execute()
        listed = Listed()
        for raw in (m for messages in lists for m in messages):
            if (chunk := chunk_of_message(raw)) is not None:
                listed.live.add(chunk)
        delivered_at = {_text(tag): float(score) for tag, score in delivered}
        oldest_live = time.time() - stranded_after
        for tag, raw in unacked.items():
            if (chunk := chunk_of_message(raw)) is not None:
                # No delivery time (an index entry not written yet): as good as just delivered.
                fresh = delivered_at.get(_text(tag), time.time()) >= oldest_live
                (listed.live if fresh else listed.stranded).add(chunk)
        listed.stranded -= listed.live
        return listed


def chunk_of_message(raw: bytes | str) -> ChunkKey | None:
    """The ``(job_id, seq)`` a raw Redis entry carries: a queued message, or an unacknowledged one (stored as
    ``[message, exchange, routing_key]``). JSON only: anything else is not ours and is never decoded."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        if message.get("content-type") != "application/json":
            return None
        if (message.get("headers") or {}).get("task") != RUN_CHUNK:
            return None
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]), int(args[1])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
