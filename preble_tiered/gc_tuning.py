"""Garbage-collector settings for the long-running, allocation-heavy processes (the router).

CPython's defaults collect the youngest generation every 700 net allocations, and a routing
decision makes hundreds of short-lived objects (match tuples, plans, decisions), so a
collection runs every few decisions and the older generations, which hold the router's
long-lived state (in-flight requests, demand windows, the decision ring), are walked again
and again. Measured on `benchmarks/router_throughput.py --nodes 128` (one run each, same
machine): defaults 7.0k decisions/s; `gc.freeze()` after start-up plus thresholds
(700, 10, 10) 7.8k, (10000, 10, 100) 9.9k, (20000, 10, 100) 10.5k, (50000, 20, 100) 11.9k;
the collector off 11.9k. So the router freezes what start-up built (imports, config:
never garbage) and collects the youngest generation every 50,000 allocations: cycles are
still found, only later. Reference counting frees everything else as before: the
benchmark's peak RSS at 128 nodes was 985-987 MB tuned against 984-1006 MB with the
collector off.
"""

from __future__ import annotations

import gc

SERVING_THRESHOLDS = (50_000, 20, 100)


def tune_gc_for_serving(thresholds: tuple[int, int, int] = SERVING_THRESHOLDS) -> None:
    """Collect once, freeze what exists (start-up state), then collect less often.

    Call it once, in the process's entry point, after imports and before serving."""
    if len(thresholds) != 3 or any(t <= 0 for t in thresholds):
        raise ValueError(f"thresholds must be three positive ints, got {thresholds!r}")
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
