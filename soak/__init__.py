"""A chaos soak: many jobs, several real workers, faults at random moments, and a verdict from SQL.

``python -m soak`` (``make soak``) starts its own PostgreSQL database (behind a TCP proxy that it can cut), its own
``redis-server`` on a free port (or a queue of its own on RabbitMQ), several real ``inferq worker`` processes with
mixed pools and concurrency, and submits a stream of jobs for the whole run: big and small, several tasks and
models, some cancelled on purpose, some holding poison items, some invalid files that must be refused whole. At
moments drawn from the seed it injects faults (`soak.faults`). After a quiet period it reads every job, chunk and
item back from SQL and judges them against a fault-free reference: the same stored inputs run in this process
through the same engines (`soak.verdict`). The summary (lost, duplicated, changed, stuck, faults by kind,
recoveries seen, throughput with and without faults) is printed and written as JSON.
"""
