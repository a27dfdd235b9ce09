"""Embedding jobs' results: stored vectors decoded for `Client.results`, and exported as JSONL, CSV, NPY and Parquet,
on SQLite and PostgreSQL (where NPY reads the vectors through a binary COPY)."""

from __future__ import annotations

import csv
import io
import json
import random
import struct
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import insert

import inferq.store.results
import producer.cli
import producer.export
from inferq import migrate
from inferq.cli import main
from inferq.errors import ConfigurationError, InvalidParameter
from inferq.results import Embedding
from inferq.schema import Result
from inferq.settings import Settings
from inferq.states import ItemState
from inferq.store.results import in_index_order, vector_query
from inferq.task_specs import TaskName, validate_params
from producer import vectors
from producer.client import Client, store_job
from producer.export import export_jsonl, export_npy, export_parquet, npy_rows_path, write_csv, write_jsonl
from producer.inputs import InputRecord
from producer.results import ResultFilter

DIM = 6

#: float32 values that a careless text or cast would change: subnormal, extremes, -0.0, 0.1's float32, 1/3.
TRICKY = np.array(
    [1e-45, 3.4028235e38, -0.0, 0.1, 1 / 3, -1.1754944e-38],
    dtype="<f4",
)


def vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype("<f4")


def succeeded(
    vectors_: np.ndarray, dtype: str = "float32", spans: list[tuple[int, int]] | None = None
) -> dict[str, Any]:
    """An item as the worker writes it: the result describes the vectors, their bytes go to ``vector``."""
    matrix = np.atleast_2d(vectors_)
    result: dict[str, Any] = {"dim": matrix.shape[1], "dtype": dtype}
    if spans is not None:
        assert len(spans) == len(matrix)
        result["windows"] = [{"start": s, "end": e} for s, e in spans]
    stored = matrix.astype("<f2" if dtype == "float16" else "<f4")
    return {"state": "succeeded", "result": result, "vector": stored.tobytes()}


def failed(code: str = "inference_error", message: str | None = 'RuntimeError: boom "q"\nline 2') -> dict[str, Any]:
    return {"state": "failed", "result": None, "vector": None, "error_code": code, "error_message": message}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    if request.param == "sqlite":
        settings = Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('vectors') / 'inferq.db'}")
        migrate.upgrade(settings)
    else:
        settings = Settings(database_url=request.getfixturevalue("migrated_postgres"))
    with Client(settings) as c:
        yield c


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages, COPY batches and Parquet row groups of a few rows, so that small jobs cross their boundaries."""
    monkeypatch.setattr(inferq.store.results, "_PAGE_ROWS", 3)
    monkeypatch.setattr(producer.export, "_COPY_BATCH_BYTES", 40)
    monkeypatch.setattr(producer.export, "_PARQUET_GROUP_ROWS", 4)


def store(
    client: Client,
    items: list[dict[str, Any]],
    params: dict[str, Any] | None = None,
    task: TaskName = TaskName.EMBEDDING,
) -> str:
    """A job of ``len(items)`` items, each with a result row as the worker writes it (an empty dict stays queued)."""
    job_id = uuid.uuid4().hex
    records = [
        InputRecord(line=i + 1, client_id=item.pop("id", f"t{i}"), data={"text": "t"}) for i, item in enumerate(items)
    ]
    with client.sessions.begin() as session:
        store_job(session, job_id, task, "m", validate_params(task, params or {}), records, 4, "q")
        written = [{"job_id": job_id, "index": i, **item} for i, item in enumerate(items) if "state" in item]
        if written:
            session.execute(insert(Result), written)
    return job_id


def plain_job(client: Client) -> tuple[str, dict[int, np.ndarray]]:
    """float32 vectors, a failed item (and one without a message), two queued ones (an item without a result: a
    cancelled job's would read cancelled, `tests/worker/test_runner.py`), and ids to escape."""
    vecs = {0: TRICKY, 1: vector(1), 4: vector(4), 6: vector(6)}
    items: list[dict[str, Any]] = [
        succeeded(vecs[0]),
        {**succeeded(vecs[1]), "id": 'ünï "q"'},
        failed(),
        {},
        {**succeeded(vecs[4]), "id": None},
        failed("attempts_exhausted", None),
        succeeded(vecs[6]),
        {},
    ]
    return store(client, items), vecs


def windows_job(
    client: Client, dtype: str = "float32"
) -> tuple[str, dict[int, tuple[np.ndarray, list[tuple[int, int]]]]]:
    expected = {
        0: (np.stack([vector(10), vector(11), vector(12)]), [(0, 40), (30, 75), (60, 80)]),
        # TRICKY's largest values overflow float16
        2: (np.stack([TRICKY if dtype == "float32" else vector(13)]), [(0, 9)]),
    }
    items = [
        succeeded(expected[0][0], dtype, expected[0][1]),
        failed(),
        succeeded(expected[2][0], dtype, expected[2][1]),
        {},
    ]
    return store(client, items, {"overflow": "windows", "dtype": dtype}), expected


def as_stored(v: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values that a vector stored in ``dtype`` decodes to."""
    return v.astype("<f2").astype("<f4") if dtype == "float16" else v.astype("<f4")


# -- decoding -------------------------------------------------------------------------------------------------------


def test_decode_widens_float16_exactly_and_checks_the_length() -> None:
    v = vector(3)
    half = v.astype("<f2")
    assert (vectors.decode({"dim": DIM, "dtype": "float16"}, half.tobytes()) == half.astype("<f4")).all()
    out = vectors.exported({"dim": DIM, "dtype": "float32"}, TRICKY.tobytes())
    assert out["embedding"] == [float(x) for x in TRICKY]
    assert all(type(x) is float for x in out["embedding"])
    with pytest.raises(ValueError, match="1 × 6 float32 values take 24"):
        vectors.decode({"dim": DIM, "dtype": "float32"}, b"\x00" * 20)
    with pytest.raises(ValueError, match="unknown vector dtype"):
        vectors.decode({"dim": 1, "dtype": "int8"}, b"\x00")


def test_npy_header_is_one_numpy_reads() -> None:
    for rows, dim in [(0, 0), (3, 384), (10**15, 4096)]:
        header = vectors.npy_header(rows, dim)
        assert len(header) == vectors.NPY_HEADER_BYTES
        stream = io.BytesIO(header)
        assert np.lib.format.read_magic(stream) == (1, 0)
        assert np.lib.format.read_array_header_1_0(stream) == ((rows, dim), False, np.dtype("<f4"))


def copy_stream(rows: list[tuple[int, bytes]]) -> bytes:
    """PostgreSQL's binary COPY of (int4 index, bytea vector) rows."""
    out = [vectors.COPY_SIGNATURE, struct.pack(">ii", 0, 0)]
    for index, blob in rows:
        out.append(struct.pack(">hiii", 2, 4, index, len(blob)) + blob)
    out.append(b"\xff\xff")
    return b"".join(out)


@pytest.mark.parametrize("fixed", [True, False], ids=["one-vector-each", "windows"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_copy_parser_reads_rows_however_the_blocks_split_them(fixed: bool, dtype: str) -> None:
    # given rows of one vector each, or of 1 to 3 vectors (windows), cut into blocks at random places
    rng = random.Random(7)
    np_dtype = vectors.DTYPES[dtype]
    per_row = [1 if fixed else rng.randint(1, 3) for _ in range(40)]
    matrices = [np.stack([vector(i * 10 + j) for j in range(n)]) for i, n in enumerate(per_row)]
    rows = [(i * 2 + 1, m.astype(np_dtype).tobytes()) for i, m in enumerate(matrices)]
    stream = copy_stream(rows)
    cuts = sorted(rng.sample(range(1, len(stream)), 30))
    blocks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    # when fed in groups of blocks
    parser = vectors.CopyVectors(np_dtype, DIM * np_dtype.itemsize if fixed else None)
    indices: list[int] = []
    lengths: list[int] = []
    data = b""
    for i in range(0, len(blocks), 3):
        idx, lens, chunk = parser.feed(blocks[i : i + 3])
        indices += idx.tolist()
        lengths += lens
        data += chunk
    parser.finish()

    # then every row comes out once, in order, as float32
    assert indices == [index for index, _ in rows]
    assert lengths == [len(blob) for _, blob in rows]
    expected = np.concatenate([as_stored(m, dtype) for m in matrices])
    assert np.array_equal(np.frombuffer(data, "<f4").reshape(-1, DIM), expected)


def test_copy_parser_refuses_a_vector_of_another_length_and_a_cut_stream() -> None:
    rows = [(0, vector(0).tobytes()), (1, vector(1)[:4].tobytes())]
    parser = vectors.CopyVectors(vectors.FLOAT32, DIM * 4)
    with pytest.raises(ValueError, match="item 1: vector of 16 bytes"):
        parser.feed([copy_stream(rows) + b"\x00" * 64])
    parser = vectors.CopyVectors(vectors.FLOAT32, DIM * 4)
    parser.feed([copy_stream(rows[:1])[:-5]])
    with pytest.raises(ValueError, match="ended early"):
        parser.finish()


# -- Client.results ---------------------------------------------------------------------------------------------------


def test_results_carry_the_vectors_exactly_and_type_as_embeddings(client: Client) -> None:
    job_id, vecs = plain_job(client)
    rows = list(client.results(job_id))

    assert [r.status for r in rows] == [
        "succeeded",
        "succeeded",
        "failed",
        "queued",
        "succeeded",
        "failed",
        "succeeded",
        "queued",
    ]
    for i, v in vecs.items():
        assert rows[i].result == {"dim": DIM, "dtype": "float32", "embedding": [float(x) for x in v]}
        (typed,) = rows[i].typed() or []
        assert isinstance(typed, Embedding) and typed.start is None
        assert np.array_equal(np.asarray(typed.embedding, dtype="<f4"), v)
        assert typed.embedding == v.astype(np.float64).tolist()  # the float32 values, exactly, as floats
    assert rows[2].result is None and rows[2].typed() is None
    assert rows[2].error == {"code": "inference_error", "message": 'RuntimeError: boom "q"\nline 2'}
    assert rows[5].error == {"code": "attempts_exhausted", "message": ""}
    assert rows[3].result is None and rows[3].error is None


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_results_of_windows_give_one_embedding_per_window(client: Client, dtype: str) -> None:
    job_id, expected = windows_job(client, dtype)
    rows = list(client.results(job_id))
    for i, (matrix, spans) in expected.items():
        result = rows[i].result
        assert result["dim"] == DIM and result["dtype"] == dtype
        assert [(w["start"], w["end"]) for w in result["windows"]] == spans
        typed = rows[i].typed() or []
        assert [(e.start, e.end) for e in typed] == spans
        assert np.array_equal(np.asarray([e.embedding for e in typed], dtype="<f4"), as_stored(matrix, dtype))
    assert rows[1].typed() is None and rows[3].status == "queued"


# -- JSONL and CSV ----------------------------------------------------------------------------------------------------


def jsonl(client: Client, job_id: str, **filters: Any) -> str:
    out = io.StringIO()
    with client.reader() as session:
        n = export_jsonl(session, job_id, out, ResultFilter(**filters))
    assert out.getvalue().count("\n") == n
    return out.getvalue()


@pytest.mark.parametrize("kind", ["plain", "windows-float16"])
def test_jsonl_is_the_decoded_rows_byte_for_byte_with_exact_numbers(client: Client, kind: str) -> None:
    job_id, _ = plain_job(client) if kind == "plain" else windows_job(client, "float16")
    decoded = io.StringIO()
    write_jsonl(client.results(job_id), decoded)
    assert jsonl(client, job_id) == decoded.getvalue()


def test_jsonl_numbers_read_back_as_the_stored_float32(client: Client) -> None:
    job_id, vecs = plain_job(client)
    lines = [json.loads(line) for line in jsonl(client, job_id).splitlines()]
    for i, v in vecs.items():
        assert np.array_equal(np.asarray(lines[i]["result"]["embedding"], dtype="<f4"), v)
    # repr(float(x)) of each float32: the double's shortest text, not the float32's ("1e-45", "0.1")
    assert '"embedding":[1.401298464324817e-45,3.4028234663852886e+38,-0.0,0.10000000149011612,' in jsonl(
        client, job_id
    )
    assert lines[2]["result"] is None and lines[2]["error"]["code"] == "inference_error"


@pytest.mark.parametrize(
    ("filters", "indices"),
    [({"failed": True}, [2, 5]), ({"state": ItemState.SUCCEEDED}, [0, 1, 4, 6]), ({"label": "x"}, [])],
    ids=["failed", "state", "label"],
)
def test_jsonl_of_vectors_filters_as_client_results_does(
    client: Client, filters: dict[str, Any], indices: list[int]
) -> None:
    job_id, _ = plain_job(client)
    out = jsonl(client, job_id, **filters)
    assert [json.loads(line)["index"] for line in out.splitlines()] == indices
    decoded = io.StringIO()
    write_jsonl(client.results(job_id, **filters), decoded)
    assert out == decoded.getvalue()


def test_csv_of_an_embedding_job_holds_the_exported_result(client: Client) -> None:
    job_id, vecs = plain_job(client)
    out = io.StringIO(newline="")
    write_csv(client.results(job_id), out, TaskName.EMBEDDING)
    header, *lines = csv.reader(io.StringIO(out.getvalue(), newline=""))
    assert header == ["index", "id", "status", "error_code", "error_message", "result"]
    assert lines[0][:5] == ["0", "t0", "succeeded", "", ""]
    assert np.array_equal(np.asarray(json.loads(lines[0][5])["embedding"], dtype="<f4"), vecs[0])
    assert lines[2][:5] == ["2", "t2", "failed", "inference_error", 'RuntimeError: boom "q"\nline 2']
    assert lines[2][5] == "" and lines[3][2:] == ["queued", "", "", ""]


# -- NPY --------------------------------------------------------------------------------------------------------------


def npy(client: Client, job_id: str, path: Path, **filters: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    with client.reader() as session:
        done = export_npy(session, job_id, path, ResultFilter(**filters))
    matrix = np.load(path)
    side = [json.loads(line) for line in done.rows_path.read_text(encoding="utf-8").splitlines()]
    assert (done.path, done.rows_path) == (path, npy_rows_path(path))
    assert (done.rows, done.dim, done.items) == (*matrix.shape, len(side))
    assert not list(path.parent.glob("*.part"))
    return matrix, side


def test_npy_holds_every_vector_exactly_and_the_rows_file_says_whose(client: Client, tmp_path: Path) -> None:
    # given float32 vectors, failed, queued and cancelled items
    job_id, vecs = plain_job(client)

    # when exported as NPY
    matrix, side = npy(client, job_id, tmp_path / "emb.npy")

    # then the matrix is the stored vectors in input order, and each line of the rows file names its row
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (4, DIM)
    assert np.array_equal(matrix, np.stack([vecs[i] for i in sorted(vecs)]))
    assert (tmp_path / "emb.rows.jsonl").exists()
    assert side[0] == {"index": 0, "id": "t0", "status": "succeeded", "row": 0, "error": None}
    assert side[1]["id"] == 'ünï "q"' and side[1]["row"] == 1
    assert side[2] == {
        "index": 2,
        "id": "t2",
        "status": "failed",
        "row": None,
        "error": {"code": "inference_error", "message": 'RuntimeError: boom "q"\nline 2'},
    }
    assert side[3] == {"index": 3, "id": "t3", "status": "queued", "row": None, "error": None}
    assert side[4]["id"] is None and side[4]["row"] == 2
    assert side[5]["error"] == {"code": "attempts_exhausted", "message": ""}
    assert [s["row"] for s in side] == [0, 1, None, None, 2, None, 3, None]
    for line in side:
        if line["row"] is not None:
            assert np.array_equal(matrix[line["row"]], vecs[line["index"]])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_npy_of_windows_has_a_row_per_window(client: Client, tmp_path: Path, dtype: str) -> None:
    job_id, expected = windows_job(client, dtype)
    matrix, side = npy(client, job_id, tmp_path / "w.npy")
    assert matrix.shape == (4, DIM)
    assert np.array_equal(matrix, np.concatenate([as_stored(expected[i][0], dtype) for i in (0, 2)]))
    assert side[0]["windows"] == [
        {"start": 0, "end": 40, "row": 0},
        {"start": 30, "end": 75, "row": 1},
        {"start": 60, "end": 80, "row": 2},
    ]
    assert side[1]["windows"] is None and side[1]["error"]["code"] == "inference_error"
    assert side[2]["windows"] == [{"start": 0, "end": 9, "row": 3}]
    assert side[3] == {"index": 3, "id": "t3", "status": "queued", "windows": None, "error": None}
    assert "row" not in side[0]


def test_npy_with_filters_and_without_vectors(client: Client, tmp_path: Path) -> None:
    job_id, vecs = plain_job(client)
    matrix, side = npy(client, job_id, tmp_path / "failed.npy", failed=True)
    assert matrix.shape == (0, DIM)
    assert [(s["index"], s["row"], s["error"]["code"]) for s in side] == [
        (2, None, "inference_error"),
        (5, None, "attempts_exhausted"),
    ]

    matrix, side = npy(client, job_id, tmp_path / "ok", state=ItemState.SUCCEEDED)
    assert np.array_equal(matrix, np.stack([vecs[i] for i in sorted(vecs)]))
    assert (tmp_path / "ok.rows.jsonl").exists() and [s["row"] for s in side] == [0, 1, 2, 3]

    # a job with no vector yet: no rows, as wide as its dimensions parameter
    queued = store(client, [{}, failed()], {"dimensions": 32})
    matrix, side = npy(client, queued, tmp_path / "none.npy")
    assert matrix.shape == (0, 32) and [s["row"] for s in side] == [None, None]


def test_npy_reads_the_rows_file_and_the_matrix_in_one_snapshot(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a job whose queued item succeeds (committed) just as the matrix starts being read
    job_id, vecs = plain_job(client)
    postgres = client.settings.database_url.startswith("postgresql")
    name = "_copy_matrix" if postgres else "_vector_batches"
    read_matrix = getattr(producer.export, name)

    def finish_an_item_first(*args: Any, **kwargs: Any) -> Any:
        with client.sessions.begin() as session:
            session.execute(insert(Result), [{"job_id": job_id, "index": 3, **succeeded(vector(3))}])
        return read_matrix(*args, **kwargs)

    monkeypatch.setattr(producer.export, name, finish_an_item_first)

    # when exported, then both files show the job as it was when the export began
    matrix, side = npy(client, job_id, tmp_path / "e.npy")
    assert np.array_equal(matrix, np.stack([vecs[i] for i in sorted(vecs)]))
    assert side[3]["status"] == "queued" and side[3]["row"] is None
    # and the next export has the new vector
    monkeypatch.setattr(producer.export, name, read_matrix)
    matrix, side = npy(client, job_id, tmp_path / "e.npy")
    assert side[3]["row"] == 2 and np.array_equal(matrix[2], vector(3))


def test_npy_overwrites_an_earlier_export(client: Client, tmp_path: Path) -> None:
    first, _ = plain_job(client)
    second = store(client, [succeeded(vector(99))])
    npy(client, first, tmp_path / "e.npy")
    matrix, side = npy(client, second, tmp_path / "e.npy")
    assert np.array_equal(matrix, vector(99)[None]) and len(side) == 1


def test_npy_of_a_job_without_vectors_is_refused(client: Client, tmp_path: Path) -> None:
    job_id = store(
        client, [{"state": "succeeded", "result": [{"label": "A", "score": 1.0}]}], task=TaskName.CLASSIFICATION
    )
    with client.reader() as session, pytest.raises(InvalidParameter, match="classification job: export it as jsonl"):
        export_npy(session, job_id, tmp_path / "c.npy")
    assert not list(tmp_path.iterdir())


# -- Parquet ----------------------------------------------------------------------------------------------------------


def parquet(client: Client, job_id: str, path: Path, **filters: Any) -> pa.Table:
    with client.reader() as session:
        n = export_parquet(session, job_id, path, ResultFilter(**filters))
    table = pq.read_table(path)
    assert table.num_rows == n
    return table


def test_parquet_of_embeddings_has_fixed_size_float32_lists(client: Client, tmp_path: Path) -> None:
    job_id, vecs = plain_job(client)
    table = parquet(client, job_id, tmp_path / "e.parquet")
    assert pq.ParquetFile(tmp_path / "e.parquet").metadata.num_row_groups == 2  # 8 rows, groups of 4 here
    assert table.column_names == ["index", "id", "status", "embedding", "error_code", "error_message"]
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == DIM and kind.value_type == pa.float32()
    assert table.schema.field("index").type == pa.int64()
    embeddings = table.column("embedding").to_pylist()
    for i, v in vecs.items():
        assert np.array_equal(np.asarray(embeddings[i], dtype="<f4"), v)
    assert [i for i, e in enumerate(embeddings) if e is None] == [2, 3, 5, 7]
    assert table.column("status").to_pylist()[2:4] == ["failed", "queued"]
    assert table.column("error_code").to_pylist()[:3] == [None, None, "inference_error"]
    assert table.column("id").to_pylist()[1] == 'ünï "q"'


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parquet_of_windows_has_a_list_of_windows(client: Client, tmp_path: Path, dtype: str) -> None:
    job_id, expected = windows_job(client, dtype)
    table = parquet(client, job_id, tmp_path / "w.parquet")
    assert "embedding" not in table.column_names
    kind = table.schema.field("windows").type
    assert pa.types.is_list(kind)
    span = kind.value_type
    assert [span.field(i).name for i in range(3)] == ["start", "end", "embedding"]
    assert span.field("start").type == pa.int32() and span.field("embedding").type.list_size == DIM
    windows = table.column("windows").to_pylist()
    for i, (matrix, spans) in expected.items():
        assert [(w["start"], w["end"]) for w in windows[i]] == spans
        assert np.array_equal(np.asarray([w["embedding"] for w in windows[i]], dtype="<f4"), as_stored(matrix, dtype))
    assert windows[1] is None and windows[3] is None


def test_parquet_of_another_task_has_its_top_columns_and_the_result_as_json(client: Client, tmp_path: Path) -> None:
    result = [{"label": "POSITIVE", "score": 0.875}, {"label": "NEGATIVE", "score": 0.125}]
    job_id = store(
        client,
        [{"state": "succeeded", "result": result, "label": "POSITIVE", "score": 0.875}, failed(), {}],
        task=TaskName.CLASSIFICATION,
    )
    table = parquet(client, job_id, tmp_path / "c.parquet")
    assert table.column_names == ["index", "id", "status", "label", "score", "error_code", "error_message", "result"]
    assert table.schema.field("score").type == pa.float64()
    rows = table.to_pylist()
    assert rows[0]["label"] == "POSITIVE" and rows[0]["score"] == 0.875 and json.loads(rows[0]["result"]) == result
    assert rows[1]["result"] is None and rows[1]["error_code"] == "inference_error"
    assert rows[2]["status"] == "queued" and rows[2]["label"] is None
    assert [r["index"] for r in parquet(client, job_id, tmp_path / "f.parquet", failed=True).to_pylist()] == [1]


def test_parquet_without_pyarrow_says_what_to_install(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = plain_job(client)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with client.reader() as session, pytest.raises(ConfigurationError, match=r"pip install inferq\[parquet\]"):
        export_parquet(session, job_id, tmp_path / "e.parquet")


# -- the command ------------------------------------------------------------------------------------------------------


def cli(client: Client, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setattr(producer.cli, "_client", lambda: Client(client.settings))
    return CliRunner().invoke(main, ["results", *args])


def test_cli_writes_npy_and_parquet_files(client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, vecs = plain_job(client)
    done = cli(client, monkeypatch, job_id, "--format", "npy", "-o", str(tmp_path / "e.npy"))
    assert done.exit_code == 0, done.output
    assert np.array_equal(np.load(tmp_path / "e.npy"), np.stack([vecs[i] for i in sorted(vecs)]))
    assert "4 vectors (6-d float32) of 8 items" in done.stderr and "e.rows.jsonl" in done.stderr

    done = cli(client, monkeypatch, job_id, "--format", "parquet", "-o", str(tmp_path / "e.parquet"), "--failed")
    assert done.exit_code == 0, done.output
    assert pq.read_table(tmp_path / "e.parquet").column("index").to_pylist() == [2, 5]

    done = cli(client, monkeypatch, job_id, "--failed")
    assert done.exit_code == 0 and [json.loads(line)["index"] for line in done.stdout.splitlines()] == [2, 5]


def test_cli_refuses_npy_without_a_file_or_for_a_job_without_vectors(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, _ = plain_job(client)
    done = cli(client, monkeypatch, job_id, "--format", "npy")
    assert done.exit_code == 2 and "--format npy writes a file: give it with -o/--output" in done.stderr

    other = store(client, [{}], task=TaskName.CLASSIFICATION)
    done = cli(client, monkeypatch, other, "--format", "npy", "-o", str(tmp_path / "c.npy"))
    assert done.exit_code == 2
    assert "error [invalid_parameter]: NPY export is for jobs with vectors (embedding)" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.services
def test_npy_on_postgresql_reads_the_vectors_in_key_order_never_sorting_them(client: Client, tmp_path: Path) -> None:
    if not client.settings.database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL plan")
    from sqlalchemy import event

    # given a job just written, its items never analyzed (as when a job has just finished)
    job_id, _ = plain_job(client)
    engine = client.sessions.kw["bind"]
    query = vector_query(job_id, ResultFilter()).compile(dialect=engine.dialect)
    # then the vector query's plan, in a transaction set as the export sets it, has no Sort node
    with engine.connect() as conn, conn.begin():
        in_index_order(conn)
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {query}", query.params))
    assert "Sort" not in plan and "pk_results" in plan, plan
    # and the export sets it on both of its connections (the rows file's and the matrix's)
    connections: list[int] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement == "SET LOCAL enable_sort = off":
            connections.append(id(conn.connection.dbapi_connection))

    event.listen(engine, "before_cursor_execute", record)
    try:
        npy(client, job_id, tmp_path / "e.npy")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(set(connections)) == 2
