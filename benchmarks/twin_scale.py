#!/usr/bin/env python3
"""The calibrated twin at scale: the fidelity benchmark's workloads (heavy load) on 2, 8 and 32
simulated nodes, every policy, on the profile that `sim_fidelity.py` validated against the
real 2-node cluster (its engines' fits, limits, tiers and request overhead).

Each workload is scaled with the cluster: requests, arrival rate and distinct prefixes
(documents, tools, conversations) grow with the node count, so the load per node stays the
same. For each run: mean and p99 TTFT and latency, and where e2_tiered's gain comes from
against round_robin and preble_e2:
  - recompute avoided: prompt tokens the policy recomputed (fewer is better);
  - tiers: tokens served from DRAM and disk; copies: tokens pulled from another node;
  - queueing: mean TTFT above the ideal (each request alone on an idle node, its shared
    prefix cached).

    python benchmarks/twin_scale.py [--profile PATH] [--nodes 2 8 32] [--rate-scale R]
        [--router-learns-costs] [--json benchmarks/results/twin_scale.json]

`--rate-scale` multiplies every arrival rate, as `sim_fidelity.py --rate-scale` does for a slower
machine: give the one the profile's fidelity run used, so the load per node is the one validated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sim_fidelity import POLICIES, WORKLOADS, make_trace  # noqa: E402

from preble_tiered.cli.argtypes import positive_float  # noqa: E402
from preble_tiered.scheduler.profile import ClusterProfile  # noqa: E402
from preble_tiered.sim import profile_files  # noqa: E402
from preble_tiered.sim.simulator import Simulator  # noqa: E402
from preble_tiered.workloads import load_trace  # noqa: E402

FIDELITY = ROOT / "benchmarks/results/sim_fidelity.json"


def run(profile: ClusterProfile, trace: Path, nodes: int, policy: str, learn: bool = False) -> dict:
    reqs = load_trace(trace)
    cfg = profile_files.sim_config(profile, policy, nodes, engine_tiers="all", learn_costs=learn)
    s = Simulator(reqs, cfg, profile.cost_model()).run().summary(trace.stem, nodes)
    prompt = s["prompt_tokens"]
    return {"policy": policy, "requests": s["requests"], "ttft": s["ttft"], "latency": s["latency"],
            "queueing_s": s["ttft"]["mean"] - s["ideal"]["ttft"]["mean"],
            "recomputed_share": s["recomputed_tokens"] / prompt,
            "tier_share": (s["cached_tokens"]["dram"] + s["cached_tokens"]["disk"]) / prompt,
            "pulled_share": s["cached_tokens"]["remote"] / prompt, "hbm_share": s["cached_tokens"]["hbm"] / prompt}


def markdown(doc: dict) -> str:
    lines = [f"Profile `{doc['profile']['from']}`, arrival rates x{doc.get('rate_scale', 1.0):g}, the router "
             f"{'learning its costs as the real one does' if doc.get('router_learns_costs') else 'knowing its costs'}"
             f" (`{doc['command']}`).", "",
             "| workload | nodes | policy | TTFT mean / p99 ms | latency mean / p99 ms | queueing ms | recomputed | "
             "from DRAM+disk | pulled | e2_tiered mean latency lower by |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in doc["groups"]:
        runs = {r["policy"]: r for r in g["runs"]}
        ours = runs.get("e2_tiered")
        for r in g["runs"]:
            gain = (f"{r['latency']['mean'] / ours['latency']['mean']:.2f}x"
                    if ours is not None and r["policy"] != "e2_tiered" else "")
            lines.append(
                f"| {g['workload']} | {g['nodes']} | {r['policy']} | {r['ttft']['mean'] * 1e3:.0f} / "
                f"{r['ttft']['p99'] * 1e3:.0f} | {r['latency']['mean'] * 1e3:.0f} / {r['latency']['p99'] * 1e3:.0f} | "
                f"{r['queueing_s'] * 1e3:.0f} | {r['recomputed_share']:.0%} | {r['tier_share']:.0%} | "
                f"{r['pulled_share']:.0%} | {gain} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None,
                    help="profile name or file (default: the one stored in benchmarks/results/sim_fidelity.json)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--load", choices=("light", "heavy"), default="heavy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-scale", type=positive_float, default=1.0,
                    help="multiply every arrival rate (default 1; the profile's fidelity run's, for a slower machine)")
    ap.add_argument("--router-learns-costs", action="store_true",
                    help="the simulated router learns the engines' speed from its nodes as the real router does, "
                         "instead of pricing with the profile's fits from the first request")
    ap.add_argument("--json", type=Path, default=None,
                    help="where to write (default benchmarks/results/twin_scale.json; required with "
                         "--router-learns-costs, which must not overwrite the committed run)")
    args = ap.parse_args()
    if args.json is None:
        if args.router_learns_costs:
            ap.error("--router-learns-costs: give --json (the default file holds the committed run)")
        args.json = ROOT / "benchmarks/results/twin_scale.json"
    if args.profile is None:
        profile = ClusterProfile.from_dict(json.loads(FIDELITY.read_text())["profile"])
        source = str(FIDELITY.relative_to(ROOT))
    else:
        profile, source = profile_files.load(args.profile), args.profile
    groups = []
    with tempfile.TemporaryDirectory(prefix="preble-twin-") as tmp:
        for wl in args.workloads:
            for n in args.nodes:
                trace = Path(tmp) / f"{wl}-{n}.jsonl"
                make_trace(trace, wl, args.load, args.seed, scale=n / 2, rate_scale=args.rate_scale)
                runs = [run(profile, trace, n, p, args.router_learns_costs) for p in POLICIES]
                groups.append({"workload": wl, "nodes": n, "load": args.load, "runs": runs})
                best = min(runs, key=lambda r: r["latency"]["mean"])
                print(f"{wl:9s} {n:3d} nodes: best {best['policy']}; "
                      + ", ".join(f"{r['policy']} {r['latency']['mean'] * 1e3:.0f} ms" for r in runs), flush=True)
    doc = {"command": "python " + shlex.join(sys.argv), "profile": {"name": profile.name, "from": source},
           "rate_scale": args.rate_scale, "router_learns_costs": args.router_learns_costs, "groups": groups}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    args.json.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
