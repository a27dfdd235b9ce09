"""Every tunable default in one place, each with the reason for its value."""

from __future__ import annotations

#: Items per chunk (one Celery message each). Large enough that per-message overhead (a claim and a bulk write,
#: a few milliseconds) is noise next to inference, small enough that a killed worker loses little work and that
#: several workers share a job.
DEFAULT_CHUNK_SIZE = 256

#: Items per chunk on a queue whose workers run on an accelerator (`Settings.queue_devices`). A GPU runs a small
#: encoder's chunk of 256 in a few milliseconds, less than the chunk's fixed cost (its message, claim, write and
#: commit: ~5-15 ms on a busy 2-core machine): four times the items spread that cost over four times the work, and
#: a chunk of 1,024 still takes well under a second of a GPU's time, so a killed worker loses little.
DEFAULT_ACCELERATOR_CHUNK_SIZE = 1024

#: Upper bound on chunk size: one chunk must finish well inside the broker's visibility timeout.
MAX_CHUNK_SIZE = 10_000

#: Padded tokens per micro-batch. Compute per batch grows with batch × length, so a token budget keeps batches
#: of short texts large and batches of long texts small; 8k tokens keep a distilbert-base forward well under a
#: second on a CPU and fill a GPU.
DEFAULT_MAX_BATCH_TOKENS = 8192

#: Items a worker gathers into one run when the chunk it was sent is smaller: queued chunks of other jobs with the
#: same task, model and parameters join it (1,000 one-item jobs run as a few full batches, not 1,000 forwards of
#: one). One chunk's worth: the per-run overhead (a claim, a bulk write) is then as small as for large jobs.
DEFAULT_COALESCE_ITEMS = DEFAULT_CHUNK_SIZE

#: Chunks one message may run after its own (the continuation, `worker.runner`): the next chunk's claim and read
#: follow the forward at once, and the previous chunk's write overlaps the next one's work, instead of waiting for
#: the broker's next delivery. Bounded so that one message never holds its worker long (together with
#: `DEFAULT_CONTINUE_SECONDS`): the continuation ends at whichever bound comes first. Measured A/B on a 2-core
#: machine, null device, chunks of 1,024: 15,666 and 16,826 items/s against 14,023 and 14,428 without (load ~1.1),
#: but no gain under load (3-4: the write's thread competes with the next chunk's tokenization for the interpreter,
#: and the next chunk's claim takes four round trips where a message's takes one). Off by default until a quiet
#: measurement shows it pays: it also changes what a delivery means (one message, several chunks; the continued
#: chunks' own messages then only skip), which the metrics and the recovery of lost messages count on.
DEFAULT_CONTINUE_CHUNKS = 0

#: Seconds after which a message starts no further chunk of its continuation: far inside the broker's visibility
#: timeout, and short enough that a worker shutting down or a newly dispatched job waits little for it.
DEFAULT_CONTINUE_SECONDS = 10.0

#: Seconds a chunk's own message waits before it looks again at a chunk that another worker's batch is running
#: (doubling up to a minute). Its results are stored by that batch: the wait delays nothing a user sees.
COALESCED_RECHECK_SECONDS = 5
COALESCED_RECHECK_MAX_SECONDS = 60

#: Most sequences per micro-batch, whatever their length.
DEFAULT_MAX_BATCH_SIZE = 128

#: Seconds Redis waits for an ack before it redelivers a message. Must exceed the worst chunk time
#: (a 10k-item chunk of long texts on a CPU), or a slow chunk would be delivered twice.
DEFAULT_VISIBILITY_TIMEOUT = 6 * 3600

#: Seconds a claimed chunk stays leased to its worker, which renews the lease every third of it (10 s: one small
#: UPDATE per running batch) while it computes, and every 2 s after a renewal failed. Past it, `inferq recover` (and
#: every worker's reconciler, which looks at leases every half lease) hands the chunk to another worker: so a worker
#: that died whole (killed, OOM, machine lost; on Redis nobody hands its message back) has its chunks back on the
#: broker within lease + half a lease, 45 s. A live worker is never robbed of a slow chunk (it keeps renewing);
#: a worker cut off from the database for longer than the lease may see its chunk run a second time elsewhere,
#: which costs time but never a second result (items are written once, under row locks). Assumes the machines'
#: clocks agree to within a few seconds (NTP).
DEFAULT_LEASE_SECONDS = 30

#: Seconds a chunk's message may sit delivered and unacknowledged on Redis, its chunk still ``queued``, before the
#: message counts as stranded with a dead worker (`inferq.recovery`). A live worker claims a delivered chunk at
#: once, or holds it for a retry's countdown (a minute at most) and then claims it; twice that leaves a margin. A
#: message wrongly found stranded (a worker whose every process is busy) costs one redundant message, never a
#: second result.
STRANDED_MESSAGE_SECONDS = 120

#: Longest input text, in characters (guards memory on both sides; a tokenizer is truncating anyway).
DEFAULT_MAX_TEXT_CHARS = 100_000

#: Most items in one submitted file.
DEFAULT_MAX_ITEMS = 1_000_000

#: Rows per INSERT round trip when storing items.
INSERT_BATCH_ROWS = 5_000

#: Rows fetched per round trip when streaming results.
EXPORT_FETCH_ROWS = 2_000

#: How often `wait` polls the job row (one primary-key read: cheap).
DEFAULT_POLL_SECONDS = 0.5

#: Attempts at a chunk before its remaining items are recorded as failed.
MAX_CHUNK_ATTEMPTS = 5

#: Queue consumed by every worker; models without a queue of their own are routed here.
DEFAULT_QUEUE = "inferq"

#: A job's priority runs from 0 (lowest) to 9 (highest); 5 when none is given (`inferq.schema.DEFAULT_PRIORITY`).
MIN_PRIORITY = 0
MAX_PRIORITY = 9

#: Longest completion window (``--deadline``) a job may ask for: a year. Longer is no deadline at all.
MAX_DEADLINE_SECONDS = 365 * 86400

#: Messages the dispatcher keeps waiting on the broker per queue (`inferq.dispatcher`): twice the consumers' prefetch
#: (1 a pool process, ``acks_late``) times the pool processes of a few workers, so that no worker idles between two
#: rounds, while a tenant's new chunk waits behind at most this many others. Set it to about twice the pool processes
#: that consume a queue (``INFERQ_DISPATCH_WINDOW``).
DEFAULT_DISPATCH_WINDOW = 16

#: Seconds between two rounds of the dispatcher while a tenant's chunks are held back by its cap
#: (``max_chunks_in_flight``): the end of a chunk, which gives a capped tenant room, wakes nobody (a notification per
#: chunk written would cost every worker's write for the rare capped tenant), so the leader looks this often.
DEFAULT_DISPATCH_INTERVAL = 0.2

#: Seconds the dispatcher's leader sleeps when nothing wakes it (`inferq.dispatcher`): what it is woken for (a
#: submit, a claim, a cancel, a share set) comes by PostgreSQL's ``NOTIFY``; this heartbeat catches what no
#: notification says (a deadline passed, a notification sent before this leader listened) and rewrites the
#: dispatcher's row, which must stay younger than `DISPATCH_STATE_STALE_SECONDS`.
DEFAULT_DISPATCH_HEARTBEAT = 1.0

#: Seconds the dispatcher's followers wait between two tries at the leader's lock: a leader that died (its
#: connection closed, so PostgreSQL let its lock go) is replaced within this, far within a lease.
DISPATCH_LEADER_RETRY_SECONDS = 2.0

#: Seconds between two writes of the dispatcher's row (`inferq.schema.DispatcherRound`) while what it says stays the
#: same: its ``last_round`` is at most this old while a leader runs.
DISPATCH_STATE_HEARTBEAT_SECONDS = 1.0
#: The least seconds between two writes of the dispatcher's row that say something new (a round a claim woke
#: changes it): its readers see a round within this, and the busy leader writes it a few times a second, not at every
#: chunk.
DISPATCH_STATE_MIN_SECONDS = 0.25

#: Seconds after which the dispatcher's row says that nobody leads: a few of the followers' tries at the lock (a
#: dead leader is replaced within one) and many heartbeats. A round that takes longer (a huge expiry) reads as a
#: leaderless moment, never a dead leader as a live one.
DISPATCH_STATE_STALE_SECONDS = 10.0

#: Seconds between two full runs of a worker's reconciler (`inferq recover` without a human). A minute bounds how
#: long a job waits after its broker lost messages, and costs one indexed query (and, on Redis, one read of the
#: queue) per worker per minute. Expired leases are looked for more often, every half lease (15 s by default; one
#: indexed query of the expired running chunks), so that a dead worker's chunks are found within a minute.
DEFAULT_RECOVER_INTERVAL = 60

#: Seconds since a chunk was last enqueued before its missing message counts as lost. Covers the moment between a
#: producer's commit and its send, so that a job being submitted is never enqueued twice.
DEFAULT_RECOVER_OLDER_THAN = 60

#: Items deleted per transaction by `inferq purge`: a huge job never holds one giant transaction or lock.
PURGE_BATCH_ROWS = 5_000

#: Most strings in one list field of an input line (a rerank line's ``documents``, a zero-shot line's labels):
#: each becomes a sequence of its own, and one line must fit a chunk's work.
MAX_LIST_TEXTS = 1_000

#: A job's metadata: as many string key-values as the batch APIs users know allow (16 keys, 64-character keys,
#: 512-character values), enough to tag a job with its origin and owner without making it a document store.
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

#: Largest request body the HTTP API takes (``INFERQ_MAX_UPLOAD_BYTES``): 1 GiB holds a 1-million-line file of
#: paragraphs (~300 MB) three times over, and the body goes to a temporary file, never to memory.
DEFAULT_MAX_UPLOAD_BYTES = 1 << 30

#: Seconds a refused submit (``429 quota_exceeded``) is told to wait (``Retry-After``): long enough for a worker to
#: finish a few chunks and free room under the quota, short enough that a waiting client is not idle for long.
QUOTA_RETRY_AFTER_SECONDS = 30

#: Random bytes in an API key's secret: 256 bits, so a plain SHA-256 of the key is as good as a slow password hash.
API_KEY_SECRET_BYTES = 32

#: Jobs a list request returns at most (``GET /v1/jobs?limit=``), and by default.
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20

#: Seconds a metrics endpoint reuses the state it read from SQL: Prometheus scrapes every 15 s by default, so one
#: scraper costs the database at most one set of queries a scrape, and several scrapers (or a 1 s interval) no more
#: than one set every 5 s.
DEFAULT_METRICS_CACHE_SECONDS = 5.0

#: Seconds before each attempt at delivering a webhook, counted from the previous attempt's failure (the first from
#: the job's end): the Standard Webhooks schedule (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), so a
#: receiver that is down for about a day and a half still gets the event. After the last attempt fails the
#: delivery is ``failed`` and kept, with its attempts, for the user to see.
WEBHOOK_RETRY_DELAYS = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)

#: Seconds a webhook POST may wait to connect, to send, and for each read of the answer. Receivers are meant to
#: answer at once and do their work later; ten seconds is what the webhook services users know allow.
DEFAULT_WEBHOOK_TIMEOUT = 10.0

#: A retry due within this many seconds is sent as a Celery message with a countdown (held by a worker until due);
#: a later one is left to the reconciler, which sends deliveries that are due. Keeps hours-long waits out of the
#: broker (a Redis message unacknowledged past its visibility timeout would be delivered twice).
WEBHOOK_COUNTDOWN_MAX_SECONDS = 300.0

#: Longest webhook URL accepted: what browsers and servers commonly handle.
MAX_WEBHOOK_URL_CHARS = 2048

#: Seconds the HTTP client (`producer.remote`) waits to connect to the API: a server that does not accept in this
#: long is down or unreachable, and the user hears so instead of waiting.
HTTP_CONNECT_TIMEOUT_SECONDS = 10.0

#: Seconds the HTTP client waits for a read, a write or a pooled connection. The answer to a submit comes once the
#: server has read, validated and stored the whole file: a million lines take well over a minute on a small
#: machine, so this is generous.
HTTP_TIMEOUT_SECONDS = 600.0

#: Jobs asked for per page when the HTTP client lists jobs (`RemoteClient.jobs`): as many as the server gives.
HTTP_JOBS_PAGE = MAX_LIST_LIMIT

#: Bytes per read when a file is streamed as a request body, and per JSONL batch generated from Python objects.
HTTP_BODY_CHUNK_BYTES = 1 << 20


# -- the OpenAI-compatible API (`server.openai`) -----------------------------------------------------------------------

#: Lines a file of ``POST /v1/files`` may hold (OpenAI: 50,000 requests a batch): a batch's job holds at most
#: `DEFAULT_MAX_ITEMS` items, and one line is at least one item.
MAX_FILE_LINES = 1_000_000
#: Bytes read or written at a time when a file streams in or out: large enough that a system call moves a lot,
#: small enough that many downloads at once hold little memory.
FILE_STREAM_BYTES = 1 << 20
#: Refused lines a batch lists in its ``errors`` (all of them are in its error file).
MAX_BATCH_ERRORS_LISTED = 100
#: Seconds a server process's lease on a batch it validates lasts (`server.openai.validation`): renewed every
#: `BATCH_LEASE_RENEW_SECONDS` while the input is read, and once before the job is stored (which, for a million
#: lines, takes a minute or two and is not interrupted to renew); so long that a live validator never loses it,
#: short enough that a batch whose server died is taken over within minutes.
BATCH_VALIDATION_LEASE_SECONDS = 300
#: Seconds between a validator's renewals of its lease: a few a lease, so that one slow renewal costs nothing.
BATCH_LEASE_RENEW_SECONDS = 30
#: Seconds between a server process's sweeps for batches whose validator's lease ended (a dead server's).
BATCH_VALIDATION_SWEEP_SECONDS = 30
#: Batches a server process validates at once; more wait (their leases held) in its queue. Validation is CPU
#: bound (~3,000 lines/s in one thread), and the request threads need the cores too.
BATCH_VALIDATION_THREADS = 2
#: Batches one sweep takes over at most (the rest wait for the next sweep, or another process's).
BATCH_SWEEP_LIMIT = 8
#: ``expires_after.seconds`` of a file, and ``output_expires_after.seconds`` of a batch: OpenAI's bounds (an hour
#: to 30 days).
MIN_FILE_EXPIRY_SECONDS = 3600
MAX_FILE_EXPIRY_SECONDS = 2_592_000
#: Seconds a synchronous call waits for its job by default (a few seconds of work at most: its inputs are few).
DEFAULT_SYNC_TIMEOUT = 60.0
#: Synchronous calls a server process runs at once by default; each holds a thread that polls its job.
DEFAULT_SYNC_CONCURRENCY = 16
#: What ``Retry-After`` says to a synchronous call refused because the workers are saturated, in seconds.
SYNC_RETRY_AFTER = 5
#: Inputs one synchronous call may carry (OpenAI: 2048 for embeddings).
MAX_SYNC_INPUTS = 2048
#: Priority of a synchronous call's job (fair share: 0–9, higher first): ahead of every batch.
SYNC_PRIORITY = 9
