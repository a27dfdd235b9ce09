"""inferq's producer side: submit jobs, poll them, export results. Light: imports no torch or transformers."""

from producer.client import Client, JobStatus, Submission
from producer.results import ResultRow

__all__ = ["Client", "JobStatus", "ResultRow", "Submission"]
