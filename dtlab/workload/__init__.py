"""Workloads: jobs over time (synthetic arrival processes here; trace readers in sibling modules)."""
from .stream import arrival_stream, job_stream
from .generate import TEMPLATES, arrival_times, draw_durations, trace_durations, write_workload
from .readers import (TraceError, read_alibaba_v2017_batch_task, read_azure_functions_2021, read_openb_nodes,
                      read_openb_pods, read_trace)
from .topology import latency_matrix, read_ripe_rtt, topology_from_rtt

__all__ = ["arrival_stream", "job_stream",
           "TEMPLATES", "arrival_times", "draw_durations", "trace_durations", "write_workload",
           "TraceError", "read_alibaba_v2017_batch_task", "read_azure_functions_2021", "read_openb_nodes",
           "read_openb_pods", "read_trace", "latency_matrix", "read_ripe_rtt", "topology_from_rtt"]
