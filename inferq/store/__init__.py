"""The store: every SQL statement inferq sends, named for what it does. Nothing outside this package (and
`migrations/`) builds a query; `Client`, the worker's runner, the reconciler, retention and the server's routes
call these functions and read their answers by name.

The caller owns the session (or connection) and its transaction: functions take one, send their statements on it
and never commit. Modules by concern:

- `dialect`: the one seam between PostgreSQL's fast paths and the SQLite fallback, chosen once per engine.
- `locks`: the one lock order of every transaction that changes chunks, items and jobs together (write, cancel),
  and the dispatcher's leader lock (a PostgreSQL advisory lock).
- `jobs`: submit (quota, the COPY path), cancel, retry, the job reads behind status and listing.
- `results`: the result reads behind results, export (JSONL, CSV, NPY, Parquet) and progress.
- `auth`: API keys and tenants (create, list, revoke, authenticate, ensure).
- `chunks`: the worker's protocol: claim, lease, write, finish.
- `outbox`: the webhook outbox: record job ends, claim and record deliveries.
- `dispatch`: the dispatcher's reads, the release of chunks, deadlines, a job's position.
- `maintenance`: recovery (requeue of lost chunks), purge (retention), the gauges' reads.
"""
