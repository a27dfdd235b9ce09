"""The routes of the API, one module per area: health, jobs, models."""
