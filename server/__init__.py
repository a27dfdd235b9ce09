"""The HTTP API (``inferq serve``): `server.app.create_app` builds the FastAPI app over `producer.Client`.

Needs the ``server`` extra (FastAPI, uvicorn, python-multipart). Nothing is built at import: the app factory takes
the `Settings`, and the database engine and the Celery app are made when the app starts (its lifespan).
"""
