"""`preble` command line.

    preble sim (--workload W | --trace PATH) --nodes N --policy P [--policy P2 ...] [--profile NAME|PATH] ...
    preble workload export --workload W -o PATH [--nodes N --requests R --rps X --seed S]
    preble workload list

    preble serve [--nodes 2] [--model PATH] [--port 50051]
    preble router --port P --policy e2_tiered
    preble node --model PATH --router ADDR --port P [--block-size 32] [--kv-cache-bytes B]
    preble generate --addr ADDR [--json] TEXT
    preble bench --addr ADDR (--workload W | --trace PATH) [--rps X] [--requests R] [--json PATH]
    preble calibrate --addr ADDR -o profile.json
    preble admin profile [-o PATH] [--json]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from preble_tiered.cli import admin as cli_admin, calibrate as cli_calibrate, serving as cli_serving
from preble_tiered.cli.argtypes import nonneg_int, positive_float, positive_int
from preble_tiered.cli.paths import check_output
from preble_tiered.scheduler.cost_model import COST_PRESETS, cost_preset
from preble_tiered.scheduler.policy import PolicyConfig
from preble_tiered.scheduler.registry import policy_names


def _add_workload_args(p: argparse.ArgumentParser, trace: bool, nodes_default: int | None = 8) -> None:
    from preble_tiered.workloads import WORKLOADS

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workload", choices=sorted(WORKLOADS), help="built-in workload generator")
    if trace:
        src.add_argument("--trace", metavar="PATH",
                         help='JSONL trace: {"t": s, "segments": [["id", n_tokens], ...], "output_tokens": n} per line')
    p.add_argument("--nodes", type=positive_int, default=nodes_default,
                   help="number of nodes (GPUs) the workload is scaled to (default: "
                        f"{nodes_default or 'the nodes serving'})")
    p.add_argument("--requests", type=positive_int, default=None,
                   help="number of requests (default: the workload's, scaled with --nodes"
                        + ("; with --trace: all of its requests)" if trace else ")"))
    p.add_argument("--rps", type=positive_float, default=None,
                   help="total arrival rate (default: the workload's, scaled with --nodes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson",
                   help="arrival process (default: poisson; gamma is bursty)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="preble", description="preble_tiered: tier-aware distributed prompt scheduling")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sim = sub.add_parser("sim", help="simulate policies on a cluster (real scheduler, simulated engines)",
                         description="Run the real scheduler on a simulated cluster and compare policies. "
                                     "Prints a table per policy; --json/--plot write results.")
    _add_workload_args(sim, trace=True)
    sim.add_argument("--policy", action="append", metavar="P",
                     help=f"policy to run, repeatable, or 'all' (known: {', '.join(policy_names())}; default: e2_tiered)")
    sim.add_argument("--cost", default=None, choices=sorted(COST_PRESETS),
                     help="cost-model preset (default: mistral-7b-a6000, unless --profile)")
    sim.add_argument("--profile", metavar="NAME|PATH", default=None,
                     help="run on a measured cluster profile (a shipped name such as cpu-tiny, or a JSON file "
                          "from `preble calibrate` / `preble admin profile`): its prefill and decode fits, "
                          "engine limits, KV per tier, links and request overhead; --hbm-tokens etc. override")
    sim.add_argument("--router-learns-costs", action="store_true",
                     help="with --profile: the router learns the engines' speed as a real one started without a "
                          "profile does, starting from its guess and refitting from the nodes' measured prefills and decode steps, "
                          "instead of pricing with the profile's fits from the first request")
    sim.add_argument("--hbm-tokens", type=positive_int, default=None,
                     help="per-node GPU KV capacity (default: preset's)")
    sim.add_argument("--dram-tokens", type=nonneg_int, default=None, help="per-node DRAM tier (default: 10x HBM)")
    sim.add_argument("--disk-tokens", type=nonneg_int, default=None, help="per-node disk tier (default: 50x HBM)")
    sim.add_argument("--block-size", type=positive_int, default=None,
                     help="tokens per KV block (default: 32, or the profile's)")
    sim.add_argument("--event-delay", type=float, default=0.0, metavar="S",
                     help="delay before residency events reach the router, seconds (default: 0)")
    sim.add_argument("--engine-tiers", choices=["policy", "all", "none"], default="policy",
                     help="which runs get DRAM/disk tiers: each policy's own stack (default), all, none")
    sim.add_argument("--json", metavar="PATH", help="write the results as JSON")
    sim.add_argument("--plot", metavar="PATH", help="write a latency CDF per policy (PNG)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")

    wl = sub.add_parser("workload", help="workload tools", description="Inspect or export built-in workloads.")
    wsub = wl.add_subparsers(dest="wcmd", required=True, metavar="ACTION")
    exp = wsub.add_parser("export", help="write a built-in workload as a JSONL trace",
                          description="Write a built-in workload in the trace format `preble sim --trace` reads.")
    _add_workload_args(exp, trace=False)
    exp.add_argument("-o", "--output", required=True, metavar="PATH", help="trace file to write ('-' for stdout)")
    wsub.add_parser("list", help="list the built-in workloads")
    cli_serving.add_parsers(sub, positive_int, positive_float,
                            lambda p, trace: _add_workload_args(p, trace, nodes_default=None))
    cli_admin.add_parser(sub)
    cli_calibrate.add_parser(sub, positive_int)
    return ap


def _load_requests(args: argparse.Namespace):
    from preble_tiered.workloads import WorkloadConfig, load_trace, make_workload

    if getattr(args, "trace", None):
        reqs = load_trace(args.trace, limit=args.requests)
        return reqs, f"trace:{args.trace}"
    cfg = WorkloadConfig(nodes=args.nodes, requests=args.requests, rps=args.rps, seed=args.seed,
                         arrival=args.arrival)
    return make_workload(args.workload, cfg), args.workload


def _policies(args: argparse.Namespace) -> list[str]:
    chosen = args.policy or ["e2_tiered"]
    if "all" in chosen:
        return policy_names()
    known = policy_names()
    for p in chosen:
        if p not in known:
            raise ValueError(f"unknown policy {p!r}; known: {', '.join(known)}, or 'all'")
    return list(dict.fromkeys(chosen))


def cmd_sim(args: argparse.Namespace) -> int:
    from preble_tiered.sim.report import Progress, format_table, plot_cdf, write_json
    from preble_tiered.sim.simulator import SimConfig, Simulator

    if args.json:
        check_output(args.json, "--json", make_parents=True)
    policies = _policies(args)
    reqs, wname = _load_requests(args)
    profile = None
    if args.router_learns_costs and args.profile is None:
        raise ValueError("--router-learns-costs is for --profile runs (with --cost the router knows its costs)")
    common: dict = {}
    if args.profile is not None:
        if args.cost is not None:
            raise ValueError("give --cost or --profile, not both")
        common["learn_costs"] = args.router_learns_costs
        from preble_tiered.sim import profile_files

        profile = profile_files.load(args.profile)
        cost = profile.cost_model()
        source = f"profile={args.profile} router={'learns costs' if args.router_learns_costs else 'knows costs'}"
    else:
        cost, source = cost_preset(args.cost or "mistral-7b-a6000"), f"cost={args.cost or 'mistral-7b-a6000'}"
    overrides = {k: v for k, v in (("hbm_tokens", args.hbm_tokens), ("dram_tokens", args.dram_tokens),
                                   ("disk_tokens", args.disk_tokens), ("block_size", args.block_size))
                 if v is not None}
    common.update(event_delay_s=args.event_delay, engine_tiers=args.engine_tiers, policy_config=PolicyConfig(),
                  **overrides)
    results, summaries = [], []
    for p in policies:
        cfg = (profile_files.sim_config(profile, p, args.nodes, **common) if profile is not None
               else SimConfig(nodes=args.nodes, policy=p, **common))
        prog = Progress(p, len(reqs), enabled=False if args.quiet else None)
        res = Simulator(reqs, cfg, cost).run(prog)
        results.append(res)
        summaries.append(res.summary(wname, args.nodes))
    print(f"workload={wname} nodes={args.nodes} requests={len(reqs)} {source}")
    print(format_table(summaries))
    command = "preble " + shlex.join(args.argv)
    if args.json:
        extra = {"cost": args.cost or "mistral-7b-a6000"} if profile is None else {
            "profile": {"name": profile.name, "from": args.profile, "source": profile.source,
                        "router_learns_costs": args.router_learns_costs}}
        write_json(args.json, summaries, command, extra)
        print(f"wrote {args.json}")
    if args.plot:
        plot_cdf(args.plot, results, f"{wname}, {args.nodes} nodes, {len(reqs)} requests")
        print(f"wrote {args.plot}")
    return 0


def cmd_workload(args: argparse.Namespace) -> int:
    from preble_tiered.workloads import SPECS, write_trace

    if args.wcmd == "list":
        for name in sorted(SPECS):
            print(name)
        return 0
    if args.output != "-":
        check_output(args.output, "-o")
    reqs, _ = _load_requests(args)
    if args.output == "-":
        write_trace(reqs, sys.stdout)
    else:
        write_trace(reqs, args.output)
        print(f"wrote {len(reqs)} requests to {args.output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with results: the exact command that produced them
    try:
        if args.cmd == "sim":
            return cmd_sim(args)
        if args.cmd == "workload":
            return cmd_workload(args)
        if args.cmd == "bench":
            return cli_serving.cmd_bench(args, _load_requests)
        if args.cmd == "admin":
            return cli_admin.cmd_admin(args)
        if args.cmd == "calibrate":
            return cli_calibrate.cmd_calibrate(args)
        handler = {"serve": cli_serving.cmd_serve, "router": cli_serving.cmd_router, "node": cli_serving.cmd_node,
                   "generate": cli_serving.cmd_generate}.get(args.cmd)
        if handler is not None:
            return handler(args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"preble {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was running stops, without a traceback
        print(f"preble {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
