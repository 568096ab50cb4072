"""Routing decisions per second on one core: the router's decision path, measured alone.

For each of N requests (2k-token prompts: a Zipf-popular 1.5k-token shared prefix + a
unique 0.5k-token question) the timed region is what a router does per request:

    block hashing of the token ids  +  Scheduler.schedule (demand, exact match, policy, bookkeeping)

Between decisions, outside the timed region, the cluster answers the way engines do:
residency events for the blocks the chosen node now holds (per-node LRU in HBM with
write-back demotion to DRAM and disk, so the index sees stores *and* removals in every
tier), first-token and finish notifications after a fixed number of later decisions, and a
clock that advances at the offered rate. The event-apply time is reported separately.

Reports decisions/s, mean and p99 per-decision time, the mean per quarter of the run
(flatness: last quarter / first quarter), index size, peak RSS, and per quarter how many
nodes hold part of a prompt (sampled every 100th decision, untimed: the policy's exploit
work is O(those nodes), so this is how warm the cluster is).

The collector runs as in `preble router` (`gc_tuning.tune_gc_for_serving`: start-up state
frozen, the youngest generation collected every 50,000 allocations), so collections the
decision path triggers are in the figure (with Python's defaults it measured 7.0k against
11.9k decisions/s at 128 nodes; see gc_tuning.py).

Flatness is also given corrected for the machine's drift: every 500 decisions, outside the
timed region, the same fixed piece of work runs (`DriftProbe`: matching one prompt against
a small, never-changing index, in both kernels, plus hashing it); its time per quarter, over
its first quarter, is how much faster or slower the machine itself ran, and the corrected
flatness divides it out. The probe's working set is small and fixed, so it does not see
what a growing index costs; only the machine's own speed.

    python benchmarks/router_throughput.py [--requests 100000] [--nodes 32 128] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

from preble_tiered.events import BlockRemoved, BlockStored
from preble_tiered import gc_tuning
from preble_tiered import hashing
from preble_tiered.hashing import BlockHasher
from preble_tiered.scheduler.clock import ManualClock
from preble_tiered.scheduler.index import PrefixIndex, kernel_names
from preble_tiered.scheduler.core import Scheduler, SchedulerConfig
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.cost_model import cost_preset
from preble_tiered.scheduler.types import RouteRequest
from preble_tiered.router.decisions import DecisionRing
from preble_tiered.types import Tier

PREFIX_TOKENS, QUESTION_TOKENS = 1536, 512


class NodeCache:
    """Exact-enough engine residency: HBM LRU, demotion to DRAM, then disk (block counts)."""

    def __init__(self, node: int, hbm: int, dram: int, disk: int) -> None:
        self.node = node
        self.tiers = [(Tier.HBM, OrderedDict(), hbm), (Tier.DRAM, OrderedDict(), dram), (Tier.DISK, OrderedDict(), disk)]

    def store(self, hashes: list[int]) -> list:
        events, (tier, lru, _) = [], self.tiers[0]
        new = [h for h in hashes if h not in lru]
        for h in reversed(hashes):  # tail least recent, as vLLM frees
            lru[h] = None
            lru.move_to_end(h)
        if new:
            events.append(BlockStored(self.node, tier, tuple(new)))
        self._spill(0, events)
        return events

    def _spill(self, level: int, events: list) -> None:
        tier, lru, cap = self.tiers[level]
        over = len(lru) - cap
        if over <= 0:
            return
        out = [lru.popitem(last=False)[0] for _ in range(over)]
        events.append(BlockRemoved(self.node, tier, tuple(out)))
        if level + 1 < len(self.tiers):
            ntier, nlru, _ = self.tiers[level + 1]
            new = [h for h in out if h not in nlru]
            for h in out:
                nlru[h] = None
                nlru.move_to_end(h)
            if new:
                events.append(BlockStored(self.node, ntier, tuple(new)))
            self._spill(level + 1, events)


class PromptStream:
    """2k-token prompts made on demand (a router holds no backlog of prompts): a Zipf-popular
    shared prefix (tokens fixed per prefix) plus a fresh question."""

    def __init__(self, n_prefixes: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.prefixes = [self.rng.integers(0, 32000, PREFIX_TOKENS, dtype=np.uint32) for _ in range(n_prefixes)]
        p = np.arange(1, n_prefixes + 1, dtype=np.float64) ** -1.1
        self.p = p / p.sum()

    def take(self, n: int) -> list[np.ndarray]:
        picks = self.rng.choice(len(self.prefixes), size=n, p=self.p)
        questions = self.rng.integers(0, 32000, (n, QUESTION_TOKENS), dtype=np.uint32)
        return [np.concatenate([self.prefixes[k], q]) for k, q in zip(picks, questions)]


class DriftProbe:
    """A fixed piece of router-like work (index match in both kernels + hashing) whose time
    tracks the machine's speed during a run, not the run's state."""

    def __init__(self, nodes: int) -> None:
        rng = np.random.default_rng(1)
        self.prompt = rng.integers(0, 32000, PREFIX_TOKENS + QUESTION_TOKENS, dtype=np.uint32).tolist()
        self.hasher = BlockHasher()
        hashes = self.hasher(self.prompt)
        self.indexes = []
        for kernel in kernel_names():
            ix = PrefixIndex(180.0, kernel=kernel)
            for n in range(0, nodes, 3):
                ix.store(n, Tier.HBM, hashes[: 16 + n % 40], None, 0.0)
                ix.store(n, Tier.DRAM, hashes[: 48], None, 0.0)
            self.indexes.append(ix)
        self.hashes = hashes

    def __call__(self, reps: int = 20) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            self.hasher(self.prompt)
            for ix in self.indexes:
                ix.match(self.hashes)
        return time.perf_counter() - t


class CollectorWatch:
    """Counts the collector's runs and their time (gc.callbacks), wherever they land."""

    def __init__(self) -> None:
        self.runs, self.seconds, self._t = 0, 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.runs += 1
            self.seconds += time.perf_counter() - self._t


def run(nodes: int, requests: int, rps: float, seed: int, policy: str, dram_x: float = 10, disk_x: float = 50,
        explain: bool = False) -> dict:
    """explain: what the real router adds per decision for `preble admin explain`: every
    candidate's cost terms kept on the Decision, and a DecisionRing record (with the prompt)."""
    cost = cost_preset("mistral-7b-a6000")
    clock = ManualClock()
    sched = Scheduler(SchedulerConfig(policy=policy, n_nodes=nodes, policy_config=PolicyConfig(explain=explain)),
                      cost, clock)
    ring = DecisionRing() if explain else None
    hasher = BlockHasher()
    bs = hasher.block_size
    hbm = cost.hbm_tokens // bs
    caches = [NodeCache(n, hbm, int(dram_x * hbm), int(disk_x * hbm)) for n in range(nodes)]
    stream = PromptStream(n_prefixes=25 * nodes, seed=seed)
    inflight: deque[tuple[str, list[int]]] = deque()
    depth = 16 * nodes  # requests in flight (each finishes `depth` decisions later)
    times = np.empty(requests)
    hash_times = np.empty(requests)
    probe, probe_times = DriftProbe(nodes), []
    holders: list[int] = []  # nodes holding part of the prompt, every 100th decision
    apply_s = 0.0
    sizes: list[int] = []  # index entries at each quarter's end
    n_events = 0
    gc_defaults = gc.get_threshold()
    gc_tuning.tune_gc_for_serving()  # as `preble router` runs: collections inside the timed region count
    watch = CollectorWatch()
    gc.callbacks.append(watch)
    paused = np.zeros(requests, dtype=bool)  # a collection ran inside this decision
    gc_by_quarter = [[0, 0.0] for _ in range(4)]  # runs, seconds: every collection, timed or not
    t_run = time.perf_counter()
    batch: list[np.ndarray] = []
    for i in range(requests):
        if not batch:
            batch = stream.take(1000)[::-1]  # made outside the timed region
        toks = batch.pop()
        prompt = toks.tolist()  # a router holds each in-flight request's prompt as a list
        clock.advance(1.0 / rps)
        runs_before, gc_s_before = watch.runs, watch.seconds
        t0 = time.perf_counter()
        hashes = hasher(prompt)  # the list, as the router hashes run.ids + run.generated
        t_h = time.perf_counter()
        d = sched.schedule(RouteRequest(f"r{i}", hashes, len(toks), 64))
        if ring is not None:
            ring.record(d.request_id, 0.0, d, prompt, d.predicted_cached)
        t_end = time.perf_counter()
        hash_times[i] = t_h - t0
        times[i] = t_end - t0
        paused[i] = watch.runs != runs_before
        if i % 500 == 0:
            probe_times.append(probe())  # outside the timed region
        if i % 100 == 0:  # how many nodes hold part of this prompt (read only, untimed)
            holders.append(len(sched.index.match(hashes).nodes))
        t1 = time.perf_counter()
        for ev in caches[d.node].store(hashes):
            sched.apply(ev)
            n_events += 1
        inflight.append((d.request_id, prompt))
        if len(inflight) > depth:
            rid, _ = inflight.popleft()
            sched.on_first_token(rid)
            sched.on_finish(rid, 64)
            if ring is not None:  # at completion, as the router does
                rec = ring.get(rid)
                if rec is not None:
                    ring.finish(rec, "done")
        if ring is not None and i % int(rps) == 0:
            ring.trim()  # the router's once-a-second housekeeping (simulated clock: rps decisions)
        apply_s += time.perf_counter() - t1
        if (i + 1) % (requests // 4) == 0 and len(sizes) < 3:
            sizes.append(len(sched.index))
        g = gc_by_quarter[min(3, i * 4 // requests)]
        g[0] += watch.runs - runs_before
        g[1] += watch.seconds - gc_s_before
    wall = time.perf_counter() - t_run
    gc.callbacks.remove(watch)
    gc.unfreeze()
    gc.set_threshold(*gc_defaults)
    sizes.append(len(sched.index))
    q = np.array_split(times, 4)
    quarters = [float(x.mean() * 1e6) for x in q]
    # the same, leaving out the decisions a collection ran inside (a few, tens of ms each)
    quiet = [float(x[~p].mean() * 1e6) for x, p in zip(q, np.array_split(paused, 4))]
    medians = [float(np.median(x) * 1e6) for x in q]  # robust to the machine's own spikes
    drift = [float(x.mean()) for x in np.array_split(np.array(probe_times), 4)]
    drift = [x / drift[0] for x in drift]  # machine speed per quarter, relative to the first
    sched_only = times - hash_times
    return {
        "policy": policy, "explain": explain, "nodes": nodes, "requests": requests, "prompt_tokens": PREFIX_TOKENS + QUESTION_TOKENS,
        "decisions_per_s": requests / float(times.sum()),
        "decisions_per_s_excluding_hashing": requests / float(sched_only.sum()),
        "decision_us": {"mean": float(times.mean() * 1e6), "p50": float(np.percentile(times, 50) * 1e6),
                        "p99": float(np.percentile(times, 99) * 1e6)},
        "hash_us": {"mean": float(hash_times.mean() * 1e6)},
        "schedule_us": {"mean": float(sched_only.mean() * 1e6), "p99": float(np.percentile(sched_only, 99) * 1e6)},
        "quarter_mean_us": quarters, "last_over_first": quarters[-1] / quarters[0],
        "machine_drift_by_quarter": drift,
        "last_over_first_drift_corrected": quarters[-1] / quarters[0] / drift[-1],
        "quarter_median_us": medians, "median_last_over_first": medians[-1] / medians[0],
        "quarter_mean_us_without_collections": quiet,
        "last_over_first_without_collections": quiet[-1] / quiet[0],
        "collector": {"thresholds": list(gc_tuning.SERVING_THRESHOLDS),
                      "runs_by_quarter": [g[0] for g in gc_by_quarter],
                      "ms_by_quarter": [g[1] * 1e3 for g in gc_by_quarter],
                      "decisions_paused": int(paused.sum())},
        "holders_by_quarter": [float(x.mean()) for x in np.array_split(np.array(holders, dtype=float), 4)],
        "event_apply_us_per_request": apply_s / requests * 1e6, "events": n_events,
        "index_entries": len(sched.index), "index_entries_by_quarter": sizes,
        "tiers_x_hbm": {"dram": dram_x, "disk": disk_x}, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall, "branches": dict(sched.branch_counts),
        "index_kernel": sched.index.kernel, "native_hashing": hashing._hashing_native is not None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rps", type=float, default=500.0, help="offered rate on the simulated clock")
    ap.add_argument("--policy", default="e2_tiered")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dram-x", type=float, default=10.0, help="DRAM tier per node, in multiples of HBM")
    ap.add_argument("--disk-x", type=float, default=50.0, help="disk tier per node, in multiples of HBM")
    ap.add_argument("--explain", action="store_true",
                    help="also keep what `preble admin explain` needs (candidates + decision ring), as the router does")
    ap.add_argument("--json", default="benchmarks/results/router_throughput.json")
    args = ap.parse_args()
    runs = []
    for n in args.nodes:
        r = run(n, args.requests, args.rps, args.seed, args.policy, args.dram_x, args.disk_x, args.explain)
        runs.append(r)
        print(f"{args.policy}{' +explain' if args.explain else ''} nodes={n:4d} requests={r['requests']}: {r['decisions_per_s']:8.0f} decisions/s "
              f"with hashing ({r['decisions_per_s_excluding_hashing']:.0f}/s schedule() alone)  "
              f"mean {r['decision_us']['mean']:6.1f} us (hash {r['hash_us']['mean']:.1f})  p99 {r['decision_us']['p99']:6.1f} us  "
              f"quarters {' '.join(f'{x:.1f}' for x in r['quarter_mean_us'])} us (last/first {r['last_over_first']:.2f}; "
              f"machine drift {r['machine_drift_by_quarter'][-1]:.2f}, corrected {r['last_over_first_drift_corrected']:.2f}; "
              f"{r['last_over_first_without_collections']:.2f} without the {r['collector']['decisions_paused']} decisions "
              f"a collection ran in; medians {r['median_last_over_first']:.2f})  collector {' '.join(f'{x:.0f}' for x in r['collector']['ms_by_quarter'])} ms  "
              f"events {r['event_apply_us_per_request']:.1f} us/req  index {r['index_entries_by_quarter']} entries  "
              f"holders {' '.join(f'{x:.1f}' for x in r['holders_by_quarter'])}  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB  [{r['index_kernel']} index, "
              f"{'native' if r['native_hashing'] else 'python'} hashing]", flush=True)
    doc = {"command": "python " + " ".join(sys.argv), "runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
