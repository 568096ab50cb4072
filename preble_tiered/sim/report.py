"""Human and machine output for simulation runs: a table, JSON, a latency-CDF plot."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from preble_tiered.sim.metrics import SimResult


def format_table(summaries: Sequence[dict]) -> str:
    """One row per run: latency and TTFT (mean/p50/p90/p99, seconds), TPOT, throughput,
    cached tokens by tier, recomputed tokens, bytes moved, decision time."""
    head = ("policy", "lat mean", "p50", "p90", "p99", "ttft mean", "p50", "p90", "p99", "tpot ms",
            "req/s", "hbm%", "dram%", "disk%", "remote%", "recomp%", "GB moved", "dec us", "p99")
    rows = []
    for s in summaries:
        pt = max(s["prompt_tokens"], 1)
        c = s["cached_tokens"]
        rows.append((
            s["policy"], *(f"{s['latency'][k]:.2f}" for k in ("mean", "p50", "p90", "p99")),
            *(f"{s['ttft'][k]:.3f}" for k in ("mean", "p50", "p90", "p99")),
            f"{s['tpot']['mean'] * 1e3:.1f}", f"{s['throughput_rps']:.2f}",
            *(f"{100 * c[k] / pt:.1f}" for k in ("hbm", "dram", "disk", "remote")),
            f"{100 * s['recomputed_tokens'] / pt:.1f}", f"{s['bytes_moved'] / 1e9:.2f}",
            *((f"{s['decision_us']['mean']:.0f}", f"{s['decision_us']['p99']:.0f}") if "decision_us" in s
              else ("-", "-"))))
    if summaries and "ideal" in summaries[0]:
        ideal = summaries[0]["ideal"]
        rows.append(("(ideal bound)", *(f"{ideal['latency'][k]:.2f}" for k in ("mean", "p50", "p90", "p99")),
                     *(f"{ideal['ttft'][k]:.3f}" for k in ("mean", "p50", "p90", "p99")),
                     *("-" * 11)))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, summaries: Sequence[dict], command: str, extra: dict | None = None) -> None:
    doc = {"command": command, "runs": list(summaries), **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def plot_cdf(path: str | Path, results: Sequence[SimResult], title: str) -> None:
    """Latency CDF per policy, plus the ideal bound, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for res in results:
        lat = np.sort([r.latency_s for r in res.records])
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=res.policy)
    if results:
        ideal = np.sort([lat_ for _, lat_ in results[0].ideal])
        ax.plot(ideal, np.arange(1, len(ideal) + 1) / len(ideal), "k--", lw=1, label="ideal bound")
    ax.set_xscale("log")
    ax.set_xlabel("request latency (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


class Progress:
    """A one-line progress bar on stderr for long runs (quiet when not a terminal unless
    forced, and for short runs)."""

    def __init__(self, label: str, total: int, stream: TextIO = sys.stderr, min_total: int = 2000,
                 enabled: bool | None = None) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.enabled = (total >= min_total) if enabled is None else enabled
        self._last = 0.0
        self._t0 = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.5:
            return
        self._last = now
        pct = 100.0 * done / max(total, 1)
        bar = "#" * int(pct / 5)
        self.stream.write(f"\r{self.label:<22} [{bar:<20}] {done}/{total} {pct:5.1f}% {now - self._t0:6.1f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
