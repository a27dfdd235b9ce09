"""The OpenAI-compatible API: files, batches, embeddings, reranking and inferq's other tasks under ``/v1/…``, so
that code written for OpenAI's client (``client.files.create``, ``client.batches.create``,
``client.embeddings.create``) runs against inferq with ``base_url`` and ``api_key`` changed.

- `files`: the files directory (``INFERQ_FILES_DIR``): bytes in, bytes out, in pieces.
- `batches`: a batch's input lines checked and turned into an inferq job; its output and error files.
- `sync`: the synchronous calls, each a small high-priority job waited for.
- `routes`: the routes, with OpenAI's objects and errors (`server.errors.openai_shaped`).
"""
