#!/usr/bin/env python3
"""The least mean TTFT any router can reach on a `peer_routers.py` workload with these engines,
measured on the real engine rather than modelled.

Every request of the workload is sent alone, in arrival order, to one idle vLLM OpenAI server
(the peers' engine, configured as `peer_routers.py` configures it, with KV enough that nothing
is evicted), by the same client, and asked for its first token only. Each request then finds
cached everything the earlier requests' prompts computed, and nothing else runs beside it: no
queue, no decode sharing its steps, no cache miss any placement could avoid. No router over
these engines can give a request a shorter TTFT at any load, so the mean of these TTFTs bounds
the peers' mean TTFT in `peer_routers.py`, and `best peer / bound` is the most any router over
them can be faster than the best peer. Our nodes run the same vLLM engine under their own
agent, so the floor is the engine's; our path's own costs come on top of it.

Each pass starts with an empty prefix cache (vLLM's `/reset_prefix_cache`); the pass's TTFTs
are summarised, and the mean over passes reported (min-max).

    python benchmarks/peer_bounds.py [--workloads chat] [--passes 3]
        [--against benchmarks/results/peer_routers_chat_epyc.json] [--json PATH]

`--against` a `peer_routers.py` result: sets the bound beside its best peer's and our mean TTFT
and the target (1.5x lower than the best peer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_routers import MEAN_TTFT_TARGET as TARGET  # noqa: E402
from peer_routers import OURS, SHAPE, WORKLOADS, warmup, workload  # noqa: E402
from serving_peers import OpenAIClient, VllmServers, closed_loop  # noqa: E402

from preble_tiered.cli.argtypes import positive_int  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BOUND_KV_BYTES = 1 << 30
"""128k tokens of the tiny model: more than any workload's distinct prompt tokens, so nothing
an earlier request computed is evicted."""


async def one_pass(url: str, wl: str, seed: int) -> list[float]:
    reqs = [replace(r, max_tokens=1) for r in workload(wl, seed)]  # the first token is all TTFT needs
    async with OpenAIClient(url) as c:
        for r in warmup(seed):
            await c.send(r)
        recs, _ = await closed_loop(c, reqs, concurrency=1)
    bad = [r for r in recs if r.error]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(recs)} requests failed: {bad[0].error}")
    return [r.ttft * 1e3 for r in recs]


def stats(xs: list[float]) -> dict:
    return {"mean": float(np.mean(xs)), "p50": float(np.percentile(xs, 50)), "p99": float(np.percentile(xs, 99))}


def against(path: Path, wl: str, bound_ms: float) -> dict | None:
    """The bound beside a peer_routers.py result for the same workload (its seed checked in main)."""
    doc = json.loads(path.read_text())
    rows = {r["system"]: r for r in doc["summary"] if r["workload"] == wl}
    peers = {s: r["ttft_mean"]["mean"] for s, r in rows.items() if not s.startswith("preble") and r["ttft_mean"]}
    if not peers:
        return None
    best = min(peers, key=peers.__getitem__)
    target = peers[best] / TARGET
    out = {"results": str(path), "best_peer": best, "best_peer_mean_ttft_ms": peers[best],
           "target_mean_ttft_ms": target, "bound_mean_ttft_ms": bound_ms,
           "most_any_router_can_gain": peers[best] / bound_ms, "target_below_bound": target < bound_ms}
    if OURS in rows:
        ours = rows[OURS]["ttft_mean"]["mean"]
        out |= {"ours_mean_ttft_ms": ours, "ours_over_bound": ours / bound_ms}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=["chat"])
    ap.add_argument("--passes", type=positive_int, default=3, help="passes over each workload (default: 3)")
    ap.add_argument("--seed", type=int, default=0, help="trace seed, as peer_routers.py's --seed (default: 0)")
    ap.add_argument("--model", help="model directory (default: the tiny model)")
    ap.add_argument("--against", type=Path, nargs="*", default=[], metavar="JSON",
                    help="peer_routers.py results to set the bound beside (same workload and seed)")
    ap.add_argument("--json", type=Path, default=RESULTS / "peer_bounds.json")
    args = ap.parse_args()
    for p in args.against:  # checked before any measuring
        if not p.is_file():
            ap.error(f"--against {p}: no such file")
        seed = json.loads(p.read_text()).get("config", {}).get("seed", args.seed)
        if seed != args.seed:
            ap.error(f"--against {p}: its trace seed is {seed}, not {args.seed}: pass --seed {seed}")
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    log_dir = Path(tempfile.mkdtemp(prefix="peer-bounds-"))
    print(f"logs in {log_dir}", flush=True)
    shape = replace(SHAPE, kv_cache_bytes=BOUND_KV_BYTES)
    out: list[dict] = []
    failed: list[str] = []
    with VllmServers(1, model, shape, log_dir, peer_mode=True) as server:
        for wl in args.workloads:
            passes = []
            for k in range(args.passes):
                server.reset_prefix_cache()
                t0 = time.monotonic()
                try:
                    passes.append(stats(asyncio.run(one_pass(server.urls[0], wl, args.seed))))
                except RuntimeError as err:  # the other workloads still run and are written
                    print(f"{wl} pass {k} failed: {err}", flush=True)
                    failed.append(f"{wl} pass {k}: {err}")
                    continue
                print(f"{wl} pass {k}: mean TTFT alone {passes[-1]['mean']:.1f} ms, p50 {passes[-1]['p50']:.1f}, "
                      f"p99 {passes[-1]['p99']:.1f} ({time.monotonic() - t0:.0f} s)", flush=True)
            if not passes:
                continue
            means = [p["mean"] for p in passes]
            row = {"workload": wl, "passes": passes,
                   "mean_ttft_ms": {"mean": float(np.mean(means)), "min": min(means), "max": max(means)}}
            row["against"] = [a for a in (against(p, wl, row["mean_ttft_ms"]["mean"]) for p in args.against) if a]
            for a in row["against"]:
                print(f"  {a['results']}: best peer {a['best_peer']} {a['best_peer_mean_ttft_ms']:.1f} ms, target "
                      f"{a['target_mean_ttft_ms']:.1f} ms, bound {a['bound_mean_ttft_ms']:.1f} ms: no router can be more "
                      f"than {a['most_any_router_can_gain']:.2f}x faster than the best peer"
                      + (f"; ours {a['ours_mean_ttft_ms']:.1f} ms = {a['ours_over_bound']:.2f}x the bound"
                         if "ours_mean_ttft_ms" in a else ""), flush=True)
            out.append(row)
    doc = {"command": "python " + shlex.join(sys.argv), "engine": {**shape.__dict__, "servers": 1},
           "target": TARGET, "workloads": out, "failed": failed}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
