"""``inferq demo``: the seed document's examples, zero-shot classification, reranking and a semantic search as real
jobs, submitted with `producer.Client` and run by a real ``inferq worker`` process. It sits above both roles (it
drives a producer and starts a worker), so it is a package of its own: neither role imports it.

`examples` holds its inputs; `cli` builds its models and runs it."""
