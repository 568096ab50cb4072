"""Workloads: synthetic Preble streams, trace replay and segment tokenization.

    make_workload("loogle", WorkloadConfig(nodes=4))  # -> list[WorkloadRequest]
    load_trace("trace.jsonl") / write_trace(requests, "trace.jsonl")
    request_token_ids(request)                         # -> uint32 token ids
"""

from preble_tiered.workloads.arrivals import ARRIVALS, make_arrivals
from preble_tiered.workloads.generators import (
    SPECS,
    WORKLOADS,
    WorkloadConfig,
    make_workload,
)
from preble_tiered.workloads.tokens import request_token_ids, segment_tokens
from preble_tiered.workloads.trace import load_trace, write_trace

__all__ = [
    "ARRIVALS",
    "SPECS",
    "WORKLOADS",
    "WorkloadConfig",
    "load_trace",
    "make_arrivals",
    "make_workload",
    "request_token_ids",
    "segment_tokens",
    "write_trace",
]
