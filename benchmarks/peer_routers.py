#!/usr/bin/env python3
"""Our cluster against the real peer routers, side by side, through the OpenAI API.

Systems, each in front of two engines on this machine (engine i's compute on core i):
  preble-e2_tiered     `preble serve --nodes 2`, policy e2_tiered, with the DRAM and disk tiers
                       `preble serve` gives each node by default (as a user gets it)
  preble-round_robin   the same cluster, policy round_robin
  smg-cache_aware      SGLang's model gateway (`smg`), cache_aware at its default thresholds,
  smg-round_robin      or round_robin, over two vLLM OpenAI servers
  vllm-router-cache_aware   vLLM's router, likewise (the workers run `--enable-scale-out`, so
  vllm-router-round_robin   its cache_aware can render prompts)

Every engine gets the same tiny model, KV size and max running sequences. The peers' two vLLM
servers are shared by their four configurations and start each run with an empty prefix cache
(`/reset_prefix_cache`); our cluster starts fresh for every run (empty engine caches and
tiers). Peers are installed into scratch venvs under --peer-dir on first use, never into the
project's environment.

One load generator drives every system: open loop at the trace's arrival times, streaming
`/v1/completions` (serving_peers.OpenAIClient), the same prompts and output lengths (ignore_eos).
Workloads (text prompts; the tiny model's tokenizer is byte-level, 1 character = 1 token):
  longdoc    questions (32-64 tokens, 8-24 out) on 16 documents of 2,200-2,800 tokens: ~40k
             tokens of documents against 12k tokens of KV per engine; Poisson 2.5/s
  toolbench  a shared-prefix stream: 8 tool descriptions of 600-1,500 tokens, Zipf-popular
             (s=1.1), each with a 30-80-token query and 16-64 tokens out; Poisson 4/s
  chat       multi-turn chat: 32 users over one 300-token system prompt, each turn adding
             40-120 user tokens and the previous answer to the conversation so far and
             answering 40-200 tokens; Poisson 2.5/s, 80 turns (prompts of 300-1,300 tokens:
             the conversations fit in the engines' KV)
  chat-long  the same with 16 users whose sessions resume with 1,500-3,500 tokens of
             conversation behind them (about twice the two engines' KV together); Poisson
             3/s, 96 turns

    python benchmarks/peer_routers.py [--repeats 3] [--workloads longdoc toolbench chat]
        [--systems ...] [--json benchmarks/results/peer_routers.json]

Reports per (workload, system): TTFT mean/p50/p99, latency mean/p99, output tokens/s and the
cached-token share the system reports (vLLM's `prompt_tokens_details`; ours over all tiers),
as the mean over repeats with the spread (min-max); a markdown table and a PNG beside the JSON.
Targets: e2_tiered >= 1.5x lower mean TTFT and >= 1.3x lower p99 TTFT than the best
peer configuration on longdoc and chat, and never worse than any peer on any workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_peers import (NodeShape, OpenAIClient, PrebleServe, Rec, Req, Smg, VllmRouter,  # noqa: E402
                           VllmServers, ensure_smg, ensure_vllm_router, open_loop, text)

from preble_tiered.cli.argtypes import positive_float  # noqa: E402  (on the path once serving_peers is imported)

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("longdoc", "toolbench", "chat", "chat-long")
SYSTEMS = ("preble-e2_tiered", "preble-round_robin", "smg-cache_aware", "smg-round_robin",
           "vllm-router-cache_aware", "vllm-router-round_robin")
OURS = "preble-e2_tiered"
MEAN_TTFT_TARGET, P99_TTFT_TARGET = 1.5, 1.3
"""Ours at least this many times lower than the best peer's mean / p99 TTFT (long documents, chat)."""
SHAPE = NodeShape(kv_cache_bytes=96 << 20)
"""12k tokens of KV per engine (8 KiB per token for the tiny model)."""


# ---------------------------------------------------------------------------- workloads
def workload(name: str, seed: int, rate_scale: float = 1.0) -> list[Req]:
    """The trace of `name`; `rate_scale` multiplies its arrival rate (the same requests, their
    arrival times stretched by 1/rate_scale)."""
    rng = np.random.default_rng([seed, WORKLOADS.index(name)])
    if name == "longdoc":
        n, rps = 72, 2.5
        docs = [text(f"pr-doc{d}", int(rng.integers(2200, 2801))) for d in range(16)]
        t = np.cumsum(rng.exponential(1 / (rps * rate_scale), size=n))
        return [Req(float(t[i]), docs[int(rng.integers(16))] + text(f"pr-q{seed}-{i}", int(rng.integers(32, 65))),
                    int(rng.integers(8, 25))) for i in range(n)]
    if name == "toolbench":
        n, rps = 100, 4.0
        tools = [text(f"pr-tool{k}", int(rng.integers(600, 1501))) for k in range(8)]
        w = 1.0 / np.arange(1, 9) ** 1.1
        picks = rng.choice(8, size=n, p=w / w.sum())
        t = np.cumsum(rng.exponential(1 / (rps * rate_scale), size=n))
        return [Req(float(t[i]), tools[int(picks[i])] + text(f"pr-tq{seed}-{i}", int(rng.integers(30, 81))),
                    int(rng.integers(16, 65))) for i in range(n)]
    if name in ("chat", "chat-long"):
        n, rps, users = (80, 2.5, 32) if name == "chat" else (96, 3.0, 16)
        system = text("pr-system", 300)
        t = np.cumsum(rng.exponential(1 / (rps * rate_scale), size=n))
        history: dict[int, str] = {}
        if name == "chat-long":  # sessions resumed with 1,500-3,500 tokens of conversation behind them
            history = {u: system + text(f"pr-past{seed}-{u}", int(rng.integers(1200, 3201))) for u in range(users)}
        out = []
        for i in range(n):
            user = int(rng.integers(users))
            h = history.get(user, system) + " user: " + text(f"pr-u{seed}-{i}", int(rng.integers(40, 121)))
            answer = int(rng.integers(40, 201))
            out.append(Req(float(t[i]), h, answer))
            history[user] = h + " assistant: " + text(f"pr-a{seed}-{i}", answer)
            if len(history[user]) > 6000:
                history.pop(user)  # a new conversation
        return out
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


def warmup(seed: int) -> list[Req]:
    """Two short requests that share nothing with any workload (first-request costs)."""
    return [Req(0.0, text(f"pr-warm{seed}-{i}", 64), 4) for i in range(2)]


# ---------------------------------------------------------------------------- one run
async def drive(url: str, reqs: list[Req], seed: int) -> tuple[list[Rec], float]:
    async with OpenAIClient(url) as c:
        for r in warmup(seed):
            await c.send(r)
        return await open_loop(c, reqs)


def summarise(recs: list[Rec], wall: float) -> dict:
    ok = [r for r in recs if not r.error]

    def st(xs):
        a = np.array(xs) * 1e3
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))} \
            if len(a) else None

    reported = [r for r in ok if r.cached_tokens >= 0]
    share = (sum(r.cached_tokens for r in reported) / max(1, sum(r.prompt_tokens for r in reported))
             if reported else None)
    ours = [r.server for r in ok if r.server]
    router = None
    if ours:  # where the time went, by our router's own clock, and where the cached tokens came from
        # (client TTFT - router TTFT, index of the request in the workload, warm-up excluded)
        gaps = [((r.ttft - r.server["ttft_ms"] / 1e3) * 1e3, i) for i, r in enumerate(recs)
                if r.server and not r.error and math.isfinite(r.ttft)]
        worst_ms, worst = max(gaps) if gaps else (float("nan"), -1)
        router = {"ttft_ms": st([o["ttft_ms"] / 1e3 for o in ours]),
                  "client_minus_router_ttft_ms": float(np.mean([g for g, _ in gaps])) if gaps else None,
                  # the one request that lost the most outside the router (the HTTP front, the client)
                  "client_minus_router_ttft_ms_max": {"ms": worst_ms, "request": worst},
                  "cached_tokens": {k: int(sum(o["cached_tokens"][k] for o in ours))
                                    for k in ours[0]["cached_tokens"]},
                  "branches": {b: sum(o["branch"] == b for o in ours) for b in sorted({o["branch"] for o in ours})}}
    return {"router": router, "requests": len(recs), "errors": len(recs) - len(ok),
            "first_error": next((r.error for r in recs if r.error), ""),
            "ttft_ms": st([r.ttft for r in ok if r.ttft == r.ttft]), "latency_ms": st([r.latency for r in ok]),
            "tokens_per_s": sum(r.tokens for r in ok) / wall, "cached_share": share, "wall_s": wall}


def run_ours(policy: str, wl: str, reqs: list[Req], model: str, log_dir: Path, seed: int) -> dict:
    with PrebleServe(2, model, SHAPE, log_dir / f"{wl}-{seed}", policy=policy, tiers=True, http=True) as p:
        recs, wall = asyncio.run(drive(p.url, reqs, seed))
    return summarise(recs, wall)


def run_peer(router_cls, exe: Path, policy: str, servers: VllmServers, reqs: list[Req], log_dir: Path,
             seed: int) -> dict:
    servers.reset_prefix_cache()
    with router_cls(exe, servers.urls, log_dir, policy=policy) as r:
        recs, wall = asyncio.run(drive(r.url, reqs, seed))
    return summarise(recs, wall)


# ---------------------------------------------------------------------------- summary
def aggregate(rows: list[dict]) -> list[dict]:
    out = []
    for wl in WORKLOADS:
        for sysname in SYSTEMS:
            rs = [r for r in rows if r["workload"] == wl and r["system"] == sysname and r["ttft_ms"]]
            if not rs:
                continue
            a = {"workload": wl, "system": sysname, "repeats": len(rs), "errors": sum(r["errors"] for r in rs)}
            for key, (m, q) in {"ttft_mean": ("ttft_ms", "mean"), "ttft_p50": ("ttft_ms", "p50"),
                                "ttft_p99": ("ttft_ms", "p99"), "latency_mean": ("latency_ms", "mean"),
                                "latency_p99": ("latency_ms", "p99")}.items():
                xs = [r[m][q] for r in rs]
                a[key] = {"mean": float(np.mean(xs)), "min": min(xs), "max": max(xs)}
            a["tokens_per_s"] = float(np.mean([r["tokens_per_s"] for r in rs]))
            shares = [r["cached_share"] for r in rs if r["cached_share"] is not None]
            a["cached_share"] = float(np.mean(shares)) if shares else None
            routed = [r["router"] for r in rs if r.get("router")]
            if routed:
                a["router"] = {"ttft_mean_ms": float(np.mean([x["ttft_ms"]["mean"] for x in routed])),
                               "client_minus_router_ttft_ms": float(np.mean([x["client_minus_router_ttft_ms"]
                                                                             for x in routed
                                                                             if x["client_minus_router_ttft_ms"]
                                                                             is not None])),
                               "client_minus_router_ttft_ms_max": max(
                                   ({**r["router"]["client_minus_router_ttft_ms_max"], "repeat": r["repeat"]}
                                    for r in rs if r.get("router") and math.isfinite(
                                        r["router"].get("client_minus_router_ttft_ms_max", {}).get("ms", math.nan))),
                                   key=lambda g: g["ms"], default=None),
                               "cached_tokens_per_repeat": {k: float(np.mean([x["cached_tokens"][k] for x in routed]))
                                                            for k in routed[0]["cached_tokens"]}}
            out.append(a)
    return out


def targets(agg: list[dict]) -> dict:
    res = {}
    for wl in WORKLOADS:
        ours = next((a for a in agg if a["workload"] == wl and a["system"] == OURS), None)
        peers = [a for a in agg if a["workload"] == wl and not a["system"].startswith("preble")]
        if ours is None or not peers:
            continue
        best_mean = min(peers, key=lambda a: a["ttft_mean"]["mean"])
        best_p99 = min(peers, key=lambda a: a["ttft_p99"]["mean"])
        t = {"best_peer_mean_ttft": best_mean["system"],
             "mean_ttft_ratio": best_mean["ttft_mean"]["mean"] / ours["ttft_mean"]["mean"],
             "best_peer_p99_ttft": best_p99["system"],
             "p99_ttft_ratio": best_p99["ttft_p99"]["mean"] / ours["ttft_p99"]["mean"],
             "worse_than": [a["system"] for a in peers
                            if a["ttft_mean"]["mean"] < ours["ttft_mean"]["mean"]
                            or a["latency_mean"]["mean"] < ours["latency_mean"]["mean"]]}
        if wl in ("longdoc", "chat", "chat-long"):
            t["met"] = (t["mean_ttft_ratio"] >= MEAN_TTFT_TARGET and t["p99_ttft_ratio"] >= P99_TTFT_TARGET
                        and not t["worse_than"])
        else:
            t["met"] = not t["worse_than"]
        res[wl] = t
    return res


def _worst(g: dict | None) -> str:
    """The largest client-minus-router gap: ms (repeat, request index in the workload)."""
    return "-" if g is None else f"{g['ms']:.0f} (repeat {g['repeat']}, request {g['request']})"


def markdown(agg: list[dict], tg: dict) -> str:
    def f(x):
        return f"{x['mean']:.0f} ({x['min']:.0f}-{x['max']:.0f})"

    lines = ["| workload | system | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | latency mean ms | latency p99 ms "
             "| tok/s | cached share | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in agg:
        share = "-" if a["cached_share"] is None else f"{a['cached_share']:.2f}"
        lines.append(f"| {a['workload']} | {a['system']} | {f(a['ttft_mean'])} | {f(a['ttft_p50'])} | "
                     f"{f(a['ttft_p99'])} | {f(a['latency_mean'])} | {f(a['latency_p99'])} | "
                     f"{a['tokens_per_s']:.0f} | {share} | {a['errors']} |")
    ours = [a for a in agg if a.get("router")]
    if ours:
        lines += ["", "Ours by the router's own clock (TTFT from admission to the first token; the rest of "
                      "the client's TTFT is the HTTP front, the client and the network):", "",
                  "| workload | system | router TTFT mean ms | client - router ms (mean / max) | cached tokens "
                  "per run (hbm / dram / disk / remote) |", "|---|---|---|---|---|"]
        for a in ours:
            r = a["router"]
            c = r["cached_tokens_per_repeat"]
            lines.append(f"| {a['workload']} | {a['system']} | {r['ttft_mean_ms']:.1f} | "
                         f"{r['client_minus_router_ttft_ms']:.1f} / {_worst(r.get('client_minus_router_ttft_ms_max'))} | "
                         f"{' / '.join(f'{c.get(k, 0):,.0f}' for k in ('hbm', 'dram', 'disk', 'remote'))} |")
    lines += ["", "| workload | best peer (mean TTFT) | mean TTFT ratio | best peer (p99 TTFT) | p99 TTFT ratio "
                  "| peers better on mean TTFT or latency | target met |", "|---|---|---|---|---|---|---|"]
    for wl, t in tg.items():
        lines.append(f"| {wl} | {t['best_peer_mean_ttft']} | {t['mean_ttft_ratio']:.2f}x | {t['best_peer_p99_ttft']} "
                     f"| {t['p99_ttft_ratio']:.2f}x | {', '.join(t['worse_than']) or 'none'} | "
                     f"{'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(agg: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wls = [w for w in WORKLOADS if any(a["workload"] == w for a in agg)]
    fig, axes = plt.subplots(1, len(wls), figsize=(5 * len(wls), 4.5), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        rows = [a for a in agg if a["workload"] == wl]
        x = np.arange(len(rows))
        for off, key, label in ((-0.2, "ttft_mean", "mean TTFT"), (0.2, "ttft_p99", "p99 TTFT")):
            m = np.array([a[key]["mean"] for a in rows])
            err = np.array([[a[key]["mean"] - a[key]["min"] for a in rows], [a[key]["max"] - a[key]["mean"]
                                                                              for a in rows]])
            ax.bar(x + off, m, 0.4, yerr=err, capsize=3, label=label)
        labels = [a["system"].replace("preble-", "preble\n").replace("smg-", "smg\n")
                  .replace("vllm-router-", "vllm-router\n").replace("cache_aware", "cache-aware")
                  .replace("round_robin", "round-robin") for a in rows]
        ax.set_xticks(x, labels, fontsize=7, rotation=35, ha="right")
        ax.set_title(wl)
        ax.set_ylabel("ms")
        ax.set_yscale("log")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of every (workload, system) (default: 3)")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS[:3]))
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ap.add_argument("--seed", type=int, default=0, help="trace seed (the same trace for every system)")
    ap.add_argument("--rate-scale", type=positive_float, default=1.0,
                    help="multiply every workload's arrival rate (default 1: the rates above, set on a machine "
                         "whose 3k-token prefill takes ~0.45 s; a machine N times slower wants about 1/N)")
    ap.add_argument("--model", help="model directory (default: the tiny model)")
    ap.add_argument("--peer-dir", type=Path, default=Path(tempfile.gettempdir()) / "preble-peers",
                    help="where the peers are installed on first use")
    ap.add_argument("--json", type=Path, default=RESULTS / "peer_routers.json")
    ap.add_argument("--replot", action="store_true",
                    help="run nothing: rebuild the summary, table and plot from the runs stored in --json")
    args = ap.parse_args()
    if args.replot:
        stored = json.loads(args.json.read_text())
        report(stored["runs"], args.json, stored["config"])
        return 0
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    log_dir = Path(tempfile.mkdtemp(prefix="peer-routers-"))
    print(f"logs in {log_dir}", flush=True)
    peers = [s for s in args.systems if not s.startswith("preble")]
    exes = {}
    if any(s.startswith("smg") for s in peers):
        exes["smg"] = ensure_smg(args.peer_dir)
    if any(s.startswith("vllm-router") for s in peers):
        exes["vllm-router"] = ensure_vllm_router(args.peer_dir)
    traces = {wl: workload(wl, args.seed, args.rate_scale) for wl in args.workloads}
    rows: list[dict] = []
    t_start = time.monotonic()
    servers = VllmServers(2, model, SHAPE, log_dir, peer_mode=True) if peers else None
    try:
        if servers is not None:
            servers.__enter__()
        for rep in range(args.repeats):
            for wl in args.workloads:
                order = args.systems[rep % len(args.systems):] + args.systems[:rep % len(args.systems)]
                for sysname in order:  # rotated per repeat: no system always runs first
                    if sysname.startswith("preble"):
                        row = run_ours(sysname.split("-", 1)[1], wl, traces[wl], model, log_dir, rep)
                    else:
                        kind = "smg" if sysname.startswith("smg-") else "vllm-router"
                        policy = sysname[len(kind) + 1:]
                        cls = Smg if kind == "smg" else VllmRouter
                        row = run_peer(cls, exes[kind], policy, servers, traces[wl], log_dir, rep)
                    row.update(workload=wl, system=sysname, repeat=rep)
                    rows.append(row)
                    tt = row["ttft_ms"] or {"mean": float("nan"), "p99": float("nan")}
                    print(f"[{time.monotonic() - t_start:6.0f} s] repeat {rep} {wl:9s} {sysname:24s} "
                          f"TTFT mean {tt['mean']:7.1f} p99 {tt['p99']:7.1f} ms  errors {row['errors']}"
                          f"{' ' + row['first_error'][:100] if row['errors'] else ''}", flush=True)
    finally:
        if servers is not None:
            servers.__exit__(None, None, None)
    report(rows, args.json, {"repeats": args.repeats, "seed": args.seed, "shape": SHAPE.__dict__,
                             "cpus": os.cpu_count(), "workloads": args.workloads, "systems": args.systems,
                             "rate_scale": args.rate_scale})
    return 0


def report(rows: list[dict], path: Path, config: dict) -> None:
    """Summary, targets, the markdown table and the plot of `rows`, written beside `path`."""
    agg = aggregate(rows)
    tg = targets(agg)
    md = markdown(agg, tg)
    if config.get("rate_scale", 1.0) != 1.0:
        md += f"\nArrival rates {config['rate_scale']:g}x the workloads' (`--rate-scale`).\n"
    print(md)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "summary": agg, "targets": tg, "runs": rows}, indent=1))
    path.with_suffix(".md").write_text(md)
    plot(agg, path.with_suffix(".png"))
    print(f"wrote {path}, .md and .png")


if __name__ == "__main__":
    sys.exit(main())
