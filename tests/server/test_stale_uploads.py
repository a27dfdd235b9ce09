"""Upload files a killed server leaves behind: a real ``inferq serve`` SIGKILLed mid-upload leaves its
``inferq-upload-*`` file, and the next server's start removes it, and only such files: another name, a file of a
process still running (a sibling server process's upload in progress) and a file newer than the start are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.process import running_server
from server.uploads import UPLOAD_PREFIX, remove_stale_uploads
from tests.server.conftest import MakeKey, jsonl
from tests.server.test_served import raw_request

#: An hour ago: how old the planted files are.
AN_HOUR = 3600.0


def planted(directory: Path, name: str, age: float = AN_HOUR) -> Path:
    path = directory / name
    path.write_bytes(b'{"text": "left behind"}\n')
    os.utime(path, (time.time() - age, time.time() - age))
    return path


@pytest.mark.services
def test_a_server_start_removes_what_a_killed_server_left(
    api_env: dict[str, str], make_key: MakeKey, tmp_path: Path
) -> None:
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    env = {**api_env, "INFERQ_UPLOAD_DIR": str(upload_dir), "TMPDIR": str(upload_dir)}
    key, _ = make_key()
    body = jsonl([{"text": f"sentence number {i} of an upload the server never finishes"} for i in range(6_000)])

    # Given a server killed outright while a client uploads a file
    with running_server(env, tmp_path / "first.log") as (url, pid):
        sock, head = raw_request(url, key, body)
        sock.sendall(head + body[: len(body) // 2])
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size > 0 for p in upload_dir.glob(f"{UPLOAD_PREFIX}*")):
            assert time.monotonic() < deadline, "the server never started writing the upload"
            time.sleep(0.05)
        os.killpg(pid, signal.SIGKILL)
        sock.close()
    [left] = list(upload_dir.glob(f"{UPLOAD_PREFIX}*"))
    # And files that are not its: another name, and an upload of a process that still runs
    other = planted(upload_dir, "inferq-notes.jsonl")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as sibling:
        try:
            in_progress = planted(upload_dir, f"{UPLOAD_PREFIX}{sibling.pid}-abc123")

            # When a server starts again
            with running_server(env, tmp_path / "second.log"):
                remaining = set(upload_dir.iterdir())
        finally:
            sibling.kill()

    # Then the killed server's file is gone, and the others are kept
    assert left not in remaining
    assert remaining == {other, in_progress}


def test_only_stale_upload_files_of_gone_processes_are_removed(tmp_path: Path) -> None:
    started = time.time()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = planted(tmp_path, f"{UPLOAD_PREFIX}{dead_pid}-x1")
    unnamed = planted(tmp_path, f"{UPLOAD_PREFIX}k2j3h4")  # a name without a pid: written before names had one
    mine = planted(tmp_path, f"{UPLOAD_PREFIX}{os.getpid()}-x2")  # this pid, before this start: a reused pid
    fresh = planted(tmp_path, f"{UPLOAD_PREFIX}{dead_pid}-x3", age=-60)  # written after the start
    other = planted(tmp_path, "inferq-uploads.txt")
    folder = tmp_path / f"{UPLOAD_PREFIX}dir"
    folder.mkdir()

    removed = remove_stale_uploads(tmp_path, started)

    assert sorted(removed) == sorted([stale, unnamed, mine])
    assert {p for p in tmp_path.iterdir()} == {fresh, other, folder}
