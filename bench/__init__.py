"""inferq's benchmark (``make bench``, ``python -m bench``): the transformers pipeline, inferq's engine in-process
and the whole system (client → Redis → one worker process → PostgreSQL), on the same base-size models and the
same real, long-tailed inputs, in one run; then submission, export, status, memory and many-small-jobs scale.
Speed is reported here and never asserted by a test: see ``python -m bench --help``."""
