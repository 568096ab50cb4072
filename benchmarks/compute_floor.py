"""How much prefill any router must compute: the compute floor of each grid point.

A token outside every shared block must be computed wherever its request runs, and each
shared block (one that two or more requests hold) must be computed at least once
somewhere: no placement, tier or copy avoids either (`preble_tiered.sim.simulator.compute_floor`). So

    floor = unshared tokens + one computation of every distinct shared block

as a share of all prompt tokens. The warm-cluster bound (`sim_policies.py`) computes only
the first part, because its nodes start with every shared block; the floor adds what a cold
cluster cannot skip. Set beside each policy's recomputed share in the committed grid
(`benchmarks/results/sim_policies.json`), it says how much prefill a policy wastes.

Regenerates each stream exactly as the grid ran it (checked: same prompt-token total) and
hashes it in the router's blocks; needs no simulation (about a minute).

    python benchmarks/compute_floor.py [--grid benchmarks/results/sim_policies.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sim_policies import LOADS  # noqa: E402  (the grid's loads)

from preble_tiered.sim.simulator import compute_floor  # noqa: E402
from preble_tiered.workloads import SPECS, WorkloadConfig, make_workload  # noqa: E402

POLICIES = ("round_robin", "preble_e2", "e2_tiered")


def floor_of(workload: str, rps: float, nodes: int, seed: int, block_size: int) -> dict:
    reqs = make_workload(workload, WorkloadConfig(nodes=nodes, rps=rps, requests=SPECS[workload].requests * nodes // 2,
                                                  seed=seed))
    f = compute_floor(reqs, block_size)
    return {"requests": len(reqs), "prompt_tokens": f.prompt_tokens, "unshared_tokens": f.unshared_tokens,
            "shared_blocks": f.shared_blocks, "floor_tokens": f.floor_tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default="benchmarks/results/sim_policies.json",
                    help="sim_policies.py results to set the floor beside")
    ap.add_argument("--seed", type=int, default=0, help="the grid's seed")
    ap.add_argument("--block-size", type=int, default=32, help="the simulator's block size")
    ap.add_argument("--json", default="benchmarks/results/compute_floor.json")
    args = ap.parse_args()
    try:
        grid = json.loads(Path(args.grid).read_text())["grid"]
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"cannot read the grid results {args.grid!r} ({e}): run benchmarks/sim_policies.py first")
    rows = []
    print(f"{'point':18s} {'floor':>6s} {'bound':>6s}  " + "  ".join(f"{p:>11s}" for p in POLICIES)
          + "  (recomputed share of prompt tokens)")
    for point in grid:
        w, load, nodes = point["workload"], point["load"], point["nodes"]
        f = floor_of(w, LOADS[w].per_2gpu(load) * nodes / 2, nodes, args.seed, args.block_size)
        runs = point["runs"]
        if runs[POLICIES[0]]["prompt_tokens"] != f["prompt_tokens"]:
            sys.exit(f"{w} {load}: the regenerated stream has {f['prompt_tokens']} prompt tokens, the grid's "
                     f"{runs[POLICIES[0]]['prompt_tokens']}: not the stream the grid ran (seed? code changed?)")
        share = {p: runs[p]["recomputed_tokens"] / runs[p]["prompt_tokens"] for p in POLICIES}
        row = {"workload": w, "load": load, "nodes": nodes, **f, "floor_share": f["floor_tokens"] / f["prompt_tokens"],
               "unshared_share": f["unshared_tokens"] / f["prompt_tokens"], "recomputed_share": share}
        rows.append(row)
        print(f"{w + ' ' + load:18s} {row['floor_share']:6.1%} {row['unshared_share']:6.1%}  "
              + "  ".join(f"{share[p]:11.1%}" for p in POLICIES), flush=True)
    doc = {"command": "python " + " ".join(sys.argv), "grid": args.grid, "points": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
