"""Receiving a submitted file: the request body streamed to a temporary file, never held in memory whole.

Two forms (see the API contract): the raw body is the file (``application/jsonl`` and its aliases, ``text/csv``,
``application/octet-stream``), or a ``multipart/form-data`` body whose ``file`` part is the file and whose other
parts are the options. Either way the bytes are counted as they arrive, and the request is refused with
`PayloadTooLarge` as soon as the count passes the limit (or at once, when ``Content-Length`` says it will); the
file's SHA-256 is computed on the way, for the idempotency check. A client that goes away mid-upload raises
Starlette's ``ClientDisconnect``; the temporary file is removed whatever happens before the caller takes it.

A server killed outright (SIGKILL, the OOM killer, a power cut) removes nothing: its files stay in the upload
directory (``INFERQ_UPLOAD_DIR``, else the system's temporary directory). Each file's name carries the pid of the
process that writes it (``inferq-upload-<pid>-…``), and every server process, when it starts, removes the files of
that prefix that are older than its start and whose process is gone (`remove_stale_uploads`): a sibling server
process's upload in progress is left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from inferq.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)

Format = Literal["auto", "jsonl", "csv"]

#: What every upload's temporary file is named by (then the writing process's pid): what a start may remove.
UPLOAD_PREFIX = "inferq-upload-"

#: Raw-body media types → the input format they mean (``auto``: sniffed from the first line).
RAW_MEDIA_TYPES: dict[str, Format] = {
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/json-lines": "jsonl",
    "text/csv": "csv",
    "application/octet-stream": "auto",
}
MULTIPART = "multipart/form-data"

#: Longest option field of a multipart body, in bytes (params, metadata: small JSON objects).
MAX_FIELD_BYTES = 64 * 1024
#: Most option fields in one multipart body.
MAX_FIELDS = 32
#: The multipart part that holds the file.
FILE_FIELD = "file"
#: Where `_multipart` hands back the file part's ``filename`` among the fields (a name no form field can have).
_FILENAME = "\x00filename"


@dataclass
class Upload:
    """A received file, in a temporary file that the caller removes (`discard`)."""

    path: Path
    #: The file's format as the media type says (``auto`` when it does not).
    format: Format
    #: SHA-256 (hex) of the file's bytes.
    digest: str
    #: Bytes of the file.
    size: int
    #: Option fields of a multipart body (empty for a raw body).
    fields: dict[str, str] = field(default_factory=dict)
    #: The ``filename`` of a multipart body's file part, where it has one.
    filename: str | None = None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _Part:
    """The multipart part being parsed."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.value = bytearray()
        self.name = ""
        self.is_file = False

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class _Counter:
    """Counts a request's bytes against the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def add(self, n: int) -> None:
        self.seen += n
        if self.seen > self.limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {self.limit} bytes")


def upload_directory(directory: Path | None) -> Path:
    """Where uploads go: ``directory`` (``INFERQ_UPLOAD_DIR``), else the system's temporary directory."""
    return directory if directory is not None else Path(tempfile.gettempdir())


def remove_stale_uploads(directory: Path, started: float) -> list[Path]:
    """Remove the upload files a killed server left in ``directory``: regular files named `UPLOAD_PREFIX` …, last
    written before ``started`` (this process's start, as ``time.time()``), whose writing process is not running
    (or is this one: a pid reused after a restart). Files of other names are never touched. The paths removed."""
    removed = []
    for path in directory.glob(f"{UPLOAD_PREFIX}*"):
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= started or _running(_writer(path.name)):
                continue
            path.unlink()
        except OSError:  # gone meanwhile, or another user's
            continue
        removed.append(path)
    if removed:
        log.warning("removed %d upload file(s) left by a server that was killed, from %s", len(removed), directory)
    return removed


def _writer(name: str) -> int | None:
    """The pid in an upload file's name (``None``: none, a file named before names carried it)."""
    pid, _, _ = name.removeprefix(UPLOAD_PREFIX).partition("-")
    return int(pid) if pid.isdigit() else None


def _running(pid: int | None) -> bool:
    """Whether ``pid`` is another running process (a sibling server process, whose upload may be in progress)."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    raw = request.headers.get("content-type", "")
    kind, params = parse_options_header(raw)
    return kind.decode("latin-1").lower(), params


async def receive_upload(request: Request, limit: int, directory: Path | None = None) -> Upload:
    """Stream the request's file into a temporary file in ``directory`` (``None``: the system's temporary
    directory; see the module's notes)."""
    kind, params = media_type(request)
    if kind != MULTIPART and kind not in RAW_MEDIA_TYPES:
        known = ", ".join([*RAW_MEDIA_TYPES, MULTIPART])
        raise UnsupportedMediaType(f"unsupported media type {kind or '(none)'!r}; send one of: {known}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body ({declared} bytes) is larger than the limit of {limit} bytes")
    fd, name = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            if kind == MULTIPART:
                boundary = params.get(b"boundary")
                if not boundary:
                    raise InvalidParameter("a multipart body needs a boundary", field="content-type")
                digest, size, fields, found = await _multipart(request, boundary, out, _Counter(limit))
                if not found:
                    raise InvalidParameter(f"the multipart body has no {FILE_FIELD!r} part", field=FILE_FIELD)
                filename = fields.pop(_FILENAME, None)
                return Upload(path, "auto", digest, size, fields, filename)
            digest, size = await _raw(request, out, _Counter(limit))
            return Upload(path, RAW_MEDIA_TYPES[kind], digest, size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


async def _raw(request: Request, out: IO[bytes], counter: _Counter) -> tuple[str, int]:
    hasher = hashlib.sha256()
    async for chunk in request.stream():
        counter.add(len(chunk))
        hasher.update(chunk)
        out.write(chunk)
    return hasher.hexdigest(), counter.seen


async def _multipart(
    request: Request, boundary: bytes, out: IO[bytes], counter: _Counter
) -> tuple[str, int, dict[str, str], bool]:
    """The ``file`` part into ``out``, the other parts as fields: python-multipart's streaming parser, fed as the
    body arrives. A body that stops before its closing boundary (``--boundary--``) is refused: it may have been cut
    short, and its last part with it."""
    hasher = hashlib.sha256()
    fields: dict[str, str] = {}
    part = _Part()
    found = False
    ended = False
    size = 0

    def on_end() -> None:
        nonlocal ended
        ended = True

    def on_part_begin() -> None:
        part.reset()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[bytes(part.header_field).lower()] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        nonlocal found
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if part.name == FILE_FIELD:
            filename = options.get(b"filename")
            if filename:
                fields[_FILENAME] = filename.decode("utf-8", "replace")
            if found:
                raise InvalidParameter(f"the multipart body has more than one {FILE_FIELD!r} part", field=FILE_FIELD)
            found = True
            part.is_file = True
        elif len(fields) >= MAX_FIELDS:
            raise InvalidParameter(f"a multipart body holds at most {MAX_FIELDS} fields", field=part.name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal size
        piece = data[start:end]
        if part.is_file:
            hasher.update(piece)
            out.write(piece)
            size += len(piece)
            return
        part.value += piece
        if len(part.value) > MAX_FIELD_BYTES:
            raise InvalidParameter(f"field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes", field=part.name)

    def on_part_end() -> None:
        if not part.is_file:
            try:
                fields[part.name] = part.value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParameter(f"field {part.name!r} is not UTF-8", field=part.name) from None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        async for chunk in request.stream():
            counter.add(len(chunk))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidParameter(f"malformed multipart body: {exc}", field="content-type") from None
    if not ended:
        raise InvalidParameter(
            "malformed multipart body: it ends before its closing boundary (--boundary--)", field="content-type"
        )
    return hasher.hexdigest(), size, fields, found
