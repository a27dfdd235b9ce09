"""The files directory (``INFERQ_FILES_DIR``): a file's bytes under its id, its row in SQL (`inferq.store.openai`).

Bytes go in and out in pieces of `inferq.constants.FILE_STREAM_BYTES`, never whole in memory. A file is written
under a temporary name in the directory and renamed to its id once complete, so that a reader never sees half a file.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from inferq import constants
from inferq.errors import InvalidParameter


def new_id(prefix: str) -> str:
    """``file-…``, ``batch_…``: OpenAI's prefixes and 24 random hex digits."""
    return f"{prefix}{secrets.token_hex(12)}"


def files_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def file_path(directory: Path, file_id: str) -> Path:
    return directory / file_id


def count_lines(path: Path) -> int:
    """Lines of the file at ``path`` (a last line without its newline counted), read in pieces."""
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while piece := f.read(constants.FILE_STREAM_BYTES):
            lines += piece.count(b"\n")
            last = piece[-1:]
    return lines + (last != b"\n")


def take_upload(directory: Path, upload: Path, file_id: str) -> tuple[int, int]:
    """Move the received ``upload`` into the files directory as ``file_id``: its size and lines. A file of more
    than `inferq.constants.MAX_FILE_LINES` lines is refused (`InvalidParameter`), and nothing is kept."""
    lines = count_lines(upload)
    if lines > constants.MAX_FILE_LINES:
        raise InvalidParameter(
            f"the file has {lines} lines; inferq takes at most {constants.MAX_FILE_LINES} a file", field="file"
        )
    size = upload.stat().st_size
    target = file_path(files_dir(directory), file_id)
    partial = target.with_name(f".{file_id}.partial")
    shutil.move(upload, partial)
    os.replace(partial, target)
    return size, lines


class FileWriter:
    """A file being written into the files directory (an output or error file): `write` lines, then `commit` it
    under its id (size and line count returned) or `discard` it."""

    def __init__(self, directory: Path, file_id: str) -> None:
        self.file_id = file_id
        self.target = file_path(files_dir(directory), file_id)
        self.partial = self.target.with_name(f".{file_id}.partial")
        self._out: IO[bytes] = self.partial.open("wb")
        self.bytes = 0
        self.lines = 0

    def write(self, line: bytes) -> None:
        self._out.write(line)
        self.bytes += len(line)
        self.lines += 1

    def commit(self) -> None:
        self._out.close()
        os.replace(self.partial, self.target)

    def discard(self) -> None:
        self._out.close()
        self.partial.unlink(missing_ok=True)
        self.target.unlink(missing_ok=True)


def read_pieces(path: Path) -> Iterator[bytes]:
    """The file's bytes, a piece at a time (a streaming response's body)."""
    with path.open("rb") as f:
        while piece := f.read(constants.FILE_STREAM_BYTES):
            yield piece


def remove(directory: Path, file_id: str) -> None:
    file_path(directory, file_id).unlink(missing_ok=True)
