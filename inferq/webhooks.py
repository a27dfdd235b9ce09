"""Webhooks: when a job ends, inferq POSTs an event to the job's webhook URL, signed per the Standard Webhooks spec,
at least once, surviving restarts.

The protocol (its statements are `inferq.store.outbox`):

1. **Record** (`inferq.store.outbox.record_job_ends`): the transaction that ends a job
   (`inferq.store.chunks.finish_jobs_if_complete`, `producer.client.Client.cancel`) inserts the job's
   `WebhookDelivery` (an outbox row: the event, the URL, the body serialized once) when the job has a webhook URL.
   Only a job whose guarded state change this very transaction made gets one, so a job's end makes exactly one
   delivery whichever paths race to end it.
2. **Enqueue**: after that commit, the same process sends the Celery task `DELIVER_WEBHOOK` with the delivery's id
   to `Settings.webhook_queue`; if the message is lost (a crash between commit and send, a broker that forgets),
   every worker's reconciler sends the deliveries that have been due for longer than ``INFERQ_RECOVER_OLDER_THAN``
   (`enqueue_due`), claiming each by a conditional UPDATE so that concurrent reconcilers send one message.
3. **Send** (`deliver`, the task's body): claim the delivery (a conditional UPDATE that pushes ``next_attempt_at``
   past the attempt's longest duration, so that a second message for it finds it not due and leaves it), check the
   URL again (DNS may have changed since submit), sign and POST the stored body within ONE deadline
   (``INFERQ_WEBHOOK_TIMEOUT``: connecting, sending and the whole answer, however slowly it trickles in; at most
   ``INFERQ_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer are read), then record a `WebhookAttempt`:
   2xx → ``delivered``; anything else → the next attempt is due after the next delay of
   ``INFERQ_WEBHOOK_RETRY_DELAYS``, or the delivery is ``failed`` after the last one. Every attempt sends the same
   bytes with the same ``webhook-id``; the timestamp and signature are the attempt's own.

At-least-once: a worker that dies between the POST and recording it leaves the delivery pending, and it is sent
again once its claim runs out; receivers drop duplicates by ``webhook-id``.

Isolation: deliveries run apart from chunks. ``inferq worker`` consumes the chunk queues itself and starts one
webhook sender beside it (``inferq worker --webhooks-only``: a Celery worker process of its own on
`Settings.webhook_queue`, ``INFERQ_WEBHOOK_CONCURRENCY`` pool processes, no models), so a receiver that answers
slowly holds a sender process for one deadline at most and never a chunk. The task has a hard Celery time limit
(deadline + `TIME_LIMIT_MARGIN_SECONDS`) in case anything outside the POST hangs.

URLs (`check_url`): http(s) only, and every address the host resolves to must be public, unless
``INFERQ_WEBHOOK_ALLOW_PRIVATE`` is set. Checked at submit and before each attempt. Redirects are not followed
(a 3xx is a failed attempt), so a receiver cannot bounce a request to an address the check refused. The address is
resolved twice, once by the check and once by the HTTP client, so a DNS answer that changes in between (rebinding)
is not caught by this check alone: a deployment that must rule it out sends webhooks through an egress proxy.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from inferq import __version__, constants
from inferq.errors import InvalidSignature, WebhookUrlRefused
from inferq.schema import utcnow
from inferq.settings import Settings
from inferq.states import DeliveryState
from inferq.store import outbox
from inferq.store.secrets import signing_secrets
from inferq.task_specs import DELIVER_WEBHOOK

if TYPE_CHECKING:
    import httpx
    from celery import Celery

log = logging.getLogger(__name__)

#: Seconds a claimed delivery stays out of other senders' reach beyond its deadline (``INFERQ_WEBHOOK_TIMEOUT``, one
#: for the whole attempt): covers checking the URL and recording the attempt, and outlasts the delivery task's hard
#: time limit (`TIME_LIMIT_MARGIN_SECONDS`), so that a second sender never overlaps a first one still running.
CLAIM_MARGIN_SECONDS = 30.0

#: Seconds the delivery task may run beyond an attempt's deadline before Celery kills its process (the hard time
#: limit, `inferq.celery_app`): claiming, the URL's DNS lookup and recording the attempt. The deadline cuts the
#: POST itself; the limit is the backstop for anything else that hangs.
TIME_LIMIT_MARGIN_SECONDS = 20.0

#: Most due deliveries one reconciler round sends (the rest wait for the next round).
SWEEP_BATCH = 1_000

#: Seconds either side of now a received webhook's timestamp may be (the Standard Webhooks default): a replayed
#: old request is refused.
DEFAULT_TOLERANCE_SECONDS = 300

#: Characters of an error kept on an attempt.
MAX_ERROR_CHARS = 500


# -- URLs ----------------------------------------------------------------------------------------------------


def check_url(url: str, settings: Settings) -> str:
    """``url`` if inferq may POST to it, else `WebhookUrlRefused` (``field="webhook_url"``): an http or https URL
    with a host, and, unless ``settings.webhook_allow_private``, a host whose every address (it is resolved) is a
    public one: no private, loopback, link-local, unspecified, multicast, reserved or shared (carrier-grade NAT)
    address, IPv4-mapped IPv6 included."""
    if not isinstance(url, str) or not url:
        raise WebhookUrlRefused("webhook_url must be an http or https URL", field="webhook_url")
    if len(url) > constants.MAX_WEBHOOK_URL_CHARS:
        raise WebhookUrlRefused(
            f"webhook_url is longer than {constants.MAX_WEBHOOK_URL_CHARS} characters", field="webhook_url"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"webhook_url is not a valid URL: {exc}", field="webhook_url") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused("webhook_url must use http or https", field="webhook_url")
    host = parts.hostname
    if not host:
        raise WebhookUrlRefused("webhook_url has no host", field="webhook_url")
    if any(ch.isspace() for ch in url):
        raise WebhookUrlRefused("webhook_url must not contain spaces", field="webhook_url")
    if settings.webhook_allow_private:
        return url
    for address in _resolve(host, port or (443 if parts.scheme == "https" else 80)):
        if not is_public(address):
            raise WebhookUrlRefused(
                f"webhook_url's host {host!r} resolves to {address}, a non-public address "
                "(set INFERQ_WEBHOOK_ALLOW_PRIVATE to allow it)",
                field="webhook_url",
            )
    return url


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may go to ``address``: globally routable unicast (an IPv4-mapped IPv6 address is judged as
    the IPv4 address it carries)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` stands for: itself when it is an IP literal, else what the resolver answers."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefused(f"webhook_url's host {host!r} does not resolve: {exc}", field="webhook_url") from None
    addresses = []
    for info in infos:
        # An IPv6 address may carry a zone (``fe80::1%eth0``): the part before it is the address.
        text = str(info[4][0]).split("%", 1)[0]
        addresses.append(ipaddress.ip_address(text))
    if not addresses:
        raise WebhookUrlRefused(f"webhook_url's host {host!r} has no address", field="webhook_url")
    return addresses


# -- signing (Standard Webhooks) -------------------------------------------------------------------------------


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret: the base64-decoded part after the prefix."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""
    data = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp}.".encode() + data
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    secrets: str | Sequence[str], msg_id: str, body: bytes | str, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt at sending ``body``: one ``v1,`` signature per secret
    in ``secrets`` (the tenant's, and its previous one while a rotation's overlap lasts), space-separated, so that
    a receiver holding either secret verifies the request."""
    ts = int(time.time()) if timestamp is None else timestamp
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(secret, msg_id, ts, body) for secret in keys),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> None:
    """Check a received webhook (what a receiver does; header names in any case): its timestamp is within
    ``tolerance`` seconds of ``now`` and one of its ``v1`` signatures matches. `InvalidSignature` otherwise."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature(f"webhook-timestamp is more than {tolerance:g}s away from now")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        version, _, _ = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return
    raise InvalidSignature("no matching v1 signature")


# -- 1. record ----------------------------------------------------------------------------------------------
# `record_job_ends` (with the event's body, `event_payload`) is a statement of the outbox: `inferq.store.outbox`.


# -- 2. enqueue ------------------------------------------------------------------------------------------------


def send_deliveries(
    celery: Celery, settings: Settings, delivery_ids: Sequence[str], *, countdown: float | None = None
) -> None:
    """Enqueue ``delivery_ids`` (after the commit that recorded them; ``countdown``: to run that many seconds from
    now). A broker that fails is logged, not raised: the deliveries are recorded, and a reconciler sends them once
    they have been due for a while."""
    for delivery_id in delivery_ids:
        try:
            celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=settings.webhook_queue, countdown=countdown)
        except Exception as exc:
            log.warning(
                "webhook %s recorded but not enqueued (%s: %s); a reconciler will send it",
                delivery_id,
                type(exc).__name__,
                exc,
            )


def enqueue_due(settings: Settings, sessions: sessionmaker[Session], celery: Celery) -> list[str]:
    """Send the pending deliveries that have been due for longer than ``settings.recover_older_than`` (their message
    is lost, or was never sent). Each is claimed by a conditional UPDATE that sets its ``next_attempt_at`` to now,
    so that concurrent reconcilers send it once and it is not looked at again before that time has passed."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=settings.recover_older_than)
    with sessions() as session:
        due = outbox.due_deliveries(session, cutoff, SWEEP_BATCH)
    sent = []
    for row in due:
        delivery_id = row.id
        with sessions.begin() as session:
            taken = outbox.take_due(session, delivery_id, row.next_attempt_at, now)
        if not taken:
            continue  # sent, or claimed by another reconciler, meanwhile
        celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=settings.webhook_queue)
        sent.append(delivery_id)
    if sent:
        log.warning("re-enqueued %d webhook deliver(ies) that were due: %s", len(sent), ", ".join(sent))
    return sent


# -- 3. send ----------------------------------------------------------------------------------------------------


class Sent(str, Enum):
    """What one call of `deliver` came to."""

    #: The endpoint answered 2xx: the delivery is ``delivered``.
    DELIVERED = "delivered"
    #: The attempt failed; the next one is due after `Delivered.retry_in` seconds.
    RETRYING = "retrying"
    #: The last attempt failed: the delivery is ``failed``.
    FAILED = "failed"
    #: Nothing sent: the delivery is gone, no longer pending, not yet due, or being sent by another process.
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Delivered:
    outcome: Sent
    #: With `Sent.RETRYING`: seconds until the next attempt is due.
    retry_in: float | None = None
    #: The attempt's number (1 for the first), when one was made.
    attempt: int | None = None


@dataclass(frozen=True)
class _Claimed:
    id: str
    job_id: str
    url: str
    payload: str
    #: The tenant's signing secrets: its current one, then its previous one while a rotation's overlap lasts.
    secrets: tuple[str, ...]


def deliver(
    settings: Settings,
    sessions: sessionmaker[Session],
    delivery_id: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Delivered:
    """One attempt at a delivery, if it is pending and due (the protocol is this module's docstring): claim it,
    check its URL, POST it signed within the attempt's deadline, record the attempt. ``transport``: httpx's, for
    tests that need no network."""
    claimed = _claim(settings, sessions, delivery_id)
    if claimed is None:
        return Delivered(Sent.SKIPPED)
    at = utcnow()
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        check_url(claimed.url, settings)
        body = claimed.payload.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": f"inferq-webhooks/{__version__}",
            **signature_headers(claimed.secrets, claimed.id, body),
        }
        status_code = post(claimed.url, body, headers, settings, transport=transport)
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except WebhookUrlRefused as exc:
        error = f"refused: {exc.message}"
    except TimeoutError:
        error = f"Timeout: no complete answer within the attempt's deadline of {settings.webhook_timeout:g}s"
    except Exception as exc:  # a refused connection, a broken answer: every one is a failed attempt
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration = time.perf_counter() - started
    return _record(settings, sessions, claimed, at, status_code, error[:MAX_ERROR_CHARS] if error else None, duration)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """POST ``body`` to ``url`` and return the answer's status code, all within ``settings.webhook_timeout``
    seconds (connecting, sending, the status line, the headers and the answer's body together), or `TimeoutError`.

    httpx's own timeouts bound each network operation apart (a receiver trickling a byte just under the read
    timeout would hold the sender for as long as it liked), so the attempt runs on an event loop of its own under
    one `asyncio.timeout`, which cancels it wherever it is. At most ``settings.webhook_max_response_bytes`` of the
    answer's body are read; the rest is never received."""
    return asyncio.run(_post(url, body, headers, settings, transport))


async def _post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None,
) -> int:
    import httpx  # only where webhooks are sent: a worker

    async with asyncio.timeout(settings.webhook_timeout):
        async with (
            httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False, transport=transport) as client,
            client.stream("POST", url, content=body, headers=dict(headers)) as response,
        ):
            read = 0
            async for piece in response.aiter_raw():
                read += len(piece)
                if read >= settings.webhook_max_response_bytes:
                    break  # the status is known; the rest of a long answer is left unread
            return response.status_code


def _claim(settings: Settings, sessions: sessionmaker[Session], delivery_id: str) -> _Claimed | None:
    """Take a pending, due delivery for one attempt: push its ``next_attempt_at`` past the attempt's longest
    duration (one conditional UPDATE: of two senders, one wins), and read what sending needs."""
    now = utcnow()
    hold = now + dt.timedelta(seconds=settings.webhook_timeout + CLAIM_MARGIN_SECONDS)
    with sessions.begin() as session:
        row = outbox.claim_delivery(session, delivery_id, now, hold)
        if row is None:
            return None
        return _Claimed(row.id, row.job_id, row.url, row.payload, signing_secrets(session, row.tenant, now))


def _record(
    settings: Settings,
    sessions: sessionmaker[Session],
    claimed: _Claimed,
    at: dt.datetime,
    status_code: int | None,
    error: str | None,
    duration: float,
) -> Delivered:
    """Store the attempt and what follows from it, under the delivery's row lock (numbered after the attempts
    already stored, so that a late second sender's attempt is kept too)."""
    with sessions.begin() as session:
        recorded = outbox.record_attempt(
            session,
            claimed.id,
            at=at,
            status_code=status_code,
            error=error,
            duration=duration,
            retry_delays=settings.webhook_retry_delays,
        )
    if recorded is None:
        return Delivered(Sent.SKIPPED)  # the job was purged meanwhile
    number = recorded.number
    if recorded.ended_before:
        # Another sender finished it meanwhile: this attempt is kept, the outcome stays.
        outcome = Delivered(Sent.SKIPPED, attempt=number)
    elif recorded.state is DeliveryState.DELIVERED:
        outcome = Delivered(Sent.DELIVERED, attempt=number)
    elif recorded.state is DeliveryState.FAILED:
        outcome = Delivered(Sent.FAILED, attempt=number)
    else:
        outcome = Delivered(Sent.RETRYING, retry_in=recorded.retry_in, attempt=number)
    level = logging.INFO if outcome.outcome is Sent.DELIVERED else logging.WARNING
    log.log(
        level,
        "webhook %s (job %s) attempt %d: %s%s",
        claimed.id,
        claimed.job_id,
        number,
        error or f"HTTP {status_code}",
        f"; next attempt in {outcome.retry_in:g}s" if outcome.retry_in is not None else f", {outcome.outcome.value}",
    )
    return outcome
