"""inferq's producer side: submit jobs, poll them, export results. Light: imports no torch or transformers.

The client (SQLAlchemy, and Celery when it sends) loads on first use of one of its names, so that importing a
module of this package (the CLI's, the input reader) does not pay for it; so does `RemoteClient` (httpx), the client
over the HTTP API. Both implement `JobClient` (`producer.protocol`), the one client interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferq.lazy import lazy_attributes

if TYPE_CHECKING:
    from producer.client import Client, JobStatus, Submission
    from producer.protocol import Exported, JobClient
    from producer.remote import RemoteClient
    from producer.results import ResultRow

__all__ = ["Client", "Exported", "JobClient", "JobStatus", "RemoteClient", "ResultRow", "Submission"]

#: Public names → the module each is imported from on first access.
_LAZY = {
    "Client": "producer.client",
    "JobStatus": "producer.client",
    "Submission": "producer.client",
    "JobClient": "producer.protocol",
    "Exported": "producer.protocol",
    "ResultRow": "producer.results",
    "RemoteClient": "producer.remote",
}


__getattr__ = lazy_attributes(__name__, _LAZY)
