"""inferq's worker side: the Celery app and task, the model registry and the inference engines.

Importing this package imports neither torch nor transformers; engines import them when a model loads.
"""
