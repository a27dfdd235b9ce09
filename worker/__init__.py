"""inferq's worker side: the Celery app and task, the model cache and the inference engines.

Importing this package imports neither torch nor transformers; engines import them when a model loads.
"""
