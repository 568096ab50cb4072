"""The serving commands of `preble`: serve, router, node, generate, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys

from preble_tiered.cli.argtypes import at_least, fixed_port, port
from preble_tiered.cli.paths import check_output
from preble_tiered.cli.tier_defaults import byte_size
from preble_tiered.scheduler.registry import policy_names

DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8000
TINY_PROFILE = "cpu-tiny"
"""The shipped profile `preble serve` starts its router on when it serves the tiny model."""


def add_parsers(sub, positive_int, positive_float, add_workload_args) -> None:
    sv = sub.add_parser("serve", help="start a router and N node agents on loopback (the embedded default)",
                        description="Start a router and --nodes node agents (one vLLM engine each, pinned to "
                                    "one core each) on loopback. Without --model, builds a tiny random-weight "
                                    "model once under ~/.cache/preble_tiered. Ctrl-C stops everything.")
    sv.add_argument("--nodes", type=positive_int, default=2, help="node agents to start (default: 2)")
    sv.add_argument("--model", metavar="PATH", help="local model directory (default: the tiny model)")
    sv.add_argument("--port", type=fixed_port, default=DEFAULT_PORT, help=f"router port (default: {DEFAULT_PORT})")
    sv.add_argument("--http-port", type=port, default=DEFAULT_HTTP_PORT,
                    help=f"router port of the OpenAI HTTP API (default: {DEFAULT_HTTP_PORT}; 0: off)")
    sv.add_argument("--policy", default="e2_tiered", choices=policy_names(), help="routing policy (default: e2_tiered)")
    sv.add_argument("--kv-cache-bytes", type=positive_int, default=256 << 20,
                    help="KV cache per node in bytes (default: 256 MiB)")
    sv.add_argument("--block-size", type=positive_int, default=32, help="tokens per KV block (default: 32)")
    sv.add_argument("--max-model-len", type=positive_int, default=None,
                    help="longest prompt + output in tokens (default: the model's)")
    sv.add_argument("--log-dir", metavar="DIR", help="where the processes' logs go (default: under the cache dir)")
    sv.add_argument("--dram-bytes", type=byte_size, default=None, metavar="SIZE",
                    help="each node's host-memory KV tier, e.g. 2G (default: 20%% of available memory over the "
                         "nodes, at most 4G; 0: off, and then pins to DRAM are refused)")
    sv.add_argument("--disk-bytes", type=byte_size, default=None, metavar="SIZE",
                    help="each node's disk KV tier, e.g. 16G (default: 10%% of the free disk over the nodes, "
                         "at most 16G; 0: off)")
    sv.add_argument("--disk-dir", metavar="DIR", default=None,
                    help="where the nodes' disk tiers live, node i in DIR/node<i>; a tier left there by an "
                         "earlier run is reused (default: kv/port-<port> under the cache dir)")
    sv.add_argument("--profile", metavar="NAME|PATH|none", default=None,
                    help="the router's starting costs, as `preble router --profile` (default: the shipped cpu-tiny "
                         "profile for the tiny model, none for a --model; none: a guess until the nodes' "
                         "measurements refit it)")
    _add_transfer_args(sv)
    _add_security_args(sv)

    rt = sub.add_parser("router", help="run the router (global scheduler + client API)",
                        description="Serve preble.v1.Inference/Admin/Registry; nodes register with it.")
    rt.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    rt.add_argument("--port", type=port, default=DEFAULT_PORT,
                    help=f"gRPC port of the Inference, Admin and Registry APIs (default: {DEFAULT_PORT}; 0: any "
                         "free port, printed at start)")
    rt.add_argument("--http-port", type=port, default=DEFAULT_HTTP_PORT,
                    help=f"port of the OpenAI HTTP API, /v1/completions and /v1/chat/completions "
                         f"(default: {DEFAULT_HTTP_PORT}; 0: off)")
    rt.add_argument("--served-model-name", default=None, metavar="NAME",
                    help="the model's name in the OpenAI API (default: the model directory's name)")
    rt.add_argument("--policy", default="e2_tiered", choices=policy_names(), help="routing policy (default: e2_tiered)")
    rt.add_argument("--block-size", type=positive_int, default=32,
                    help="tokens per KV block; every node must use the same (default: 32)")
    rt.add_argument("--tokenizer", metavar="PATH", help="tokenizer directory (default: the first node's model)")
    rt.add_argument("--max-nodes", type=positive_int, default=64, help="nodes that may register (default: 64)")
    rt.add_argument("--max-outstanding", type=positive_int, default=1024,
                    help="requests in flight before RESOURCE_EXHAUSTED (default: 1024)")
    rt.add_argument("--metrics-port", type=port, default=0, help="Prometheus /metrics port (default: 0, off)")
    rt.add_argument("--profile", metavar="NAME|PATH|none", default=None,
                    help="route on this cluster profile's measured costs from the first request (a shipped name "
                         "such as cpu-tiny, or a file `preble calibrate` or `preble admin profile` wrote); the "
                         "router still refits them from its nodes' measurements (default, or none: a guess until "
                         "then)")
    _add_security_args(rt)

    nd = sub.add_parser("node", help="run a node agent (one vLLM engine)",
                        description="Serve preble.v1.Node with an in-process vLLM engine and register with "
                                    "the router.")
    nd.add_argument("--model", required=True, metavar="PATH", help="local model directory")
    nd.add_argument("--router", metavar="ADDR", help="router host:port to register with")
    nd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    nd.add_argument("--port", type=port, default=0, help="Node service port (default: 0, any free port)")
    nd.add_argument("--name", default=None,
                    help="node name, unique in the cluster (default: node-<port>, or node-<process id> with --port 0)")
    nd.add_argument("--block-size", type=positive_int, default=32, help="tokens per KV block, multiple of 32 on CPU")
    nd.add_argument("--kv-cache-bytes", type=positive_int, default=256 << 20,
                    help="the engine's KV cache in bytes (default: 256 MiB)")
    nd.add_argument("--max-model-len", type=positive_int, default=None,
                    help="longest prompt + output in tokens (default: the model's); the KV cache must hold one")
    nd.add_argument("--max-num-seqs", type=positive_int, default=16,
                    help="most requests the engine runs at once (default: 16)")
    nd.add_argument("--max-queue", type=positive_int, default=256,
                    help="requests waiting before RESOURCE_EXHAUSTED (default: 256)")
    nd.add_argument("--cpu-core", type=at_least(0), default=None,
                    help="pin the engine's compute to this core, one thread (default: no pinning)")
    nd.add_argument("--gpu-memory-utilization", type=float, metavar="SHARE", default=None,
                    help="GPU nodes: share of the GPU's memory the engine may take, lower when nodes share a GPU "
                         "(default: $PREBLE_GPU_MEMORY_UTILIZATION, else vLLM's 0.9)")
    nd.add_argument("--dram-bytes", type=byte_size, default=None, metavar="SIZE",
                    help="host-memory KV tier under the engine's cache, e.g. 2G (default: none; 0: none)")
    nd.add_argument("--disk-path", metavar="DIR", help="RocksDB directory of the disk KV tier (default: none)")
    nd.add_argument("--disk-bytes", type=byte_size, default=None, metavar="SIZE",
                    help="disk KV tier budget, e.g. 16G (default: 4G when --disk-path is given)")
    nd.add_argument("--disk-mmap-reads", action="store_true",
                    help="map the disk tier's files for reads: faster loads, but a truncated file or a "
                         "disk read error kills the node (SIGBUS) instead of costing a miss")
    nd.add_argument("--write-policy", choices=["write_back", "write_through"], default="write_back",
                    help="write_back: DRAM, demoted to disk on DRAM eviction; write_through: DRAM and disk "
                         "(default: write_back)")
    nd.add_argument("--metrics-port", type=port, default=0, help="Prometheus /metrics port (default: 0, off)")
    _add_transfer_args(nd)

    gn = sub.add_parser("generate", help="send one prompt to a cluster",
                        description="Stream a completion from the router; --json prints the final usage message.")
    gn.add_argument("text", help="prompt text")
    gn.add_argument("--addr", default=f"127.0.0.1:{DEFAULT_PORT}",
                    help=f"router address (default: 127.0.0.1:{DEFAULT_PORT})")
    gn.add_argument("--max-tokens", type=positive_int, default=32, help="tokens to generate at most (default: 32)")
    gn.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default: 0)")
    gn.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1] (default: 1)")
    gn.add_argument("--seed", type=at_least(0), default=None, help="sampling seed, 0 or more (default: none)")
    gn.add_argument("--request-id", default="", help="id of the request (default: the router picks one)")
    gn.add_argument("--json", action="store_true", help="print the usage message as JSON, not the text")
    gn.add_argument("--timeout", type=positive_float, default=300.0, help="seconds (default: 300)")
    gn.add_argument("--inference-token-file", metavar="FILE",
                    help="file with the Inference API token (default: $PREBLE_INFERENCE_TOKEN)")
    gn.add_argument("--tls-ca", metavar="PEM", help="CA (or server) certificate: connect with TLS")

    bn = sub.add_parser("bench", help="drive a running cluster with a workload or trace",
                        description="Open-loop load over the gRPC API, or over the OpenAI API of any server with "
                                    "--openai; prints TTFT/latency/TPOT/throughput and cached tokens by tier; "
                                    "--json writes the same shape as `preble sim`.")
    add_workload_args(bn, trace=True)
    bn.add_argument("--addr", default=f"127.0.0.1:{DEFAULT_PORT}",
                    help=f"router address (default: 127.0.0.1:{DEFAULT_PORT})")
    bn.add_argument("--openai", metavar="URL", default=None,
                    help="drive this OpenAI API instead (base URL, e.g. http://127.0.0.1:8000/v1; ours, vLLM's or "
                         "a router's); the key is $PREBLE_INFERENCE_TOKEN, else $OPENAI_API_KEY")
    bn.add_argument("--vocab-size", type=positive_int, default=None,
                    help="with --openai: the model's vocabulary for the prompt token ids (default: the server's "
                         "report; ours gives it, others may not)")
    bn.add_argument("--max-output-tokens", type=positive_int, default=None, help="cap each request's output")
    bn.add_argument("--inference-token-file", metavar="FILE",
                    help="file with the Inference API token (default: $PREBLE_INFERENCE_TOKEN; with --openai, "
                         "else $OPENAI_API_KEY)")
    bn.add_argument("--admin-token-file", metavar="FILE",
                    help="file with the Admin API token, to report the router's policy and branches (default: "
                         "$PREBLE_ADMIN_TOKEN; without it they are left out where the router wants one)")
    bn.add_argument("--tls-ca", metavar="PEM", help="CA (or server) certificate: connect to the router with TLS")
    bn.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    bn.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_transfer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transfer", choices=["mooncake", "grpc"], default="mooncake",
                   help="data path of KV pulls between nodes: the Mooncake Transfer Engine (falls back to the "
                        "gRPC stream, with a warning, where it cannot load) or always the gRPC stream "
                        "(default: mooncake). Mooncake does not authenticate: keep nodes on a cluster network")
    p.add_argument("--transfer-protocol", choices=["tcp", "rdma"], default="tcp",
                   help="Mooncake's transport (default: tcp; rdma where the nodes have RDMA NICs)")


def _add_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", metavar="FILE", default=None,
                   help="JSON file of named prefixes and pins, kept across restarts "
                        "(default: router-<port>-state.json under the cache dir)")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="file with the Admin API bearer token (default: $PREBLE_ADMIN_TOKEN; none: Admin is open)")
    p.add_argument("--inference-token-file", metavar="FILE",
                   help="file with the Inference API bearer token (default: $PREBLE_INFERENCE_TOKEN; none: open)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")


def _security_config(args: argparse.Namespace) -> dict:
    """RouterConfig fields from the security flags (tokens read now: a bad file fails fast)."""
    from preble_tiered.api.auth import ADMIN_TOKEN_ENV, INFERENCE_TOKEN_ENV, load_token
    from preble_tiered.cli.launcher import cache_dir

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    state = args.state or str(cache_dir() / f"router-{args.port}-state.json")
    return dict(state_path=state, admin_token=load_token(ADMIN_TOKEN_ENV, args.admin_token_file),
                inference_token=load_token(INFERENCE_TOKEN_ENV, args.inference_token_file),
                tls_cert=args.tls_cert, tls_key=args.tls_key)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_router(args: argparse.Namespace) -> int:
    from preble_tiered.gc_tuning import tune_gc_for_serving
    from preble_tiered.router.config import RouterConfig
    from preble_tiered.router.service import serve_router

    _logging()
    profile = None
    if _profile_wanted(args.profile):
        from preble_tiered.sim import profile_files

        profile = profile_files.load(args.profile)  # a clear ProfileError (ValueError) when it cannot be read
    cfg = RouterConfig(host=args.host, port=args.port, policy=args.policy, block_size=args.block_size,
                       tokenizer=args.tokenizer, max_nodes=args.max_nodes, max_outstanding=args.max_outstanding,
                       metrics_port=args.metrics_port, http_port=args.http_port or None,
                       served_model_name=args.served_model_name, profile=profile, **_security_config(args))
    if profile is not None:
        logging.getLogger(__name__).info("starting costs: profile %s (%s, %s); refitted from the nodes' "
                                         "measurements as they arrive", args.profile, profile.model, profile.source
                                         or "no source recorded")
    tune_gc_for_serving()  # the decision path allocates per request: see gc_tuning.py
    asyncio.run(serve_router(cfg))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from preble_tiered.node.agent import NodeConfig, serve_node

    _logging()
    from preble_tiered.engine.vllm_engine import EngineConfig

    if not os.path.isdir(args.model):
        raise ValueError(f"--model {args.model}: no such directory; give a local model directory (nothing is "
                         "downloaded)")
    kv = None
    disk_path = args.disk_path if args.disk_bytes != 0 else None
    if disk_path and args.dram_bytes == 0:
        raise ValueError("a disk tier needs a DRAM tier above it (blocks reach disk through DRAM): "
                         "give --dram-bytes > 0, or drop --disk-path")
    if args.dram_bytes or disk_path:
        from preble_tiered.kvstore.config import KVStoreConfig

        kv = KVStoreConfig(dram_bytes=args.dram_bytes or (256 << 20), disk_path=disk_path,
                           disk_bytes=(args.disk_bytes or (4 << 30)) if disk_path else 0,
                           write_policy=args.write_policy, disk_mmap_reads=args.disk_mmap_reads)
    ecfg = EngineConfig(model=args.model, block_size=args.block_size, kv_cache_bytes=args.kv_cache_bytes,
                        max_num_seqs=args.max_num_seqs, cpu_core=args.cpu_core,
                        gpu_memory_utilization=_gpu_share(args.gpu_memory_utilization),
                        max_model_len=args.max_model_len)
    from preble_tiered.transfer.bulk import BulkConfig

    ncfg = NodeConfig(name=args.name or f"node-{args.port or os.getpid()}", host=args.host, port=args.port,
                      router=args.router, max_queue=args.max_queue, metrics_port=args.metrics_port,
                      bulk=BulkConfig(args.transfer, args.transfer_protocol))
    try:
        asyncio.run(serve_node(ncfg, ecfg, kv))
    except ValueError as e:
        if "KV cache" not in str(e):
            raise
        # vLLM's advice names its own knobs (gpu_memory_utilization); a node's are these
        raise ValueError(f"{e}\n  on this node: raise --kv-cache-bytes (now {args.kv_cache_bytes}) or lower "
                         "--max-model-len (preble serve passes both on)") from None
    return 0


def _gpu_share(flag: float | None) -> float | None:
    if flag is not None:
        return flag
    env = os.environ.get("PREBLE_GPU_MEMORY_UTILIZATION")
    try:
        return float(env) if env else None
    except ValueError:
        raise ValueError(f"PREBLE_GPU_MEMORY_UTILIZATION={env!r} is not a number; give a share such as 0.4") from None


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from pathlib import Path

    from preble_tiered.cli.launcher import ClusterSpec, LocalCluster, cache_dir
    from preble_tiered.cli.tier_defaults import plan_tiers

    sec = _security_config(args)  # fail here, not in the router child, on a bad token file or TLS pair
    router_args: list[str] = []
    for flag in ("admin_token_file", "inference_token_file", "tls_cert", "tls_key"):
        value = getattr(args, flag)
        if value:
            router_args += ["--" + flag.replace("_", "-"), str(value)]
    tiers = plan_tiers(args.nodes, args.dram_bytes, args.disk_bytes,
                       Path(args.disk_dir) if args.disk_dir else cache_dir() / "kv" / f"port-{args.port}")
    spec = ClusterSpec(nodes=args.nodes, model=args.model, port=args.port, policy=args.policy,
                       kv_cache_bytes=args.kv_cache_bytes, block_size=args.block_size, log_dir=args.log_dir,
                       max_model_len=args.max_model_len, dram_bytes=tiers.dram_bytes or None,
                       disk_dir=str(tiers.disk_dir) if tiers.disk_dir else None, disk_bytes=tiers.disk_bytes or None,
                       transfer=args.transfer, transfer_protocol=args.transfer_protocol, state_path=args.state,
                       router_args=tuple(router_args), inference_token=sec["inference_token"], tls_ca=args.tls_cert,
                       http_port=args.http_port, profile=_serve_profile(args))
    cluster = LocalCluster(spec)
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops as cleanly as Ctrl-C
    try:
        print(tiers.describe(), flush=True)
        cluster.start(progress=lambda m: print(m, flush=True))
        print(_serving_banner(cluster, args, sec["inference_token"] is not None), flush=True)
        while True:
            for name, p in cluster.processes():
                if p.poll() is not None:
                    print(f"{name} exited with code {p.returncode}; see {cluster.log_dir / (name + '.log')}; "
                          "stopping", file=sys.stderr, flush=True)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        # A second Ctrl-C must not cut the stop short (the DRAM tiers are being flushed to
        # disk); stop() itself escalates to SIGKILL after its grace period.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop()
            print("stopped: router and nodes exited", flush=True)
        finally:  # as they were: a caller in the same process (and its children) keep their Ctrl-C
            signal.signal(signal.SIGINT, saved[0])
            signal.signal(signal.SIGTERM, saved[1])


def _profile_wanted(value: str | None) -> bool:
    """A `--profile` value that names a profile (not absent, empty or "none")."""
    return bool(value) and value.lower() != "none"


def _serve_profile(args: argparse.Namespace) -> str | None:
    """The router's `--profile` under `preble serve`: the flag's, else `cpu-tiny` for the tiny
    model (measured on this kind of machine), none for another model. Read here, so a bad
    name or file fails before anything starts."""
    want = args.profile if args.profile is not None else (None if args.model else TINY_PROFILE)
    if not _profile_wanted(want):
        return None
    from preble_tiered.sim import profile_files

    profile_files.load(want)
    return want


def _serving_banner(cluster, args: argparse.Namespace, token: bool) -> str:
    lines = [f"\npreble is serving: {args.nodes} node(s), policy {args.policy}, model {cluster.model}",
             f"  gRPC    {cluster.addr}"]
    if cluster.http_url:
        lines.append(f"  OpenAI  {cluster.http_url}")
    # what a fresh shell needs to be let in: the token file the cluster was given (or the variable
    # it was read from, which `generate` reads too) and the certificate to trust
    token_file = os.path.abspath(args.inference_token_file) if getattr(args, "inference_token_file", None) else None
    cert = os.path.abspath(args.tls_cert) if args.tls_cert else None
    opts = (f" --inference-token-file {shlex.quote(token_file)}" if token and token_file else "") \
        + (f" --tls-ca {shlex.quote(cert)}" if cert else "")
    lines += ["try:", f"  {_preble_command()} generate --addr {cluster.addr}{opts} "
                      f"{shlex.quote('Summarise the plot of Hamlet.')}"]
    if cluster.http_url:
        body = json.dumps({"model": os.path.basename(str(cluster.model).rstrip("/")),
                           "prompt": "Summarise the plot of Hamlet.", "max_tokens": 32})
        secret = f"$(cat {shlex.quote(token_file)})" if token_file else "$PREBLE_INFERENCE_TOKEN"
        auth = f" -H \"Authorization: Bearer {secret}\"" if token else ""
        tls = " --cacert " + shlex.quote(cert) if cert else ""
        lines.append(f"  curl -s{tls} {cluster.http_url}/completions -H 'Content-Type: application/json'{auth} "
                     f"-d {shlex.quote(body)}")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def _preble_command() -> str:
    """How to run `preble` from any shell: the console script beside this interpreter (a
    virtual environment's bin/ is not on a fresh shell's PATH), else `python -m`."""
    import os

    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "preble")
    if os.access(script, os.X_OK):
        return shlex.quote(script)
    return f"{shlex.quote(sys.executable)} -m preble_tiered.cli"


def cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from preble_tiered.client import Client, build_request, usage_dict
    from preble_tiered.types import GenParams

    from preble_tiered.api.auth import INFERENCE_TOKEN_ENV, load_token

    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    req = build_request(args.text, params, args.request_id)
    token = load_token(INFERENCE_TOKEN_ENV, args.inference_token_file)
    try:
        with Client(args.addr, args.timeout, token=token, tls_ca=args.tls_ca) as c:
            if args.json:
                print(json.dumps(usage_dict(c.generate(req)), indent=2))
                return 0
            for msg in c.stream(req):
                if msg.WhichOneof("kind") == "chunk":
                    print(msg.chunk.text, end="", flush=True)
                else:
                    u = msg.complete.usage
                    print(f"\n[node {u.node}, {u.prompt_tokens} prompt tokens, "
                          f"{u.prompt_tokens - u.recomputed_tokens} cached, ttft {u.ttft_ms:.0f} ms, "
                          f"latency {u.latency_ms:.0f} ms]", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"preble generate: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace, load_requests) -> int:
    import grpc

    from preble_tiered.api.auth import ADMIN_TOKEN_ENV, INFERENCE_TOKEN_ENV, load_token, read_token_file
    from preble_tiered.cli.bench import BenchConfig, run_bench
    from preble_tiered.client import Client
    from preble_tiered.sim.report import format_table, write_json

    if args.json:
        check_output(args.json, "--json", make_parents=True)
    token = admin_token = None
    if args.openai:  # another server's key, as it is (its own length rules); our Admin API is not asked
        if args.inference_token_file:
            token = read_token_file(args.inference_token_file) or None
    else:
        token = load_token(INFERENCE_TOKEN_ENV, args.inference_token_file)
        admin_token = load_token(ADMIN_TOKEN_ENV, args.admin_token_file)
    given_nodes = args.nodes
    if args.nodes is None:
        if args.openai:
            args.nodes = 1  # scales a built-in workload; a trace is replayed as it is
        else:
            try:
                with Client(args.addr, token=token, tls_ca=args.tls_ca) as c:
                    args.nodes = max(1, c.model_info().nodes_alive)
            except grpc.RpcError as e:
                raise RuntimeError(f"cannot use the cluster at {args.addr}: {e.code().name}: {e.details()}") from None
    reqs, wname = load_requests(args)
    cfg = BenchConfig(addr=args.addr, max_output_tokens=args.max_output_tokens, progress=not args.quiet,
                      openai_url=args.openai, vocab_size=args.vocab_size, nodes=given_nodes, token=token,
                      admin_token=admin_token, tls_ca=args.tls_ca)
    out = asyncio.run(run_bench(reqs, cfg, wname))
    s = out.summary
    print(format_table([s]))
    print(f"cached-token share {s['cached_token_share']:.3f}; failed {s['failed']}")
    for f in out.failures[:10]:
        print(f"  failed: {f}", file=sys.stderr)
    if args.json:
        write_json(args.json, [s], "preble " + shlex.join(args.argv))
        print(f"wrote {args.json}")
    return 1 if out.failures else 0
