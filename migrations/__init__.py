"""Alembic migrations for inferq's schema. Applied by ``inferq db upgrade``."""
