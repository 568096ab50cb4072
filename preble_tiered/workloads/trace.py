"""Trace replay: requests as JSON Lines, one request per line.

    {"id": "r-1", "t": 0.25, "segments": [["sys", 300], ["q-1", 42]], "output_tokens": 16}

`t` is the arrival time in seconds (>= 0), `segments` the prompt as named segments (equal ids
mean equal tokens, see :mod:`.tokens`), `output_tokens` the tokens to generate. `id` is
optional (default "trace-<line number>"). Blank lines are ignored. :func:`write_trace` writes
the same format, so a written stream loads back with the same ids, times and segments.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from typing import IO, Any

from preble_tiered.types import Segment, WorkloadRequest

TRACE_WORKLOAD = "trace"


class _LineError(ValueError):
    """What is wrong with one line (the caller adds file and line number)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_segments(raw: Any) -> tuple[Segment, ...]:
    if not isinstance(raw, list) or not raw:
        raise _LineError('"segments" must be a non-empty list of ["segment-id", n_tokens] pairs')
    out = []
    for j, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2):
            raise _LineError(f'segment {j} must be a ["segment-id", n_tokens] pair, got {item!r}')
        seg_id, n = item
        if not isinstance(seg_id, str) or not seg_id:
            raise _LineError(f"segment {j}: id must be a non-empty string, got {seg_id!r}")
        if not _is_int(n):
            raise _LineError(f"segment {j} ({seg_id!r}): n_tokens must be an integer, got {n!r}")
        if n < 1:
            raise _LineError(f"segment {j} ({seg_id!r}): n_tokens must be >= 1, got {n}")
        out.append(Segment(seg_id, n))
    return tuple(out)


def _parse_request(obj: Any, lineno: int, time_scale: float) -> WorkloadRequest:
    """One validated request from a decoded line."""
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("t", "segments", "output_tokens") if k not in obj]
    if missing:
        raise _LineError(f"missing key(s) {', '.join(map(repr, missing))}")
    t = obj["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _LineError(f'"t" must be a finite number of seconds, got {t!r}')
    if t < 0:
        raise _LineError(f'"t" must be >= 0, got {t}')
    out = obj["output_tokens"]
    if not _is_int(out):
        raise _LineError(f'"output_tokens" must be an integer, got {out!r}')
    if out < 1:
        raise _LineError(f'"output_tokens" must be >= 1, got {out}')
    rid = obj.get("id", f"trace-{lineno}")
    if not isinstance(rid, str) or not rid:
        raise _LineError(f'"id" must be a non-empty string, got {rid!r}')
    segments = _parse_segments(obj["segments"])
    return WorkloadRequest(rid, float(t) * time_scale, segments, out, TRACE_WORKLOAD)


def load_trace(
    path: str | os.PathLike[str], limit: int | None = None, time_scale: float = 1.0
) -> list[WorkloadRequest]:
    """The requests of a JSONL trace, sorted by arrival time (ties keep file order).

    Args:
        path: the trace file.
        limit: keep only the first `limit` requests in time order (None: all).
        time_scale: multiply every arrival time by this (> 0); 0.5 replays twice as fast.

    Returns:
        Requests with `workload="trace"`.

    Raises:
        ValueError: naming the file and line, on invalid JSON, a missing key, a negative
            time, a non-integer or non-positive count, empty segments or a duplicate id;
            also on a negative `limit` or a non-positive `time_scale`.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (or None for all), got {limit}")
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be positive and finite, got {time_scale}")
    requests: list[WorkloadRequest] = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                req = _parse_request(json.loads(line), lineno, time_scale)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            except _LineError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if req.request_id in first_line:
                raise ValueError(f"{path}:{lineno}: duplicate id {req.request_id!r} "
                                 f"(first on line {first_line[req.request_id]})")
            first_line[req.request_id] = lineno
            requests.append(req)
    requests.sort(key=lambda r: r.arrival_s)
    return requests if limit is None else requests[:limit]


def _line(req: WorkloadRequest) -> str:
    if not (math.isfinite(req.arrival_s) and req.arrival_s >= 0):
        raise ValueError(f"request {req.request_id!r}: arrival time must be finite and >= 0, got {req.arrival_s}")
    obj = {
        "id": req.request_id,
        "t": req.arrival_s,
        "segments": [[s.seg_id, s.n_tokens] for s in req.segments],
        "output_tokens": req.output_tokens,
    }
    return json.dumps(obj, separators=(",", ":"))


def write_trace(requests: Iterable[WorkloadRequest], path_or_file: str | os.PathLike[str] | IO[str]) -> None:
    """Write `requests` as a JSONL trace that :func:`load_trace` reads back unchanged.

    Args:
        requests: the requests, written in the given order.
        path_or_file: a path (created or overwritten) or an open text file (left open).

    Raises:
        ValueError: on a negative or non-finite arrival time.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8") as f:
            write_trace(requests, f)
        return
    for req in requests:
        path_or_file.write(_line(req) + "\n")
