"""One settings object (pydantic-settings, prefix ``INFERQ_``), passed to every factory; nothing is built at import."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inferq import constants
from inferq.errors import InvalidParameter
from inferq.task_names import TaskName

Precision = Literal["fp32", "fp16", "bf16", "int8", "auto"]
#: What runs a model's encoder (`worker.backends`): ``auto`` picks from a table the benchmark justifies.
Backend = Literal["auto", "torch", "ctranslate2"]

#: Items per chunk (one Celery message): the settings' default and a job's own choice alike.
ChunkSize = Annotated[int, Field(ge=1, le=constants.MAX_CHUNK_SIZE)]


class ModelSpec(BaseModel):
    """A registry entry: where a model comes from and how workers run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A hub id (``org/name``) or a local directory written by ``save_pretrained``.
    source: str
    #: The task the model serves; ``None`` lets any task use it (the right head is loaded per task).
    task: TaskName | None = None
    #: A queue of its own (say, for the worker that holds it on one GPU); ``None`` means the default queue.
    queue: str | None = None
    #: Numeric precision the worker runs it at.
    precision: Precision = "fp32"
    #: What runs it (`worker.backends`); a backend that cannot run the model falls back to torch.
    backend: Backend = "auto"
    #: Hub revision (branch, tag or commit) to pin.
    revision: str | None = None
    #: Padded tokens per micro-batch; ``None`` takes the settings' default.
    max_batch_tokens: int | None = None
    #: Items per chunk of this model's jobs where a submission names none; ``None`` takes the settings'
    #: ``chunk_size``. Larger for a model served on a fast accelerator, where each chunk's fixed cost (claim,
    #: write, commit, the broker) must stay small beside its forward pass (README, "Speed").
    chunk_size: ChunkSize | None = None
    #: One line for `inferq models`.
    description: str = ""


#: The seed document's models, for real users whose machines reach the hub or hold a local cache.
DEFAULT_MODELS: dict[str, ModelSpec] = {
    "sst2": ModelSpec(
        source="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        task=TaskName.CLASSIFICATION,
        description="sentiment (POSITIVE/NEGATIVE), DistilBERT fine-tuned on SST-2",
    ),
    "mrpc": ModelSpec(
        source="bert-base-cased-finetuned-mrpc",
        task=TaskName.CLASSIFICATION,
        description="paraphrase detection on text pairs, BERT fine-tuned on MRPC",
    ),
    "squad": ModelSpec(
        source="distilbert/distilbert-base-cased-distilled-squad",
        task=TaskName.QUESTION_ANSWERING,
        description="extractive question answering, DistilBERT distilled on SQuAD",
    ),
    "distilroberta": ModelSpec(
        source="distilbert/distilroberta-base",
        task=TaskName.FILL_MASK,
        description="masked language model (fill-mask), DistilRoBERTa",
    ),
    "conll03": ModelSpec(
        source="dbmdz/bert-large-cased-finetuned-conll03-english",
        task=TaskName.TOKEN_CLASSIFICATION,
        description="named entities (PER/ORG/LOC/MISC), BERT large fine-tuned on CoNLL-2003",
    ),
    "minilm": ModelSpec(
        source="sentence-transformers/all-MiniLM-L6-v2",
        task=TaskName.EMBEDDING,
        description="sentence embeddings (384 dimensions, normalized), all-MiniLM-L6-v2",
    ),
}


def _default_models() -> dict[str, ModelSpec]:
    return dict(DEFAULT_MODELS)


class Settings(BaseSettings):
    """Everything configurable, read from ``INFERQ_*`` environment variables (and ``.env``)."""

    model_config = SettingsConfigDict(env_prefix="INFERQ_", env_file=".env", extra="ignore")

    #: SQLAlchemy URL of the results database. Plain ``postgresql://`` URLs are accepted.
    database_url: str = "sqlite:///inferq.db"
    #: Celery broker. The default is an embedded broker (kombu's SQLAlchemy transport on SQLite) that needs no
    #: server; production uses ``redis://…`` (or ``amqp://…``).
    broker_url: str = "sqla+sqlite:///inferq-broker.db"
    #: The model registry: names → specs. JSON in ``INFERQ_MODELS``; replaces the defaults when set.
    models: dict[str, ModelSpec] = Field(default_factory=_default_models)
    #: Local directories a ``--model`` path may point into. Empty: any local directory for the operator's own client
    #: and command line, none for tenants of the HTTP API (`inferq.model_sources.allowed_directory`).
    model_dirs: list[Path] = Field(default_factory=list)
    #: The queue that every worker consumes.
    default_queue: str = constants.DEFAULT_QUEUE
    #: Items per chunk of a job that names none, on a queue whose workers run on a CPU.
    chunk_size: ChunkSize = constants.DEFAULT_CHUNK_SIZE
    #: The device each queue's workers run on (``cpu``, ``cuda``, ``cuda:0`` …; a queue not named: ``cpu``), as
    #: the producer, which never sees a worker, learns it: a job routed to a queue on an accelerator takes
    #: `accelerator_chunk_size` items per chunk where neither the submission nor its model names a size.
    queue_devices: dict[str, str] = Field(default_factory=dict)
    #: Items per chunk of a job that names none, on a queue whose workers run on an accelerator.
    accelerator_chunk_size: ChunkSize = constants.DEFAULT_ACCELERATOR_CHUNK_SIZE
    max_batch_tokens: int = Field(constants.DEFAULT_MAX_BATCH_TOKENS, ge=16)
    #: A worker sent a chunk with fewer items than this runs queued chunks of other jobs with the same task,
    #: model and parameters with it, up to this many items; 0 turns coalescing off.
    coalesce_items: int = Field(constants.DEFAULT_COALESCE_ITEMS, ge=0, le=constants.MAX_CHUNK_SIZE)
    max_batch_size: int = Field(constants.DEFAULT_MAX_BATCH_SIZE, ge=1)
    visibility_timeout: int = Field(constants.DEFAULT_VISIBILITY_TIMEOUT, ge=60)
    #: Seconds a claimed chunk is leased to its worker (renewed every third while it computes); a dead worker's
    #: chunks go back to the broker once it has passed (see `inferq.constants.DEFAULT_LEASE_SECONDS`).
    lease_seconds: int = Field(constants.DEFAULT_LEASE_SECONDS, ge=5)
    #: Seconds between two full runs of each worker's reconciler (`inferq recover`, automatic; expired leases are
    #: looked for every half lease, or this often if that is sooner); 0 turns it off.
    recover_interval: int = Field(constants.DEFAULT_RECOVER_INTERVAL, ge=0)
    #: A queued chunk whose message is missing is re-enqueued only once it was enqueued this long ago.
    recover_older_than: int = Field(constants.DEFAULT_RECOVER_OLDER_THAN, ge=0)
    #: How chunks reach the broker. ``fair``: a submit stores them and the dispatcher (one leader among the workers)
    #: releases them in weighted fair order across tenants (`inferq.dispatcher`), on PostgreSQL; SQLite, which has
    #: no advisory locks and serves one machine, always goes ``direct``: a submit sends every chunk's message
    #: itself, first in, first out.
    dispatch: Literal["fair", "direct"] = "fair"
    #: Messages the dispatcher keeps waiting on the broker per queue (`inferq.constants.DEFAULT_DISPATCH_WINDOW`).
    dispatch_window: int = Field(constants.DEFAULT_DISPATCH_WINDOW, ge=1)
    #: Seconds between two rounds of the dispatcher while a tenant is held back by its cap
    #: (`inferq.constants.DEFAULT_DISPATCH_INTERVAL`).
    dispatch_interval: float = Field(constants.DEFAULT_DISPATCH_INTERVAL, gt=0)
    #: Seconds between two rounds of the dispatcher when nothing wakes it (`inferq.constants.DEFAULT_DISPATCH_HEARTBEAT`).
    dispatch_heartbeat: float = Field(constants.DEFAULT_DISPATCH_HEARTBEAT, gt=0)
    max_text_chars: int = Field(constants.DEFAULT_MAX_TEXT_CHARS, ge=1)
    max_items: int = Field(constants.DEFAULT_MAX_ITEMS, ge=1)
    #: Worker device: ``cpu`` or ``cuda:N``.
    device: str = "cpu"
    #: Overrides every model's precision on this worker when set.
    precision: Precision | None = None
    #: Overrides every model's backend on this worker when set.
    backend: Backend | None = None
    #: torch's intra-op threads in each worker process. Default: the cores this worker may use ÷ its pool processes
    #: (at least 1), or torch's own choice where ``OMP_NUM_THREADS`` is set (`worker.threads.torch_threads`).
    torch_threads: int | None = Field(default=None, ge=1)
    #: Models a worker loads when each of its processes starts (registry names or directories), and whose queues
    #: ``inferq worker`` consumes. ``INFERQ_PRELOAD`` is comma-separated (``sst2,mrpc``) or a JSON list.
    preload: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    #: Largest request body ``inferq serve`` takes (a submitted file with its form fields), in bytes; a larger one
    #: is refused with 413 as soon as the count passes it, while it streams.
    max_upload_bytes: int = Field(constants.DEFAULT_MAX_UPLOAD_BYTES, ge=1)
    #: ``text`` (the usual lines) or ``json``: one JSON object a line, with ``job_id``, ``chunk``, ``model``,
    #: ``outcome`` and timing fields where a line has them (`inferq.logs`). Secrets are redacted in both.
    log_format: Literal["text", "json"] = "text"
    #: The port a worker serves Prometheus metrics on (``/metrics``, `inferq.metrics`); ``None``: no metrics.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: The address the metrics endpoint listens on.
    metrics_host: str = "0.0.0.0"
    #: Seconds the state read from SQL on a scrape (jobs by state, unfinished items, the oldest queued chunk) is
    #: reused: scrapes from several Prometheus servers, or a fast scrape interval, cost the database one set of
    #: queries per period.
    metrics_cache_seconds: float = Field(default=constants.DEFAULT_METRICS_CACHE_SECONDS, ge=0)
    #: Whether ``inferq serve`` answers ``GET /metrics`` (Prometheus, no key needed; `server.metrics`).
    api_metrics: bool = True
    #: Let webhook URLs reach private, loopback, link-local and other non-public addresses (a receiver on the same
    #: host or network, tests). Off: such URLs are refused at submit and at each delivery (server-side request
    #: forgery).
    webhook_allow_private: bool = False
    #: Seconds one webhook attempt may take in all: connecting, sending, and the whole answer however slowly it
    #: comes. Past it the attempt is cut and recorded as failed (retried per ``INFERQ_WEBHOOK_RETRY_DELAYS``).
    webhook_timeout: float = Field(constants.DEFAULT_WEBHOOK_TIMEOUT, gt=0)
    #: Bytes of a receiver's answer read at most (the status code is what counts; the body is not kept): 64 KiB.
    webhook_max_response_bytes: int = Field(64 * 1024, ge=1)
    #: Processes of the webhook sender that ``inferq worker`` starts beside itself (``--webhooks-only``): how many
    #: deliveries run at once. Each is held by a slow receiver for one ``webhook_timeout`` at most.
    webhook_concurrency: int = Field(2, ge=1)
    #: Seconds a rotated-out webhook secret keeps signing beside the new one (one day: time for a receiver to
    #: switch). ``POST /v1/webhook-secret/rotate`` and ``inferq keys rotate-webhook-secret`` may ask for another.
    webhook_secret_overlap: float = Field(24 * 3600.0, ge=0)
    #: Where ``inferq serve`` streams uploads to (``inferq-upload-*`` files); ``None``: the system's temporary
    #: directory. Files of that prefix older than the server's start are removed when it starts (a killed server
    #: leaves them behind).
    upload_dir: Path | None = None
    #: Where the OpenAI-compatible API keeps its files (``POST /v1/files``, batches' output and error files), one
    #: file per id, streamed in and out in `inferq.constants.FILE_STREAM_BYTES` pieces. Every server process behind
    #: a load balancer must see the same directory (a shared volume); a relative path is from the server's working
    #: directory.
    files_dir: Path = Path("inferq-files")
    #: Seconds a synchronous call (``POST /v1/embeddings``, ``/v1/rerank``, …) waits for its job; past it the job is
    #: cancelled and the answer is 503 with ``Retry-After``.
    sync_timeout: float = Field(constants.DEFAULT_SYNC_TIMEOUT, gt=0)
    #: Synchronous calls a server process runs at once; one more is answered 503 with ``Retry-After`` at once.
    sync_concurrency: int = Field(constants.DEFAULT_SYNC_CONCURRENCY, ge=1)
    #: Seconds before each delivery attempt (the first from the job's end, the others from the previous failure);
    #: as many attempts as delays. ``INFERQ_WEBHOOK_RETRY_DELAYS`` is comma-separated (``0,5,300``) or a JSON list.
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(constants.WEBHOOK_RETRY_DELAYS), min_length=1
    )
    #: The HTTP API's base URL (``https://inferq.example.com``). When set, ``inferq submit / status / results /
    #: cancel / jobs / models`` go through the API (`producer.remote.RemoteClient`) with `api_key`, and need neither
    #: the database's nor the broker's credentials.
    server_url: str | None = None
    #: The API key (``iq_<id>_<secret>``, from ``inferq keys create``) sent to `server_url`.
    api_key: SecretStr | None = None

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("preload", "webhook_retry_delays", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _string_specs(cls, value: object) -> object:
        # `{"name": "org/model"}` is shorthand for `{"name": {"source": "org/model"}}`.
        if isinstance(value, dict):
            return {k: ({"source": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("webhook_retry_delays")
    @classmethod
    def _no_negative_delay(cls, value: list[float]) -> list[float]:
        if any(d < 0 for d in value):
            raise ValueError("webhook retry delays are seconds, none negative")
        return value

    @property
    def fair_dispatch(self) -> bool:
        """Whether the dispatcher releases chunks: ``dispatch`` is ``fair`` and the database PostgreSQL."""
        return self.dispatch == "fair" and self.database_url.startswith("postgresql")

    @property
    def webhook_queue(self) -> str:
        """The queue of webhook deliveries: one of its own, next to the default queue, that every ``inferq worker``
        consumes, so that an event never waits behind a backlog of chunks (`inferq.webhooks`)."""
        return f"{self.default_queue}.webhooks"

    def queue_for(self, model: str) -> str:
        """The queue of a registry name's jobs (a name not in the registry, a local directory: the default)."""
        spec = self.models.get(model)
        return self.default_queue if spec is None else self.queue_of(spec)

    def queue_of(self, spec: ModelSpec) -> str:
        """The queue of a model's jobs: its own, else the default queue."""
        return spec.queue or self.default_queue

    def queue_device(self, queue: str) -> str:
        """The device ``queue``'s workers run on, as `queue_devices` says (``cpu`` for a queue it does not name)."""
        return self.queue_devices.get(queue, "cpu")

    def chunk_size_for(self, requested: int | None, spec: ModelSpec | None = None) -> int:
        """A job's chunk size: ``requested`` when given (`InvalidParameter` outside `ChunkSize`'s range), else
        its model's (``spec.chunk_size``), else the default of the device its queue's workers run on
        (`queue_devices`): ``accelerator_chunk_size`` on an accelerator, ``chunk_size`` on a CPU. ``0`` counts as
        not given."""
        if not requested:
            if spec is not None and spec.chunk_size is not None:
                return spec.chunk_size
            queue = self.default_queue if spec is None else self.queue_of(spec)
            return self.accelerator_chunk_size if is_accelerator(self.queue_device(queue)) else self.chunk_size
        try:
            return _CHUNK_SIZE.validate_python(requested)
        except ValidationError:
            raise InvalidParameter(
                f"chunk size must be between 1 and {constants.MAX_CHUNK_SIZE}", field="chunk_size"
            ) from None


_CHUNK_SIZE: TypeAdapter[int] = TypeAdapter(ChunkSize)


def is_accelerator(device: str) -> bool:
    """Whether ``device`` (``cpu``, ``cuda:0``, ``mps`` …) is an accelerator: anything but a CPU."""
    return not device.startswith("cpu")


def normalise_database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` use psycopg 3, the driver inferq installs."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment. Factories take a `Settings` argument instead."""
    return Settings()
