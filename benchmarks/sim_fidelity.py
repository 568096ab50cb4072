#!/usr/bin/env python3
"""How well the simulator stands for the real cluster: the same traces through a real 2-node
cluster and through `preble sim` on a profile of that cluster.

1. Calibrate: start the cluster (the same shape as every run below), run `preble calibrate`
   (a synthetic sweep of prefills and decode batches, never one of the traces predicted) and
   keep the profile it writes. `--profile PATH` skips this and uses a stored profile.
2. For each workload x load x policy: start a fresh cluster (router + 2 node agents, one core
   each, the engine's KV smaller than the working set, a DRAM and a disk tier on every node,
   only the router's policy differing; the router starts on the latest calibration, as a
   calibrated cluster runs: `preble router --profile`; `--router-start guess` starts it on its
   guess instead), replay the trace with `preble bench`, stop it; then simulate the same
   trace on the profile (tiers on every node, as on the real one).
3. Report predicted against measured: TTFT and latency (mean, p50, p99), mean time per output
   token (TPOT: where latency misses on long answers come from), cached-token share,
   recomputed tokens; the relative errors; the policies' ranking by mean latency; and, each
   workload's runs pooled, the mean TTFT by request (by the new tokens computed, and by
   whether other requests were in flight in the cluster when it was sent).

Workloads: longdoc (questions on 12 documents of ~3k tokens), toolbench (10 tool prompts of
~1.5k tokens with Zipf popularity, short questions and answers), chat (multi-turn
conversations over one system prompt, answers of 40-250 tokens). Loads: light (queues do not
form) and heavy (they do).

    python benchmarks/sim_fidelity.py [--workloads longdoc toolbench chat] [--loads light heavy]
        [--policy P ...] [--profile PATH | --recalibrate] [--router-start profile|guess]
        [--json benchmarks/results/sim_fidelity.json]

`--recalibrate` (for a machine whose speed drifts within the hour): calibrate again after each
(workload, load)'s runs, and predict those runs on the mean of the calibrations taken just
before and just after them (`mean_profile`). Every run is also predicted on the first
calibration alone, on the one just before it, and on the bracket by a router started without
a profile that learns its costs from its nodes as such a real router does (`preble sim
--router-learns-costs`; with `--router-start guess` that is the real router's way); the report
compares the four, and counts the runs whose decisions (by branch) are the real router's.
Each request's branch, node TTFT and pulled tokens are recorded on the real side, its branch
and new tokens on the predicted one.

Targets: mean TTFT and mean latency within 15% of measured, p99 within 30%, cached-token share
within 5 points, the same ranking of policies by mean latency. The router's own TTFT (from each
request's usage) is reported beside the client's: the difference is the client and the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e_longdoc import free_port, write_chat_trace, write_trace  # noqa: E402
from fidelity_report import (POLICIES, TARGETS, errors, markdown, plot, repeatability, summarize,  # noqa: E402
                             summary_by_calibration, ttft_by_request, within)

from preble_tiered.cli import main as cli  # noqa: E402
from preble_tiered.cli.bench import BenchConfig, run_bench  # noqa: E402
from preble_tiered.cli.argtypes import positive_float  # noqa: E402
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster  # noqa: E402
from preble_tiered.scheduler.profile import ClusterProfile, mean_profile  # noqa: E402
from preble_tiered.sim import profile_files  # noqa: E402
from preble_tiered.sim.simulator import Simulator  # noqa: E402
from preble_tiered.workloads import load_trace  # noqa: E402

WORKLOADS = ("longdoc", "toolbench", "chat")
LOADS = {  # (requests, requests per second)
    "longdoc": {"light": (30, 1.0), "heavy": (60, 3.0)},
    "toolbench": {"light": (40, 1.5), "heavy": (80, 5.0)},
    "chat": {"light": (30, 0.8), "heavy": (60, 2.5)},
}
KV_BYTES = 96 << 20  # per node: ~12k tokens of the tiny model, 4 of longdoc's 12 documents
DRAM_BYTES = 384 << 20
DISK_BYTES = 1 << 30


def write_toolbench_trace(path: Path, requests: int, rps: float, seed: int, tools: int = 10) -> None:
    """`tools` tool prompts of 1,200-1,800 tokens (Zipf popularity, s=1.1), questions of 40-160
    tokens, answers of 16-64 tokens, Poisson arrivals."""
    rng = np.random.default_rng(seed + 7)
    sizes = rng.integers(1200, 1801, size=tools)
    pop = 1.0 / np.arange(1, tools + 1) ** 1.1
    pop /= pop.sum()
    t = np.cumsum(rng.exponential(1.0 / rps, size=requests))
    with path.open("w") as f:
        for q in range(requests):
            tool = int(rng.choice(tools, p=pop))
            f.write(json.dumps({"t": round(float(t[q]), 4),
                                "segments": [[f"tool-{tool}", int(sizes[tool])], [f"tq-{q}", int(rng.integers(40, 161))]],
                                "output_tokens": int(rng.integers(16, 65))}) + "\n")


def make_trace(path: Path, workload: str, load: str, seed: int, scale: float = 1.0, rate_scale: float = 1.0,
               spacing: float | None = None) -> None:
    """The trace of `workload` at `load` for 2 nodes; `scale` multiplies its requests, rate and
    distinct prefixes (documents, tools, conversations), for a cluster `scale` times larger;
    `rate_scale` multiplies the arrival rate alone, for a slower or faster machine; `spacing`
    sends the same requests `spacing` seconds apart instead (each alone on the cluster)."""
    n, rps = LOADS[workload][load]
    n, rps = int(n * scale), rps * scale * rate_scale
    if workload == "longdoc":
        write_trace(path, int(12 * scale), n, rps, 3000, seed)
    elif workload == "toolbench":
        write_toolbench_trace(path, n, rps, seed, int(10 * scale))
    else:
        write_chat_trace(path, int(16 * scale), 5, rps, seed)
        lines = path.read_text().splitlines()[:n]
        path.write_text("\n".join(lines) + "\n")
    if spacing is not None:
        reqs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(json.dumps({**r, "t": i * spacing}) + "\n" for i, r in enumerate(reqs)))


def spec(policy: str, out: Path, label: str, kv_bytes: int, profile: Path | None = None) -> ClusterSpec:
    """`profile`: the router's `--profile` (None: it starts on its guess)."""
    return ClusterSpec(nodes=2, policy=policy, port=free_port(), kv_cache_bytes=kv_bytes, max_model_len=8192,
                       log_dir=str(out / f"logs-{label}"), state_path=str(out / f"logs-{label}" / "router-state.json"),
                       dram_bytes=DRAM_BYTES, disk_bytes=DISK_BYTES,
                       disk_dir=str(out / f"kv-{label}"), profile=str(profile) if profile else None)


def calibrate(out: Path, kv_bytes: int, k: int = 0) -> Path:
    path = out / ("profile.json" if k == 0 else f"profile-{k}.json")
    with LocalCluster(spec("e2_tiered", out, f"calibrate-{k}", kv_bytes)) as c:
        rc = cli.main(["calibrate", "--addr", c.addr, "-o", str(path), "--name", "fidelity", "--quiet"])
        if rc != 0:
            raise RuntimeError(f"preble calibrate failed (exit {rc})")
    return path


def calibration_record(path: Path) -> dict:
    """A calibration as the JSON keeps it: when, the profile, and what it says a 3k-token prefill
    and two decode steps take (how fast the machine was)."""
    d = json.loads(path.read_text())
    cost = ClusterProfile.from_dict(d).cost_model()
    step = lambda ctx, batch: round(cost.decode.step_seconds(cost.shape, ctx, batch) * 1e3, 2)  # noqa: E731
    return {"utc": time.strftime("%H:%M:%S", time.gmtime()), "profile": d,
            "at": {"prefill_ms_3000_new": round(cost.prefill_s(3000, 3000) * 1e3, 1),
                   "decode_step_ms_batch4_ctx4000": step(4000, 4), "decode_step_ms_batch8_ctx8000": step(8000, 8)}}


def bracket(calibrations: list[dict], run: dict, out: Path) -> Path:
    """The profile a --recalibrate run is predicted on: the mean of the calibrations just before
    and just after its (workload, load)'s runs."""
    ks = run["calibrations"]
    path = out / f"bracket-{'-'.join(map(str, ks))}.json"
    if not path.exists():
        mean = mean_profile([ClusterProfile.from_dict(calibrations[k]["profile"]) for k in ks])
        path.write_text(json.dumps(mean.to_dict()))
    return path


def measure(policy: str, trace: Path, out: Path, label: str, kv_bytes: int,
            router_profile: Path | None = None) -> tuple[dict, dict]:
    """The run's summary through `preble bench`'s client, and each request's: new tokens
    computed, other requests in flight when it was sent, its TTFT, the node's part of it, the
    engine's part where the request met nothing else in the engine (None elsewhere), the
    tokens pulled from another node and the router's branch. `router_profile`: the router
    starts on it (None: on its guess)."""
    t0 = time.monotonic()
    reqs = load_trace(trace)
    with LocalCluster(spec(policy, out, label, kv_bytes, router_profile)) as c:
        started = time.monotonic() - t0
        res = asyncio.run(run_bench(reqs, BenchConfig(addr=c.addr, progress=False), f"trace:{trace}"))
    if res.failures:
        raise RuntimeError(f"{len(res.failures)} requests failed in {label}; the first: {res.failures[0]}")
    print(f"[{label}] measured (cluster up in {started:.0f} s)", flush=True)
    recs = res.records
    return res.summary, {
        "id": [r.request_id for r in recs],
        "new_tokens": [r.prompt_tokens - sum(r.cached.values()) for r in recs],
        "others_in_flight": [sum(o is not r and o.arrival_s <= r.arrival_s < o.finish_s for o in recs) for r in recs],
        "measured_ttft_ms": [round((r.first_token_s - r.arrival_s) * 1e3, 2) for r in recs],
        "engine_ttft_ms": [round(r.engine_ttft_s * 1e3, 2) if r.engine_ttft_s > 0 else None for r in recs],
        "node_ttft_ms": [round(r.node_ttft_s * 1e3, 2) if r.node_ttft_s > 0 else None for r in recs],
        "pulled_tokens": [r.cached.get("remote", 0) for r in recs], "branch": [r.branch for r in recs]}


def predict(policy: str, trace: Path, profile: Path, learn: bool = False) -> tuple[dict, dict[str, tuple[float, str, int]]]:
    """What `preble sim --nodes 2 --engine-tiers all --profile` predicts (`learn`: with
    --router-learns-costs): the summary, and each request's (TTFT in ms, branch, new tokens)."""
    prof = profile_files.load(str(profile))
    res = Simulator(load_trace(trace), profile_files.sim_config(prof, policy, 2, engine_tiers="all", learn_costs=learn),
                    prof.cost_model()).run()
    return res.summary(f"trace:{trace}", 2), {r.request_id: (r.ttft_s * 1e3, r.branch, r.recomputed_tokens)
                                               for r in res.records}


def pick(s: dict) -> dict:
    share = sum(s["cached_tokens"].values()) / s["prompt_tokens"] if s["prompt_tokens"] else 0.0
    out = {k: {q: s[k][q] for q in ("mean", "p99")} for k in ("server_ttft", "node_ttft", "engine_ttft") if k in s}
    return {**out, "ttft": {k: s["ttft"][k] for k in ("mean", "p50", "p99")},
            "latency": {k: s["latency"][k] for k in ("mean", "p50", "p99")},
            **({"tpot": {"mean": s["tpot"]["mean"]}} if "tpot" in s else {}),
            "cached_token_share": round(share, 4), "recomputed_tokens": s["recomputed_tokens"],
            "cached_tokens": s["cached_tokens"], **({"branches": s["branches"]} if "branches" in s else {})}


def predicted_on(r: dict, trace: Path, profile: Path, per_request: bool = False, learn: bool = False) -> dict:
    """The run's prediction on `profile`, with its errors against the run's measurements (and,
    with `per_request`, each request's predicted TTFT beside its measured one)."""
    s, each = predict(r["policy"], trace, profile, learn)
    p = pick(s)
    e = errors(r["measured"], p)
    out = {"predicted": p, "error": e, "within": within(e)}
    if per_request and "requests" in r:
        ids = r["requests"]["id"]
        out["requests"] = {**r["requests"], "predicted_ttft_ms": [round(each[i][0], 2) for i in ids],
                           "predicted_branch": [each[i][1] for i in ids],
                           "predicted_new_tokens": [each[i][2] for i in ids]}
    return out


def predict_alternatives(r: dict, calibrations: list[dict], trace: Path, out: Path, on: Path) -> None:
    """A --recalibrate run predicted also on the first calibration alone (as if calibrated once),
    on the last one before its runs (the newest a prediction made in advance could use), and on
    the profile it is predicted on (`on`) by a router started without a profile that learns its
    costs (`--router-learns-costs`)."""
    paths = []
    for k in (0, r["calibrations"][0]):
        path = out / f"calibration-{k}.json"
        if not path.exists():
            path.write_text(json.dumps(calibrations[k]["profile"]))
        paths.append(path)
    r["alternatives"] = {name: {"calibrations": [k], **predicted_on(r, trace, path)}
                         for name, k, path in zip(("first", "before"), (0, r["calibrations"][0]), paths)}
    r["alternatives"]["learns"] = predicted_on(r, trace, on, learn=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--loads", nargs="+", choices=("light", "heavy"), default=["light", "heavy"])
    ap.add_argument("--policy", action="append", choices=POLICIES, help="policies (default: all four)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="a stored profile of this cluster shape (skip calibrating; with --repredict, predict on it "
                         "in place of the one stored in --json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-bytes", type=int, default=KV_BYTES,
                    help=f"engine KV cache per node (default: {KV_BYTES >> 20} MiB, smaller than the working sets)")
    ap.add_argument("--rate-scale", type=positive_float, default=1.0,
                    help="multiply every load's arrival rate (default 1: the rates in LOADS, set on a machine "
                         "whose 3k-token prefill takes ~0.45 s; a machine N times slower wants about 1/N)")
    ap.add_argument("--spacing", type=positive_float, default=None, metavar="S",
                    help="send each trace's requests S seconds apart instead of at its arrival times (the same "
                         "requests; --rate-scale then changes nothing): each alone on the cluster while S exceeds "
                         "every request's latency (a warning says where it did not)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/sim_fidelity.json")
    ap.add_argument("--recalibrate", action="store_true",
                    help="calibrate again after each (workload, load)'s runs and predict those runs on the mean of "
                         "the calibrations just before and just after them (a machine whose speed drifts within "
                         "the hour); every run is also predicted on the first calibration alone and on the one "
                         "just before it, for comparison (seven calibrations in all: about 15 more minutes)")
    ap.add_argument("--replot", action="store_true", help="rebuild the table and PNG from --json, run nothing")
    ap.add_argument("--repredict", action="store_true",
                    help="simulate again the traces of --json (rebuilt from their seed, rate scale and spacing) on its "
                         "stored profile, or on --profile (a calibration apart from the runs; the runs' own is kept "
                         "as run_profile), keeping its real measurements; rewrites --json: work on a copy")
    ap.add_argument("--router-start", choices=("profile", "guess"), default="profile",
                    help="what the real router prices with before it has refitted its costs: the latest calibration "
                         "(`preble router --profile`, as a calibrated cluster runs; default) or its guess (as a router "
                         "started without a profile)")
    ap.add_argument("--compare", type=Path, default=None,
                    help="an earlier run's JSON: report how far the real measurements moved between the two")
    args = ap.parse_args()
    if args.spacing is not None and (args.repredict or args.replot):
        ap.error("--spacing sets the traces of new runs; --repredict and --replot use the stored one")
    if args.recalibrate and (args.profile is not None or args.repredict or args.replot):
        ap.error("--recalibrate calibrates the cluster between real runs: leave out --profile, --repredict and --replot")
    md, png = args.json.with_suffix(".md"), args.json.with_suffix(".png")
    if args.repredict:
        doc = json.loads(args.json.read_text())
        rate_scale = doc["setup"].get("rate_scale", 1.0)
        seed = doc["setup"].get("seed", args.seed)
        with tempfile.TemporaryDirectory(prefix="preble-fidelity-") as tmp:
            out = Path(tmp)
            profile = out / "profile.json"
            if args.profile is not None:  # a profile calibrated apart from these runs replaces the stored one
                doc.setdefault("run_profile", doc["profile"])
                doc["profile"] = json.loads(args.profile.read_text())
            profile.write_text(json.dumps(doc["profile"]))
            calibrations = doc.get("calibrations")
            for r in doc["runs"]:
                if args.profile is not None:
                    r["calibrated_on"] = str(args.profile)
                trace = out / f"{r['workload']}-{r['load']}.jsonl"
                if not trace.exists():
                    make_trace(trace, r["workload"], r["load"], seed, rate_scale=rate_scale,
                               spacing=doc["setup"].get("spacing"))
                on = bracket(calibrations, r, out) if calibrations and args.profile is None else profile
                if on is not profile:
                    a, b = r["calibrations"]
                    r["calibrated_on"] = f"the mean of preble calibrate sweeps {a} and {b} (just before and after these runs)"
                r.update(predicted_on(r, trace, on, per_request=True))
                if calibrations:
                    predict_alternatives(r, calibrations, trace, out, on)
        doc["summary"], doc["rankings"] = summarize(doc["runs"])
        doc["ttft_by_request"] = ttft_by_request(doc["runs"])
        doc["predicted_on"] = "profile" if args.profile is not None or not calibrations else "bracket"
        if calibrations:
            doc["summary_by_calibration"] = summary_by_calibration(doc)
        doc["repredicted"] = "python " + shlex.join(sys.argv)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        args.replot = True
    if args.replot:
        doc = json.loads(args.json.read_text())
        if args.compare is not None:
            doc["repeatability"] = repeatability(doc, json.loads(args.compare.read_text()))
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        md.write_text(markdown(doc))
        plot(doc, png)
        print(markdown(doc))
        return 0
    policies = args.policy or list(POLICIES)
    runs: list[dict] = []
    calibrations: list[dict] = []  # --recalibrate: one before the first runs and one after each (workload, load)
    with tempfile.TemporaryDirectory(prefix="preble-fidelity-") as tmp:
        out = Path(tmp)
        profile = args.profile or calibrate(out, args.kv_bytes)
        latest = Path(profile)  # the router's --profile under --router-start profile
        prof_doc = json.loads(Path(profile).read_text())
        if args.recalibrate:
            calibrations.append(calibration_record(Path(profile)))
        for wl in args.workloads:
            for load in args.loads:
                trace = out / f"{wl}-{load}.jsonl"
                make_trace(trace, wl, load, args.seed, rate_scale=args.rate_scale, spacing=args.spacing)
                group = []
                start = latest if args.router_start == "profile" else None
                for policy in policies:
                    summary, per_request = measure(policy, trace, out, f"{wl}-{load}-{policy}", args.kv_bytes, start)
                    group.append({"workload": wl, "load": load, "policy": policy, "measured": pick(summary),
                                  "requests": per_request})
                if args.recalibrate:
                    k = len(calibrations)
                    latest = calibrate(out, args.kv_bytes, k)
                    calibrations.append(calibration_record(latest))
                    print(f"[calibration {k}] {calibrations[-1]['at']}", flush=True)
                for r in group:
                    label = f"{wl}-{load}-{r['policy']}"
                    if args.recalibrate:
                        r["calibrations"] = [k - 1, k]
                        r["calibrated_on"] = f"the mean of preble calibrate sweeps {k - 1} and {k} (just before and after these runs)"
                        on = bracket(calibrations, r, out)
                        r.update(predicted_on(r, trace, on, per_request=True))
                        predict_alternatives(r, calibrations, trace, out, on)
                    else:
                        r["calibrated_on"] = "preble calibrate sweep" if args.profile is None else str(args.profile)
                        r.update(predicted_on(r, trace, Path(profile), per_request=True))
                    runs.append(r)
                    if args.spacing is not None and r["measured"]["latency"]["p99"] > args.spacing:
                        print(f"  warning: {label}'s p99 latency exceeds --spacing: some requests may have overlapped", flush=True)
                    m, p, e = r["measured"], r["predicted"], r["error"]
                    print(f"  {label}: TTFT {m['ttft']['mean'] * 1e3:.0f} vs {p['ttft']['mean'] * 1e3:.0f} ms "
                          f"({e['ttft_mean'] * 100:+.0f}%), latency {m['latency']['mean'] * 1e3:.0f} vs "
                          f"{p['latency']['mean'] * 1e3:.0f} ms ({e['latency_mean'] * 100:+.0f}%), share "
                          f"{m['cached_token_share']:.2f} vs {p['cached_token_share']:.2f}", flush=True)
    summary, ranks = summarize(runs)
    doc = {"command": "python " + shlex.join(sys.argv), "targets": TARGETS, "profile": prof_doc,
           "setup": {"nodes": 2, "kv_cache_bytes_per_node": args.kv_bytes, "dram_bytes": DRAM_BYTES,
                     "disk_bytes": DISK_BYTES, "loads": LOADS, "rate_scale": args.rate_scale,
                     "seed": args.seed, "spacing": args.spacing, "router_start": args.router_start},
           "runs": runs, "rankings": ranks, "summary": summary, "ttft_by_request": ttft_by_request(runs)}
    if calibrations:
        doc["calibrations"] = calibrations
        doc["summary_by_calibration"] = summary_by_calibration(doc)
    if args.compare is not None:
        doc["repeatability"] = repeatability(doc, json.loads(args.compare.read_text()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    md.write_text(markdown(doc))
    plot(doc, png)
    print(markdown(doc))
    print(f"wrote {args.json}, {md}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
