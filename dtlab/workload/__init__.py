"""Workloads: jobs over time (synthetic arrival processes here; trace readers in sibling modules)."""
from .stream import arrival_stream, job_stream

__all__ = ["arrival_stream", "job_stream"]
