"""The Python client over HTTP: `RemoteClient` offers `Client`'s methods through inferq's HTTP API (``/v1``).

remote = RemoteClient("https://inferq.example.com", "iq_…")
job = remote.submit("classification", "sst2", "inputs.jsonl", params={"top_k": 2})
remote.wait(job.job_id)
for row in remote.results(job.job_id, min_score=0.9):
    ...

It returns what `Client` returns (`Submission`, `JobStatus`, `ResultRow`, `ModelSpec`) and raises what it raises:
the API's error codes map back to inferq's error classes (`InvalidInput` with its `LineError` s, `JobNotFound`,
`DatabaseUnavailable`, `Unauthorized`, `QuotaExceeded` …), and `ServerUnavailable` says the API could not be
reached. The machine it runs on needs neither the database's nor the
broker's credentials, nor torch.

Uploads stream: a file (a path or a binary stream) is sent as the request body as it is read, and an iterable of
dicts or strings is written as JSONL while it is sent, never held whole. Every submit carries an
``Idempotency-Key`` (the caller's, in `JobOptions`, or a fresh one): a request that fails on the network is sent
once more with the same key, and the server answers the second with the job the first created, if it did, instead
of making another. A body that cannot be read twice (standard input, an iterator already started) is not resent.

It implements `producer.protocol.JobClient`, as `Client` does: the same methods, arguments and filters (the tenant
is the key's, so it takes no ``tenant=``). The answers are the API's pydantic models (`inferq.api`): a job is
`inferq.api.Job`, which `JobStatus` is.

`results` streams the API's JSONL with the top result's typed columns (``top=true``): each line reads into the
`ResultRow` that `Client.results` gives for the item, field for field. `export` writes the server's export as it
arrives; an NPY export comes as a tar of the matrix and its rows file (``Accept: application/x-tar``), unpacked
where the database path writes them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote

import httpx

import inferq
from inferq import api, constants
from inferq.errors import InferqError, InvalidInput, LineError, ServerUnavailable, TransientError
from inferq.schema import DEFAULT_PRIORITY
from inferq.settings import ModelSpec, Settings
from inferq.states import ItemState, JobState
from inferq.task_specs import TASKS, TaskName, parse_task
from producer.client import Inputs, JobOptions, JobStatus, Submission, chunk_count, poll_until_finished
from producer.protocol import FILE_FORMATS, Exported, ExportFormat, export_target, file_path
from producer.results import ResultRow

__all__ = ["RemoteClient"]

Format = Literal["auto", "jsonl", "csv"]

#: The media type a body of each input format is sent as; ``auto`` lets the server look at the first line.
_MEDIA_TYPES = {"jsonl": "application/jsonl", "csv": "text/csv", "auto": "application/octet-stream"}

#: File extensions the server would not see (it gets a body, not a name), read here as `read_inputs` reads them.
_EXTENSIONS: dict[str, Literal["jsonl", "csv"]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}


class RemoteClient:
    """`Client`'s methods over inferq's HTTP API. ``transport``: an httpx transport (``httpx.MockTransport`` in
    tests); ``timeout``: seconds for a read or a write (connecting waits `HTTP_CONNECT_TIMEOUT_SECONDS`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = constants.HTTP_TIMEOUT_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: The URL as errors show it: without a user or password it may hold.
        self._shown_url = str(httpx.URL(self.base_url).copy_with(username=None, password=None))
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, constants.HTTP_CONNECT_TIMEOUT_SECONDS)),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"inferq/{inferq.__version__}"},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteClient:
        """The client of ``INFERQ_SERVER_URL`` with ``INFERQ_API_KEY`` (`ConfigurationError` without both)."""
        from inferq.errors import ConfigurationError

        if not settings.server_url:
            raise ConfigurationError("INFERQ_SERVER_URL is not set")
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigurationError(
                "INFERQ_SERVER_URL is set but INFERQ_API_KEY is not: create a key with `inferq keys create`"
            )
        return cls(settings.server_url, settings.api_key.get_secret_value())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit ----------------------------------------------------------------------------------------

    def submit(
        self,
        task: TaskName | str,
        model: str,
        inputs: Inputs,
        params: dict[str, Any] | None = None,
        *,
        chunk_size: int | None = None,
        skip_invalid: bool = False,
        format: Format = "auto",
        options: JobOptions | None = None,
    ) -> Submission:
        """`Client.submit` over HTTP: the server validates and stores the job as `Client.submit` does, and refuses
        bad input the same way (`InvalidInput` listing every bad line, nothing stored). Of ``options``, the
        metadata, webhook URL, priority, deadline and idempotency key are sent; the job's tenant is the key's."""
        task = task if isinstance(task, TaskName) else parse_task(task)
        options = options or JobOptions()
        body = _Body.of(inputs, format, single_text=TASKS[task].single_text)
        query: dict[str, str] = {"task": task.value, "model": model, "format": body.format}
        if params:
            query["params"] = json.dumps(params)
        if options.metadata:
            query["metadata"] = json.dumps(options.metadata)
        if chunk_size:
            query["chunk_size"] = str(chunk_size)
        if options.webhook_url:
            query["webhook_url"] = options.webhook_url
        if options.priority != DEFAULT_PRIORITY:
            query["priority"] = str(options.priority)
        if options.deadline is not None:
            query["deadline"] = str(options.deadline.total_seconds())
        if skip_invalid:
            query["skip_invalid"] = "true"
        headers = {
            "Content-Type": _MEDIA_TYPES[body.format],
            "Idempotency-Key": options.idempotency_key or uuid.uuid4().hex,
        }
        try:
            response = self._request("POST", "/v1/jobs", params=query, headers=headers, body=body)
        finally:
            body.close()
        return _submission(response)

    def retry(self, job_id: str) -> Submission:
        """`Client.retry` over HTTP: a new job with the failed items of the finished job ``job_id``."""
        return _submission(self._request("POST", f"{_job_path(job_id)}/retry"))

    # -- read ------------------------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._json("GET", _job_path(job_id)))

    def jobs(
        self,
        limit: int = 20,
        state: JobState | None = None,
        *,
        task: str | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        after: str | None = None,
    ) -> list[JobStatus]:
        """The tenant's jobs (every tenant's for an admin key), newest first, filtered as `Client.jobs` filters
        them, at most ``limit``: the API's pages followed until there are enough."""
        found: list[JobStatus] = []
        filters: dict[str, str] = {}
        if state is not None:
            filters["state"] = JobState(state).value
        if task is not None:
            filters["task"] = task
        if model is not None:
            filters["model"] = model
        for key, value in (metadata or {}).items():
            filters[f"metadata[{key}]"] = value
        while len(found) < limit:
            query = {**filters, "limit": str(min(limit - len(found), constants.HTTP_JOBS_PAGE))}
            if after is not None:
                query["after"] = after
            page = api.JobList.model_validate(self._json("GET", "/v1/jobs", params=query))
            found.extend(page.data)
            after = page.next_after
            if not page.has_more or not after or not page.data:
                break
        return found[:limit]

    def models(self) -> dict[str, ModelSpec]:
        """The server's model registry."""
        listed = api.ModelList.model_validate(self._json("GET", "/v1/models"))
        return {m.name: ModelSpec(**m.model_dump(exclude={"name"})) for m in listed.data}

    def dispatcher(self) -> api.Dispatcher:
        """The server's dispatcher (``GET /v1/dispatcher``): a non-admin key sees only its own tenant among the
        capped ones."""
        return api.Dispatcher.model_validate(self._json("GET", "/v1/dispatcher"))

    def results(
        self,
        job_id: str,
        *,
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Iterator[ResultRow]:
        """Stream the job's items in input order, filtered by the server as `Client.results` filters them: the
        API's JSONL with the top result's columns, each line the `ResultRow` `Client.results` gives."""
        task = TaskName(self.status(job_id).task)  # raises JobNotFound
        query = {**_result_query("jsonl", label, min_score, failed, state), "top": "true"}
        with self._stream("GET", f"{_job_path(job_id)}/results", params=query) as response:
            for line in _lines(response):
                yield ResultRow.from_top_json(line, task)

    def export(
        self,
        job_id: str,
        out: str | os.PathLike[str] | IO[bytes],
        *,
        format: ExportFormat = "jsonl",
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Exported:
        """Write the server's export of the job's items in ``format`` to ``out`` (a path, or a binary stream for
        JSONL and CSV) as it arrives, byte for byte what `Client.export` writes; NPY writes its rows file beside the
        matrix (`producer.export.npy_rows_path`). Nothing is written when the server refuses (`JobNotFound` …)."""
        from producer.export import npy_rows_path

        query = _result_query(format, label, min_score, failed, state)
        path = file_path(out, format) if format in FILE_FORMATS or isinstance(out, str | os.PathLike) else None
        headers = {"Accept": api.NPY_TAR_MEDIA_TYPE} if format == "npy" else None
        with self._stream("GET", f"{_job_path(job_id)}/results", params=query, headers=headers) as response:
            if format == "npy":
                assert path is not None
                rows_path = npy_rows_path(path)
                _untar(response, {api.NPY_TAR_MATRIX: path, api.NPY_TAR_ROWS: rows_path})
                return Exported("npy", path, rows_path)
            with export_target(path or out) as target:
                for block in response.iter_bytes():
                    target.write(block)
        return Exported(format, path)

    # -- control ---------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobStatus:
        """`Client.cancel` over HTTP (a finished job comes back unchanged)."""
        return JobStatus.model_validate(self._json("POST", f"{_job_path(job_id)}/cancel"))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = constants.DEFAULT_POLL_SECONDS,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: `TimeoutError`)."""
        return poll_until_finished(self.status, job_id, timeout=timeout, poll=poll, on_progress=on_progress)

    # -- plumbing --------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, params: dict[str, str] | None = None) -> Any:
        return self._request(method, path, params=params).json()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: _Body | None = None,
    ) -> httpx.Response:
        """Send a request (once more on a network error, when its body can be sent again) and return its answer,
        or raise the inferq error the answer names."""
        response = self._send(method, path, params=params, headers=headers, body=body, stream=False)
        raise_for_answer(response, method, path)
        return response

    def _stream(
        self, method: str, path: str, *, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> _Streamed:
        return _Streamed(self._send(method, path, params=params, headers=headers, body=None, stream=True), method, path)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
        body: _Body | None,
        stream: bool,
    ) -> httpx.Response:
        for attempt in (1, 2):
            content = body.open() if body is not None else None
            request = self._http.build_request(method, path, params=params, headers=headers, content=content)
            try:
                return self._http.send(request, stream=stream)
            except (httpx.UnsupportedProtocol, httpx.ProxyError) as exc:
                raise ServerUnavailable(f"cannot reach {self._shown_url}: {type(exc).__name__}: {exc}") from exc
            except httpx.TransportError as exc:
                # The request may or may not have reached the server: sent again, a submit carries the same
                # Idempotency-Key, so the server answers with the job the first one made, if it made one.
                if attempt == 1 and (body is None or body.replayable):
                    continue
                raise ServerUnavailable(
                    f"the server at {self._shown_url} did not answer {method} {path}: {type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")


class _Streamed:
    """A streamed answer, checked on entry (the inferq error its answer names) and closed on exit; an answer cut
    off on the network while it is read is `ServerUnavailable`."""

    def __init__(self, response: httpx.Response, method: str, path: str) -> None:
        self.response = response
        self.method = method
        self.path = path

    def __enter__(self) -> httpx.Response:
        if not self.response.is_success:
            try:
                self.response.read()
            finally:
                self.response.close()
            raise_for_answer(self.response, self.method, self.path)
        return self.response

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.response.close()
        if isinstance(exc, httpx.TransportError):
            raise ServerUnavailable(
                f"the answer to {self.method} {self.path} was cut off: {type(exc).__name__}: {exc}"
            ) from exc


class _Body:
    """A submit's request body: a file, a binary stream, or JSONL written from Python objects as it is sent.

    ``open`` gives the body to send; ``replayable`` says whether it can give it again (after a network error)."""

    def __init__(self, source: Callable[[], Iterable[bytes] | IO[bytes]], format: Format, replayable: bool) -> None:
        self._source = source
        self.format = format
        self._replayable = replayable
        self._opened: list[IO[bytes]] = []
        self._started = False

    @classmethod
    def of(cls, inputs: Inputs, format: Format, *, single_text: bool) -> _Body:
        if format not in _MEDIA_TYPES:
            raise ValueError(f"unknown input format {format!r} (known: auto, jsonl, csv)")
        if isinstance(inputs, str | os.PathLike):
            path = os.fspath(inputs)
            if path == "-":
                return cls._stream(sys.stdin.buffer, format)
            if format == "auto":
                format = _EXTENSIONS.get(os.path.splitext(path)[1].lower(), "auto")
            opened = cls(lambda: opened._open_file(path), format, replayable=True)
            return opened
        if hasattr(inputs, "read"):
            return cls._stream(inputs, format)  # type: ignore[arg-type]
        rows: Iterable[Any] = inputs
        reusable = iter(rows) is not rows  # a list, a tuple: iterated afresh each time
        return cls(lambda: _jsonl(rows, single_text), "jsonl", replayable=reusable)

    @classmethod
    def _stream(cls, stream: IO[bytes], format: Format) -> _Body:
        try:
            start: int | None = stream.tell() if stream.seekable() else None
        except (AttributeError, OSError, ValueError):
            start = None

        def reopen() -> IO[bytes] | Iterable[bytes]:
            if start is not None:
                stream.seek(start)
            # httpx sends a stream's whole size as its Content-Length: only one read from its start may go as it is.
            return stream if start == 0 else _blocks(stream)

        return cls(reopen, format, replayable=start is not None)

    def _open_file(self, path: str) -> IO[bytes]:
        f = open(path, "rb")  # noqa: SIM115 (closed by `close`, once the request is done)
        self._opened.append(f)
        return f

    @property
    def replayable(self) -> bool:
        return self._replayable or not self._started

    def open(self) -> Iterable[bytes] | IO[bytes]:
        content = self._source()
        if isinstance(content, Iterable) and not hasattr(content, "read"):
            return self._watch(content)
        self._started = True  # httpx reads a file as it likes: count it read
        return content

    def _watch(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            self._started = True
            yield block

    def close(self) -> None:
        for f in self._opened:
            f.close()
        self._opened.clear()


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    while block := stream.read(constants.HTTP_BODY_CHUNK_BYTES):
        yield block


def _jsonl(rows: Iterable[Any], single_text: bool) -> Iterator[bytes]:
    """One JSONL line per row, as `validate_rows` would read the row: a plain string is ``{"text": …}`` for the
    tasks that take a single text. A row that is not JSON (a set, an object) becomes a line that is not JSON
    either, so that the server names its line as malformed, as `validate_rows` would name it."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    batch: list[str] = []
    size = 0
    for row in rows:
        obj = {"text": row} if single_text and isinstance(row, str) else row
        try:
            line = encode(obj)
        except (TypeError, ValueError):
            line = f"<not JSON: {type(row).__name__}>"
        batch.append(line)
        size += len(line) + 1
        if size >= constants.HTTP_BODY_CHUNK_BYTES:
            yield ("\n".join(batch) + "\n").encode()
            batch, size = [], 0
    if batch:
        yield ("\n".join(batch) + "\n").encode()


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _result_query(
    format: str, label: str | None, min_score: float | None, failed: bool, state: ItemState | None
) -> dict[str, str]:
    query = {"format": format}
    if label is not None:
        query["label"] = label
    if min_score is not None:
        query["min_score"] = repr(float(min_score))
    if failed:
        query["failed"] = "true"
    if state is not None:
        query["state"] = ItemState(state).value
    return query


def _lines(response: httpx.Response) -> Iterator[bytes]:
    """The answer's non-empty lines, cut at ``\\n`` only: a JSON string may hold U+2028 and other characters that
    ``str.splitlines`` (and httpx's ``iter_lines``) would also cut at."""
    rest = b""
    for block in response.iter_bytes():
        rest += block
        *lines, rest = rest.split(b"\n")
        yield from (line for line in lines if line)
    if rest:
        yield rest


class _Reader:
    """A streamed answer's body as a file, for `tarfile`'s stream mode."""

    def __init__(self, response: httpx.Response) -> None:
        self._blocks = response.iter_bytes()
        self._rest = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._rest) < size:
            block = next(self._blocks, None)
            if block is None:
                break
            self._rest += block
        if size < 0:
            size = len(self._rest)
        data, self._rest = self._rest[:size], self._rest[size:]
        return data


def _untar(response: httpx.Response, names: dict[str, Path]) -> None:
    """Unpack the streamed tar of an NPY export: each member of ``names`` to its path, under a ``.part`` name
    renamed once every member is complete (none left behind on an error)."""
    parts = {name: path.with_name(path.name + ".part") for name, path in names.items()}
    try:
        with tarfile.open(fileobj=_Reader(response), mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                if member.name not in parts or not member.isfile():
                    raise InferqError(f"the server's NPY export holds an unexpected member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None
                with open(parts[member.name], "wb") as target:
                    shutil.copyfileobj(source, target, constants.HTTP_BODY_CHUNK_BYTES)
        missing = [name for name, part in parts.items() if not part.exists()]
        if missing:
            raise InferqError(f"the server's NPY export lacks {', '.join(missing)}")
        for name, part in parts.items():
            os.replace(part, names[name])
    except BaseException:
        for part in parts.values():
            part.unlink(missing_ok=True)
        raise


def _submission(response: httpx.Response) -> Submission:
    job = api.JobCreated.model_validate(response.json())
    return Submission(
        job_id=job.id,
        total=job.total,
        chunks=chunk_count(job.total, job.chunk_size) if job.chunk_size else 0,
        skipped=[LineError(e.line, e.field, e.message) for e in job.skipped],
        skipped_total=job.skipped_total,
        replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
    )


# -- errors ------------------------------------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[InferqError]]:
    """Every error of `inferq.errors` by its code."""
    found: dict[str, type[InferqError]] = {}
    todo: list[type[InferqError]] = [InferqError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "inferq.errors":
            found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def _line_error(obj: dict[str, Any]) -> LineError:
    return LineError(int(obj.get("line") or 0), obj.get("field"), str(obj.get("message") or ""))


def raise_for_answer(response: httpx.Response, method: str, path: str) -> None:
    """Nothing for a 2xx answer; otherwise the inferq error that the answer's ``{"error": {"code", "message"}}``
    names, with the server's message. `InvalidInput` is rebuilt from the answer's ``lines`` (and ``lines_total``),
    so that its message lists them as the database path's does. A code this client does not know: an
    `InferqError` carrying it (a `TransientError` for a 5xx); an answer without a code (a proxy's): by its status."""
    if response.is_success:
        return
    status = response.status_code
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError):
        error, code, message = {}, "", ""
    if not code:
        if status == 401:
            code, message = "unauthorized", "the server refused the API key"
        elif status >= 500:
            code = ServerUnavailable.code
            message = f"the server answered {status} {response.reason_phrase} to {method} {path}"
        else:
            code, message = "http_error", f"the server answered {status} {response.reason_phrase} to {method} {path}"
    cls = _error_classes().get(code)
    exc: InferqError
    if cls is InvalidInput:
        lines = [_line_error(e) for e in error.get("lines") or []]
        total = error.get("lines_total")
        exc = InvalidInput(lines, total if isinstance(total, int) else len(lines))
    else:
        if cls is None:
            cls = TransientError if status >= 500 else InferqError
        exc = cls(message)
        exc.code = code
        exc.message = message
        if code == "quota_exceeded":
            exc.retry_after = _retry_after(response)  # type: ignore[attr-defined]
    exc.details.update({k: v for k, v in error.items() if k not in ("code", "message", "lines", "lines_total")})
    exc.details["status"] = status
    raise exc


def _retry_after(response: httpx.Response) -> int | None:
    """The answer's ``Retry-After`` in seconds (a delay; a date is not read), if it has one."""
    try:
        return int(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
