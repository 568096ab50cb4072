#!/usr/bin/env python3
"""What our serving path adds to the engine's time, against the engine alone, a bare vLLM server
and SGLang's model gateway (smg) over vLLM servers: the same requests, the same client, one run.

Systems (each started, driven and stopped in turn; see serving_peers.py):
  engine   a bare vLLM LLMEngine in its own process, stepped in a loop on the thread that
           built it (the limit; 1 node)
  engine-asyncllm  vLLM's AsyncLLM as vLLM's server runs it: the engine core in a process of
           its own, outputs over ZMQ (1 node)
  vllm     vLLM's OpenAI server (1 node)
  smg      smg (cache_aware) over vLLM OpenAI servers (1 or 2 nodes)
  preble   `preble serve` (router + node agents; 1 or 2 nodes), with the DRAM and disk tiers it gives
           each node by default
  preble-notiers  the same with each node's engine cache alone (`--dram-bytes 0`)
  hops     our path cut at each hop on 1 node: the node's gRPC Submit directly, then the
           router with token ids (no tokenization), then the router with text

Workloads (text prompts of printable ASCII: the tiny model's tokenizer is byte-level):
  c1       1 node, concurrency 1: a cached 2,000-token prefix + a 24-token question, 16 tokens out
  decode4  1 node, 4 clients back to back, 64-token prompts, 200 tokens out (also decode16)
  chat     2 nodes, open loop, bursty (gamma, cv 2): multi-turn chat on a shared system prompt
           with answers of 40-250 tokens, mixed with questions on 4 long documents
  longdoc  2 nodes, open loop, Poisson: questions on 6 documents of ~2,500 tokens that fit the
           cluster's KV, 8 tokens out

Reported per (workload, system, run): TTFT, time per output token after the first (TPOT),
latency (mean, p50, p99), output tokens/s, and CPU seconds per request of every process tree
(router, node agents, vLLM servers with their engine cores, smg). `--runs N` repeats all of
it; the summary gives the median and the spread (min-max) over runs, and the ratios the
targets compare. `--profile` also records a py-spy profile (SVG) of the router and of node0
under the chat workload.

    python benchmarks/path_overhead.py [--runs 3] [--workloads c1 decode4 decode16 chat longdoc]
        [--systems engine vllm smg preble hops] [--json benchmarks/results/path_overhead.json]
        [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_peers import (_finish, tree_cpu_s, tree_rss, NodeShape, OpenAIClient, PrebleClient, PrebleServe, Rec, Req, Smg,  # noqa: E402
                           CpuMeter, VllmServers, closed_loop, ensure_smg, open_loop, text)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORKLOADS = ("c1", "decode4", "decode16", "chat", "longdoc")
SYSTEMS = ("engine", "engine-asyncllm", "vllm", "smg", "preble", "preble-notiers", "hops")
NODES = {"c1": 1, "decode4": 1, "decode16": 1, "chat": 2, "longdoc": 2}


# ---------------------------------------------------------------------------- workloads
def workload(name: str, seed: int, scale: float = 1.0) -> tuple[list[Req], int | None]:
    """(requests, concurrency): a concurrency means closed loop, None open loop at `Req.t`."""
    rng = np.random.default_rng(seed)
    if name == "c1":
        prefix = text("c1-prefix", 2000)
        return [Req(0.0, prefix + text(f"c1-q{seed}-{i}", 24), 16) for i in range(int(40 * scale))], 1
    if name.startswith("decode"):
        conc = int(name[len("decode"):])
        return [Req(0.0, text(f"d{seed}-{conc}-{i}", 64), 200) for i in range(conc * max(1, int(4 * scale)))], conc
    if name == "chat":
        n, rps = int(160 * scale), 2.5
        gaps = rng.gamma(1 / 4.0, 4.0 / rps, size=n)  # cv 2: bursts and lulls
        system, docs = text("chat-system", 400), [text(f"chat-doc{d}", 2400) for d in range(4)]
        history: dict[int, str] = {}
        out = []
        for i, t in enumerate(np.cumsum(gaps)):
            if rng.random() < 0.3:
                d = int(rng.integers(4))
                out.append(Req(float(t), docs[d] + text(f"chat-dq{seed}-{i}", int(rng.integers(24, 64))),
                               int(rng.integers(16, 49))))
                continue
            user = int(rng.integers(12))
            h = history.get(user, system) + " user: " + text(f"chat-u{seed}-{i}", int(rng.integers(40, 120)))
            answer = int(rng.integers(40, 251))
            out.append(Req(float(t), h, answer))
            history[user] = h + " assistant: " + text(f"chat-a{seed}-{i}", answer)
            if len(history[user]) > 5000:
                history.pop(user)  # a new conversation
        return out, None
    if name == "longdoc":
        n, rps = int(120 * scale), 3.0
        docs = [text(f"ld-doc{d}", int(rng.integers(2200, 2800))) for d in range(6)]
        t = np.cumsum(rng.exponential(1 / rps, size=n))
        return [Req(float(t[i]), docs[int(rng.integers(6))] + text(f"ld-q{seed}-{i}", int(rng.integers(32, 65))), 8)
                for i in range(n)], None
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")


async def drive(client, reqs: list[Req], conc: int | None) -> tuple[list[Rec], float]:
    return await (closed_loop(client, reqs, conc) if conc else open_loop(client, reqs))


# ---------------------------------------------------------------------------- summaries
def stats(xs: list[float]) -> dict:
    a = np.array([x for x in xs if not math.isnan(x)])
    if not len(a):
        return {"mean": None, "p50": None, "p99": None}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def summarise(recs: list[Rec], wall: float, cpu: dict[str, float]) -> dict:
    ok = [r for r in recs if not r.error]
    n = max(1, len(recs))
    return {"requests": len(recs), "errors": len(recs) - len(ok), "first_error": next((r.error for r in recs if r.error), ""),
            "ttft_s": stats([r.ttft for r in ok]), "tpot_s": stats([r.tpot for r in ok]),
            "latency_s": stats([r.latency for r in ok]), "tokens_per_s": sum(r.tokens for r in ok) / wall,
            "wall_s": wall, "cpu_s_per_request": {k: v / n for k, v in sorted(cpu.items())}}


# ---------------------------------------------------------------------------- the bare engine
def _engine_args(spec: dict, cls):
    shape = NodeShape(**spec["shape"])
    return cls(model=spec["model"], block_size=shape.block_size, kv_cache_memory_bytes=shape.kv_cache_bytes,
               max_model_len=shape.max_model_len, max_num_seqs=shape.max_num_seqs,
               max_num_batched_tokens=shape.max_num_batched_tokens, enable_prefix_caching=True,
               disable_log_stats=True, enforce_eager=True, dtype="float32")


def engine_driver(spec_path: str, out_path: str) -> None:
    """Run in a child process: a bare vLLM engine driven by the workloads, requests added at
    their arrival times (or `concurrency` kept in flight); writes the client-side records.

    mode "inproc": `LLMEngine` in this process, stepped in a loop on the thread that built it.
    mode "asyncllm": `AsyncLLM`, as vLLM's OpenAI server runs it (engine core in its own
    process, outputs over ZMQ to this one), one asyncio task per request.
    """
    import psutil
    from transformers import AutoTokenizer

    spec = json.loads(Path(spec_path).read_text())
    mp = spec["mode"] == "asyncllm"
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="1" if mp else "0", VLLM_CPU_OMP_THREADS_BIND="0",
                      VLLM_HOST_IP="127.0.0.1")
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    tok = AutoTokenizer.from_pretrained(spec["model"])
    me = psutil.Process()

    def tree_rss() -> int:
        return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])

    def params(r: Req):
        return SamplingParams(max_tokens=r.max_tokens, temperature=0.0, ignore_eos=True,
                              output_kind=RequestOutputKind.DELTA, detokenize=True)

    if mp:
        results = asyncio.run(_run_asyncllm(spec, tok, params, tree_rss))
    else:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        t_start = time.perf_counter()
        llm = LLMEngine.from_engine_args(_engine_args(spec, EngineArgs))
        results = {"startup_s": time.perf_counter() - t_start, "rss_bytes": tree_rss()}
        for item in spec["workloads"]:
            reqs = [Req(*r) for r in item["reqs"]]
            cpu0 = tree_cpu_s(os.getpid())
            recs, wall = _drive_inproc(llm, reqs, [tok.encode(r.prompt) for r in reqs], item["concurrency"], params)
            results[item["name"]] = summarise(recs, wall, {"engine": tree_cpu_s(os.getpid()) - cpu0})
    Path(out_path).write_text(json.dumps(results))


async def _run_asyncllm(spec: dict, tok, params, tree_rss) -> dict:
    """AsyncLLM binds its output loop to the running event loop: build and drive it in one."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    t_start = time.perf_counter()
    llm = AsyncLLM.from_engine_args(_engine_args(spec, AsyncEngineArgs))
    results = {"startup_s": time.perf_counter() - t_start, "rss_bytes": tree_rss()}
    try:
        for item in spec["workloads"]:
            reqs = [Req(*r) for r in item["reqs"]]
            cpu0 = tree_cpu_s(os.getpid())
            recs, wall = await _drive_async(llm, reqs, [tok.encode(r.prompt) for r in reqs], item["concurrency"],
                                            params)
            results[item["name"]] = summarise(recs, wall, {"engine": tree_cpu_s(os.getpid()) - cpu0})
    finally:
        llm.shutdown()
    return results


def _drive_inproc(llm, reqs: list[Req], ids, conc: int | None, params) -> tuple[list[Rec], float]:
    recs = [Rec() for _ in reqs]
    sent, first, last, count = [0.0] * len(reqs), [None] * len(reqs), [0.0] * len(reqs), [0] * len(reqs)
    nxt, running, t0 = 0, 0, time.perf_counter()
    while nxt < len(reqs) or running:
        now = time.perf_counter()
        while nxt < len(reqs) and (running < conc if conc else reqs[nxt].t <= now - t0):
            llm.add_request(str(nxt), {"prompt_token_ids": ids[nxt]}, params(reqs[nxt]))
            sent[nxt], nxt, running = time.perf_counter(), nxt + 1, running + 1
        if not llm.has_unfinished_requests():
            time.sleep(max(0.0, min(0.01, reqs[nxt].t - (time.perf_counter() - t0))))
            continue
        for o in llm.step():
            i, now = int(o.request_id), time.perf_counter()
            n = len(o.outputs[0].token_ids)
            if n:
                first[i] = first[i] or now
                last[i], count[i] = now, count[i] + n
            if o.finished:
                running -= 1
                _finish(recs[i], sent[i], first[i], now if not n else last[i], count[i])
    return recs, time.perf_counter() - t0


async def _drive_async(llm, reqs: list[Req], ids, conc: int | None, params) -> tuple[list[Rec], float]:
    class Client:
        async def send(self, r: Req) -> Rec:
            rec, first, last, n = Rec(), None, 0.0, 0
            t0 = time.perf_counter()
            async for out in llm.generate({"prompt_token_ids": ids[index[id(r)]]}, params(r),
                                          request_id=f"{index[id(r)]}-{time.monotonic_ns()}"):
                k = len(out.outputs[0].token_ids)
                if k:
                    last = time.perf_counter()
                    first = first or last
                    n += k
            return _finish(rec, t0, first, last, n)

    index = {id(r): i for i, r in enumerate(reqs)}
    return await drive(Client(), reqs, conc)


def run_engine(mode: str, model: str, shape: NodeShape, items: list[tuple[str, list[Req], int | None]],
               log_dir: Path) -> dict:
    spec = {"model": model, "shape": shape.__dict__, "mode": mode,
            "workloads": [{"name": n, "reqs": [[r.t, r.prompt, r.max_tokens] for r in reqs], "concurrency": c}
                          for n, reqs, c in items]}
    sp, op = log_dir / f"engine-{mode}-spec.json", log_dir / f"engine-{mode}-out.json"
    sp.write_text(json.dumps(spec))
    with (log_dir / "engine.log").open("ab") as log:
        subprocess.run([sys.executable, __file__, "--engine-driver", str(sp), str(op)], check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    return json.loads(op.read_text())


# ---------------------------------------------------------------------------- one run
def warm(reqs: list[Req]) -> list[Req]:
    """A 2-token request on the workload's first prompt, sent before the measured run (the
    c1 prefix is then cached on every system alike)."""
    return [Req(0.0, reqs[0].prompt, 2)]


async def measure(client, pids: dict[str, int], reqs: list[Req], conc: int | None) -> dict:
    await drive(client, warm(reqs), 1)
    meter = CpuMeter(pids)
    meter.start()
    recs, wall = await drive(client, reqs, conc)
    return summarise(recs, wall, meter.stop())


def profile_start(pids: dict[str, int], seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found (pip install py-spy); no profile", flush=True)
        return []
    return [subprocess.Popen([spy, "record", "-p", str(pids[k]), "-d", str(int(seconds)), "-r", "100", "--threads",
                              "-o", str(out_dir / f"path_overhead_{k}.svg")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for k in ("router", "node0") if k in pids]


def one_run(run: int, args, model: str, shape: NodeShape, log_dir: Path, starts: list[dict]) -> list[dict]:
    rows: list[dict] = []
    wl = {name: workload(name, seed=args.seed + run, scale=args.scale) for name in args.workloads}
    by_nodes = {n: [w for w in args.workloads if NODES[w] == n] for n in (1, 2)}

    def add(system: str, name: str, res: dict) -> None:
        res.update(run=run, system=system, workload=name)
        rows.append(res)
        t, p, lat = res["ttft_s"], res["tpot_s"], res["latency_s"]
        fmt = lambda x: "-" if x is None else f"{x * 1e3:.1f}"  # noqa: E731
        print(f"  run {run} {name:8s} {system:14s} ttft {fmt(t['mean'])} ms  tpot {fmt(p['mean'])} ms  "
              f"latency {fmt(lat['mean'])} / p99 {fmt(lat['p99'])} ms  {res['tokens_per_s']:.0f} tok/s  "
              f"errors {res['errors']}  cpu/req {json.dumps({k: round(v * 1e3, 1) for k, v in res['cpu_s_per_request'].items()})} ms",
              flush=True)

    def run_all(system: str, client_factory, pids: dict[str, int], names: list[str]) -> None:
        async def go():
            async with client_factory() as client:
                for name in names:
                    reqs, conc = wl[name]
                    prof = []
                    if args.profile and system == "preble" and name == "chat":
                        prof = profile_start(pids, reqs[-1].t + 5, RESULTS)
                    add(system, name, await measure(client, pids, reqs, conc))
                    for p in prof:
                        p.wait()
        asyncio.run(go())

    def started(system: str, n_nodes: int, seconds: float, pids: dict[str, int]) -> None:
        starts.append({"run": run, "system": system, "nodes": n_nodes, "startup_s": seconds,
                       "rss_bytes": sum(tree_rss(p) for p in pids.values())})

    one_node = by_nodes[1]
    for system, mode in (("engine", "inproc"), ("engine-asyncllm", "asyncllm")):
        if system in args.systems and one_node:
            out = run_engine(mode, model, shape, [(n, *wl[n]) for n in one_node], log_dir)
            for n in one_node:
                add(system, n, out[n])
            starts.append({"run": run, "system": system, "nodes": 1, "startup_s": out["startup_s"],
                           "rss_bytes": out["rss_bytes"]})
    for n_nodes, names in by_nodes.items():
        if not names:
            continue
        if {"vllm", "smg"} & set(args.systems):
            t0 = time.perf_counter()
            with VllmServers(n_nodes, model, shape, log_dir) as v:
                started("vllm", n_nodes, time.perf_counter() - t0, v.pids())
                if "vllm" in args.systems and n_nodes == 1:
                    run_all("vllm", lambda: OpenAIClient(v.urls[0]), v.pids(), names)
                if "smg" in args.systems:
                    with Smg(ensure_smg(args.peer_dir), v.urls, log_dir) as g:
                        run_all("smg", lambda: OpenAIClient(g.url), {**g.pids(), **v.pids()},
                                [w for w in names if w in ("c1", "chat", "longdoc")])
        if {"preble", "hops"} & set(args.systems):
            t0 = time.perf_counter()
            with PrebleServe(n_nodes, model, shape, log_dir) as p:
                started("preble", n_nodes, time.perf_counter() - t0, p.pids())
                if "hops" in args.systems and n_nodes == 1 and "c1" in names:
                    hops(p, wl["c1"], add)
                if "preble" in args.systems:
                    run_all("preble", lambda: PrebleClient(p.addr), p.pids(), names)
        if "preble-notiers" in args.systems:  # the same, each node with its engine's cache alone
            t0 = time.perf_counter()
            with PrebleServe(n_nodes, model, shape, log_dir, tiers=False) as p:
                started("preble-notiers", n_nodes, time.perf_counter() - t0, p.pids())
                run_all("preble-notiers", lambda: PrebleClient(p.addr), p.pids(), names)
    return rows


def hops(p: PrebleServe, c1: tuple[list[Req], int | None], add) -> None:
    """c1 through our path cut at each hop: the node directly, then the router with ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(p.cluster.model)
    reqs, conc = c1

    async def go():
        async with NodeDirect(p.node_addresses()[0], tok) as c:
            add("hops:node", "c1", await measure(c, p.pids(), reqs, conc))
        async with PrebleClient(p.addr, token_ids=lambda s: tok.encode(s)) as c:
            add("hops:router-ids", "c1", await measure(c, p.pids(), reqs, conc))
    asyncio.run(go())


class NodeDirect:
    """Node.Submit called directly (what the router sends), token ids from the tokenizer."""

    def __init__(self, addr: str, tok) -> None:
        self.addr, self.tok, self.n = addr, tok, 0

    async def __aenter__(self):
        import grpc

        from preble_tiered.api.pb import node_pb2_grpc

        self._ch = grpc.aio.insecure_channel(self.addr)
        self._stub = node_pb2_grpc.NodeStub(self._ch)
        return self

    async def __aexit__(self, *exc):
        await self._ch.close()

    async def send(self, r: Req) -> Rec:
        from preble_tiered.api import convert
        from preble_tiered.api.pb import node_pb2
        from preble_tiered.types import GenParams

        self.n += 1
        req = node_pb2.SubmitRequest(request_id=f"hop-{os.getpid()}-{self.n}", prompt_token_ids=self.tok.encode(r.prompt),
                                     sampling=convert.params_to_pb(GenParams(max_tokens=r.max_tokens, temperature=0.0,
                                                                              ignore_eos=True)))
        rec, first, last, tokens = Rec(), None, 0.0, 0
        t0 = time.perf_counter()
        async for m in self._stub.Submit(req):
            last = time.perf_counter()
            if m.WhichOneof("kind") == "chunk":
                first = first or last
            else:
                tokens = m.done.completion_tokens
        return _finish(rec, t0, first, last, tokens)


# ---------------------------------------------------------------------------- report
def aggregate(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["workload"], r["system"]) for r in rows}, key=lambda k: (WORKLOADS.index(k[0]), k[1]))
    for w, s in keys:
        rs = [r for r in rows if r["workload"] == w and r["system"] == s]
        agg = {"workload": w, "system": s, "runs": len(rs), "errors": sum(r["errors"] for r in rs)}
        for metric, field in (("ttft_mean_ms", ("ttft_s", "mean")), ("tpot_mean_ms", ("tpot_s", "mean")),
                              ("latency_mean_ms", ("latency_s", "mean")), ("latency_p99_ms", ("latency_s", "p99"))):
            xs = [r[field[0]][field[1]] for r in rs if r[field[0]][field[1]] is not None]
            agg[metric] = {"median": float(np.median(xs)) * 1e3, "min": min(xs) * 1e3, "max": max(xs) * 1e3} if xs else None
        tps = [r["tokens_per_s"] for r in rs]
        agg["tokens_per_s"] = {"median": float(np.median(tps)), "min": min(tps), "max": max(tps)}
        cpu: dict[str, list[float]] = {}
        for r in rs:
            for k, v in r["cpu_s_per_request"].items():
                cpu.setdefault(k, []).append(v * 1e3)
        agg["cpu_ms_per_request"] = {k: float(np.median(v)) for k, v in cpu.items()}
        out.append(agg)
    return out


def markdown(agg: list[dict]) -> str:
    def f(x, key="median"):
        return "-" if x is None else (f"{x[key]:.1f}" if key == "median" else f"{x['min']:.1f}-{x['max']:.1f}")

    lines = ["| workload | system | TTFT ms | TPOT ms (spread) | latency ms | p99 ms | tok/s | CPU ms/request |",
             "|---|---|---|---|---|---|---|---|"]
    for a in agg:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in a["cpu_ms_per_request"].items())
        lines.append(f"| {a['workload']} | {a['system']} | {f(a['ttft_mean_ms'])} | {f(a['tpot_mean_ms'])} "
                     f"({f(a['tpot_mean_ms'], 'spread')}) | {f(a['latency_mean_ms'])} | {f(a['latency_p99_ms'])} | "
                     f"{a['tokens_per_s']['median']:.0f} | {cpu} |")
    return "\n".join(lines) + "\n"


def startup_table(starts: list[dict]) -> str:
    lines = ["", "| system | nodes | start-up s (median) | RSS MiB after start (median) |", "|---|---|---|---|"]
    for key in sorted({(s["system"], s["nodes"]) for s in starts}):
        ss = [s for s in starts if (s["system"], s["nodes"]) == key]
        lines.append(f"| {key[0]} | {key[1]} | {np.median([s['startup_s'] for s in ss]):.1f} | "
                     f"{np.median([s['rss_bytes'] for s in ss]) / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--engine-driver":
        engine_driver(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every workload's request count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="model directory (default: the tiny model)")
    ap.add_argument("--peer-dir", type=Path, default=Path(tempfile.gettempdir()) / "preble-peers",
                    help="where peers (smg) are installed on first use")
    ap.add_argument("--profile", action="store_true", help="py-spy SVGs of the router and node0 under chat")
    ap.add_argument("--json", type=Path, default=RESULTS / "path_overhead.json")
    args = ap.parse_args()
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    shape = NodeShape()
    log_dir = Path(tempfile.mkdtemp(prefix="path-overhead-"))
    print(f"logs in {log_dir}", flush=True)
    rows: list[dict] = []
    starts: list[dict] = []
    for run in range(args.runs):
        rows += one_run(run, args, model, shape, log_dir, starts)
    agg = aggregate(rows)
    md = markdown(agg) + startup_table(starts)
    print(md)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": {"runs": args.runs, "scale": args.scale, "seed": args.seed,
                                                "shape": shape.__dict__, "cpus": os.cpu_count()},
                                     "summary": agg, "startup": starts, "runs": rows}, indent=1))
    args.json.with_suffix(".md").write_text(md)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
