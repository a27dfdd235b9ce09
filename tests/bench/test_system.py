"""Stored vectors: written as a worker writes them, read back, measured in bytes (PostgreSQL)."""

from __future__ import annotations

import numpy as np

from bench.system import store_vectors_as_worker, stored_vectors, vector_storage
from inferq.settings import Settings
from producer.client import Client


def test_vectors_stored_as_the_worker_stores_them_read_back_exactly(migrated_postgres: str) -> None:
    # Given 300 vectors of 384 (two chunks) stored as float32, and the same as float16
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((300, 384), dtype=np.float32)
    with Client(Settings(database_url=migrated_postgres)) as client:
        job32 = store_vectors_as_worker(client, "bench-emb", "inferq-bench-test-cold", vectors)
        job16 = store_vectors_as_worker(client, "bench-emb", "inferq-bench-test-cold", vectors, dtype="float16")
        # Then the job succeeded with every item, and each item holds its vector
        status = client.status(job32)
        assert (status.state.value, status.succeeded, status.total) == ("succeeded", 300, 300)
        back = stored_vectors(client, job32)
        assert all(np.array_equal(b, v.reshape(1, -1)) for b, v in zip(back, vectors, strict=True))
        half = stored_vectors(client, job16)
        assert all(np.array_equal(b, v.astype(np.float16).reshape(1, -1)) for b, v in zip(half, vectors, strict=True))
        # And a vector takes its bytes plus PostgreSQL's 4-byte header (a few rows with long inputs go over
        # PostgreSQL's row threshold and their vector is stored compressed)
        size32, size16 = vector_storage(client, job32), vector_storage(client, job16)
    assert (size32["items"], size32["vector_bytes"], size32["vector_column_bytes_max"]) == (300, 1536, 1540)
    assert 1500 < size32["vector_column_bytes"] <= 1540
    assert (size16["vector_bytes"], size16["vector_column_bytes_max"]) == (768, 772)
    assert size32["result_example"] == '{"dim": 384, "dtype": "float32"}'


def test_the_npy_export_of_stored_vectors_is_timed_and_checked(migrated_postgres: str) -> None:
    from bench.system import npy_export_scale

    with Client(Settings(database_url=migrated_postgres)) as client:
        out = npy_export_scale(client, 600, queue="inferq-bench-test-cold", dim=8, runs=2)
    assert (out["vectors"], out["dim"], out["equal"]) == (600, 8, True)
    assert len(out["seconds_runs"]) == 2 and out["seconds"] == min(out["seconds_runs"])
    assert out["file_bytes"] == 128 + 600 * 8 * 4  # the NPY header, then the float32 rows
