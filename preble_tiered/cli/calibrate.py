"""`preble calibrate`: drive a short sweep through a running cluster's API and write the
cluster profile its nodes measured (`preble sim --profile`).

The sweep, after the router's measurements are reset (Admin GetProfile reset):
  1. prefills, one request at a time so each is measured alone: every prompt size on top of
     every cached context (a context's first request computes it; the rest reuse it);
  2. decodes: every batch size (sequences per node: the cluster gets that many times its
     nodes, at once) on short and long prompts, so decode steps are measured across batch
     sizes and batch contexts.
Then the router fits the profile (Admin GetProfile) and this writes it. Where nodes share a
host (their addresses), a first phase, before the reset, measures how much slower a prefill
runs while another node of the host works: prefills one at a time with the cluster idle, then
the same sizes while a decode stream runs, kept where the prefill met nothing else in its own
engine and ran on another node of the stream's host; the median of their engine times
beside over alone, less 1, is `host_prefill_slowdown`.
Prompts are fresh token ids (never cached by an earlier run), greedy, `ignore_eos`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from preble_tiered.cli.paths import check_output
from preble_tiered.scheduler.profile_fit import (MIN_DECODE_BATCHES, MIN_PREFILL_SAMPLES, MIN_PREFILL_SIZES,
                                                  PREFILL_BUCKET)


@dataclass(frozen=True)
class Sweep:
    prompt_sizes: tuple[int, ...] = (64, 256, 512, 1024, 2048, 4096)
    cached_contexts: tuple[int, ...] = (0, 1024, 3072)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    decode_prompts: tuple[int, ...] = (64, 1024)
    decode_tokens: int = 48
    repeats: int = 3

    def prefills(self, max_model_len: int | None = None) -> list[tuple[int, int]]:
        """(cached context, new tokens) of each prefill, in order; those longer than the
        model (a context, the new tokens and 2 out) are left out."""
        return [(c, p) for c in self.cached_contexts for p in self.prompt_sizes
                if max_model_len is None or c + p + 2 <= max_model_len]

    def decode_prompts_for(self, max_model_len: int | None = None) -> list[int]:
        return [p for p in self.decode_prompts if max_model_len is None or p + self.decode_tokens <= max_model_len]

    def check(self, max_model_len: int | None = None) -> None:
        """Raises ValueError when the sweep cannot support a fit (saying what to add), also
        once what does not fit the model is left out."""
        prefills = self.prefills(max_model_len)
        sizes = sorted({p // PREFILL_BUCKET for _, p in prefills})
        if len(sizes) < MIN_PREFILL_SIZES:
            raise ValueError(f"the sweep is too narrow to fit prefill times: --prompt-sizes needs {MIN_PREFILL_SIZES} "
                             f"or more sizes at least {PREFILL_BUCKET} tokens apart (got "
                             f"{' '.join(map(str, self.prompt_sizes))}); add sizes, e.g. 64 512 2048")
        if len(prefills) * self.repeats < MIN_PREFILL_SAMPLES:
            raise ValueError(f"the sweep is too small to fit prefill times: it sends {len(prefills) * self.repeats} "
                             f"prefills and a fit needs {MIN_PREFILL_SAMPLES}; raise --repeats or add "
                             "--prompt-sizes or --cached-contexts")
        if len(set(self.batch_sizes)) < MIN_DECODE_BATCHES:
            raise ValueError(f"the sweep is too narrow to fit decode steps: --batch-sizes needs {MIN_DECODE_BATCHES} "
                             f"or more distinct sizes (got {' '.join(map(str, self.batch_sizes))}); add sizes, "
                             "e.g. 1 4 16")
        if min(self.prompt_sizes + self.batch_sizes + self.decode_prompts) <= 0 or min(self.cached_contexts) < 0:
            raise ValueError("sizes must be positive (cached contexts >= 0)")
        if self.decode_tokens < 8 or self.repeats < 1:
            raise ValueError("--decode-tokens must be >= 8 and --repeats >= 1")
        if not self.decode_prompts_for(max_model_len):
            raise ValueError(f"no --decode-prompts size fits the model ({max_model_len} tokens with "
                             f"{self.decode_tokens} out): lower them")

    def requests(self, nodes: int = 1, max_model_len: int | None = None) -> int:
        return (len(self.prefills(max_model_len)) * self.repeats
                + len(self.decode_prompts_for(max_model_len)) * sum(self.batch_sizes) * nodes)


def add_parser(sub, positive_int) -> None:
    d = Sweep()
    ca = sub.add_parser(
        "calibrate", help="measure a running cluster and write its profile (for `preble sim --profile`)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ca.add_argument("--addr", default="127.0.0.1:50051", help="router address (default: 127.0.0.1:50051)")
    ca.add_argument("-o", "--output", required=True, metavar="PATH", help="where to write the profile JSON")
    ca.add_argument("--name", default="cluster", help="the profile's name (default: cluster)")
    ca.add_argument("--prompt-sizes", type=positive_int, nargs="+", default=list(d.prompt_sizes), metavar="N",
                    help=f"new prompt tokens of the prefill requests (default: {' '.join(map(str, d.prompt_sizes))})")
    ca.add_argument("--cached-contexts", type=int, nargs="+", default=list(d.cached_contexts), metavar="N",
                    help="cached tokens in front of them (default: "
                         f"{' '.join(map(str, d.cached_contexts))})")
    ca.add_argument("--batch-sizes", type=positive_int, nargs="+", default=list(d.batch_sizes), metavar="N",
                    help="decoding sequences per node, sent at once to the whole cluster (default: "
                         f"{' '.join(map(str, d.batch_sizes))})")
    ca.add_argument("--decode-prompts", type=positive_int, nargs="+", default=list(d.decode_prompts), metavar="N",
                    help=f"prompt tokens of the decoding requests (default: {' '.join(map(str, d.decode_prompts))})")
    ca.add_argument("--decode-tokens", type=positive_int, default=d.decode_tokens,
                    help=f"tokens each decoding request generates (default: {d.decode_tokens})")
    ca.add_argument("--repeats", type=positive_int, default=d.repeats, help=f"prefills per size (default: {d.repeats})")
    ca.add_argument("--admin-token-file", metavar="FILE", help="file holding the admin token")
    ca.add_argument("--inference-token-file", metavar="FILE", help="file holding the inference token")
    ca.add_argument("--tls-ca", metavar="PEM", help="CA (or server) certificate: connect with TLS")
    ca.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_calibrate(args: argparse.Namespace) -> int:
    import grpc

    from preble_tiered.api import auth
    from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
    from preble_tiered.cli.admin import describe_profile
    from preble_tiered.scheduler.profile import ClusterProfile
    from preble_tiered.sim import profile_files

    sweep = Sweep(tuple(args.prompt_sizes), tuple(args.cached_contexts), tuple(args.batch_sizes),
                  tuple(args.decode_prompts), args.decode_tokens, args.repeats)
    sweep.check()
    check_output(args.output, "-o")
    admin_md = auth.bearer(t) if (t := auth.load_token(auth.ADMIN_TOKEN_ENV, args.admin_token_file)) else ()
    inf_md = auth.bearer(t) if (t := auth.load_token(auth.INFERENCE_TOKEN_ENV, args.inference_token_file)) else ()
    ch = auth.channel(args.addr, args.tls_ca)
    try:
        inference = inference_pb2_grpc.InferenceStub(ch)
        admin = admin_pb2_grpc.AdminStub(ch)
        try:
            info = inference.GetModelInfo(inference_pb2.ModelInfoRequest(), metadata=inf_md, timeout=10)
            if info.nodes_alive == 0:
                raise RuntimeError(f"the cluster at {args.addr} has no node serving")
            sweep.check(info.max_model_len)
            nodes = admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=admin_md, timeout=10).nodes
            host_nodes = nodes_per_host([n.address for n in nodes if n.alive])
            share = []
            if host_nodes > 1:  # before the reset: these prefills must not enter the fit
                print(f"measuring prefills beside a decode stream ({host_nodes} nodes per host)", file=sys.stderr)
                host_of = {n.name: host_of_address(n.address) for n in nodes}
                share = _beside_a_stream(inference, inf_md, info.vocab_size, info.max_model_len, host_of)
            _reset(admin, admin_md)
            t0 = time.monotonic()
            skipped = len(sweep.prefills()) - len(sweep.prefills(info.max_model_len))
            if skipped:
                print(f"leaving out {skipped} prefill size(s) longer than the model's {info.max_model_len} tokens",
                      file=sys.stderr)
            client_gaps = _run_sweep(sweep, inference, inf_md, info.vocab_size, info.nodes_alive,
                                     info.max_model_len, not args.quiet)
            source = "preble " + shlex.join(getattr(args, "argv", []) or ["calibrate"])
            resp = admin.GetProfile(admin_pb2.ProfileRequest(name=args.name, source=source), metadata=admin_md,
                                    timeout=30)
        except grpc.RpcError as e:
            raise RuntimeError(f"{e.code().name}: {e.details()}") from None
    finally:
        ch.close()
    prof = ClusterProfile.from_dict(json.loads(resp.profile_json))
    if host_nodes > 1:
        if not share:
            print("no prefill ran beside the decode stream on another node of its host: host_prefill_slowdown "
                  "left at 0 (coverage.host_samples 0)", file=sys.stderr)
        prof = replace(prof, host_nodes=host_nodes,
                       host_prefill_slowdown=max(0.0, statistics.median(share) - 1.0) if share else 0.0,
                       coverage=replace(prof.coverage, host_samples=len(share)))
    if client_gaps:  # the router cannot see the client's hop: add what this client measured
        client = statistics.median(client_gaps)
        prof = replace(prof, request_overhead_s=prof.request_overhead_s + client, client_overhead_s=client)
    profile_files.save(prof, args.output)
    print(describe_profile(prof))
    n = sweep.requests(info.nodes_alive, info.max_model_len)
    print(f"wrote {args.output} ({n} requests in {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


def _reset(admin, md, tries: int = 3, wait_s: float = 1.0) -> None:
    """Drop what the router measured so far. The router refuses (UNAVAILABLE) while a node does
    not report, since that node's earlier measurements would arrive after the reset: try again."""
    import grpc

    from preble_tiered.api.pb import admin_pb2

    for attempt in range(tries):
        try:
            admin.GetProfile(admin_pb2.ProfileRequest(reset=True), metadata=md, timeout=10)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == tries - 1:
                raise
            print(f"the reset waits for the nodes: {e.details()}", file=sys.stderr)
            time.sleep(wait_s)


def _greedy_request(request_id: str, ids: list[int], out: int):
    """A GenerateRequest for `ids`: greedy, `out` tokens whatever the model says (ignore_eos)."""
    from preble_tiered.api import convert
    from preble_tiered.api.pb import inference_pb2
    from preble_tiered.types import GenParams

    req = inference_pb2.GenerateRequest(request_id=request_id, sampling=convert.params_to_pb(
        GenParams(max_tokens=out, temperature=0.0, ignore_eos=True)))
    req.token_ids.ids.extend(ids)
    return req


def host_of_address(address: str) -> str:
    """The host of "host:port": every loopback address (localhost, 127.0.0.0/8, ::1) is one
    host, a name resolves to its first address, and what does not resolve stays as written.
    One machine reached by a loopback and by another address counts as two hosts."""
    import ipaddress
    import socket

    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except (OSError, ValueError, IndexError):
            return host
    return "loopback" if ip.is_loopback else str(ip)


def nodes_per_host(addresses: list[str]) -> int:
    """The most nodes at one host among `addresses` ("host:port"; 1 for none)."""
    hosts = [host_of_address(a) for a in addresses]
    return max((hosts.count(h) for h in set(hosts)), default=1)


BESIDE_SIZES = (512, 1024, 1536)
BESIDE_ROUNDS = 3


def _beside_a_stream(stub, md, vocab: int, max_len: int, host_of: dict[str, str]) -> list[float]:
    """Engine time beside a decode stream over engine time alone, per prefill size and round:
    each size is sent once with the cluster idle, then again while a stream decodes; a pair
    counts where both met nothing else in their own engine and the second ran on another node
    of the stream's host and ended before the stream did. `host_of`: node name -> host."""
    import threading

    import numpy as np

    rng = np.random.default_rng(time.monotonic_ns())
    lo = min(16, vocab // 2)
    sizes = [s for s in BESIDE_SIZES if s + 2 <= max_len]
    out = max(16, min(256, max_len - 64 - 1))  # a stream long enough to outlast the prefills

    def send(ids: list[int], n_out: int, on_first=None):
        req = _greedy_request(f"calibrate-beside-{time.monotonic_ns()}", ids, n_out)
        usage = None
        for msg in stub.Generate(req, metadata=md, timeout=600):
            if msg.WhichOneof("kind") == "chunk":
                if on_first is not None:
                    on_first.set()
            else:
                usage = msg.complete.usage
        return usage, time.monotonic()

    def engine_s(usage) -> float:
        return usage.engine_ttft_ms * 1e-3 if usage is not None and usage.engine_ttft_ms > 0 else 0.0

    ratios: list[float] = []
    for _ in range(BESIDE_ROUNDS):
        alone = {e: engine_s(send(rng.integers(lo, vocab, size=e).tolist(), 2)[0]) for e in sizes}
        decoding, stream = threading.Event(), {}

        def run_stream() -> None:
            try:
                stream["usage"], stream["end"] = send(rng.integers(lo, vocab, size=64).tolist(), out, decoding)
            except Exception as e:  # handed to the caller below (an RpcError says what failed)
                stream["error"] = e
            finally:
                decoding.set()

        t = threading.Thread(target=run_stream, daemon=True)
        t.start()
        decoding.wait(600)
        done = [(e, *send(rng.integers(lo, vocab, size=e).tolist(), 2)) for e in sizes]
        t.join(600)
        if "error" in stream:
            raise stream["error"]
        if stream.get("usage") is None:
            raise RuntimeError("the decode stream of the host phase ended without a result")
        s_node = stream["usage"].node
        for e, usage, end in done:
            beside = engine_s(usage)
            if beside and alone[e] and usage.node != s_node and host_of.get(usage.node) == host_of.get(s_node) \
                    and end < stream["end"]:
                ratios.append(beside / alone[e])
    return ratios


def _run_sweep(sweep: Sweep, stub, md, vocab: int, nodes: int, max_len: int, progress: bool) -> list[float]:
    """Run the sweep; returns the client TTFT less the router's (seconds) of each prefill,
    sent one at a time (the decode batches' threads would add their own contention)."""
    import numpy as np

    from preble_tiered.cli.bench import _bar

    rng = np.random.default_rng(time.monotonic_ns())
    lo = min(16, vocab // 2)  # skip the lowest ids (special tokens of real vocabularies)
    bar = _bar(sweep.requests(nodes, max_len), progress)
    n = 0
    gaps: list[float] = []

    def fresh(k: int) -> list[int]:
        return rng.integers(lo, vocab, size=k).tolist() if k else []

    def one(ids: list[int], out: int, timed: bool = False) -> None:
        nonlocal n
        n += 1
        req = _greedy_request(f"calibrate-{time.monotonic_ns()}-{n}", ids, out)
        t0, first = time.monotonic(), None
        for msg in stub.Generate(req, metadata=md, timeout=600):
            if msg.WhichOneof("kind") == "chunk":
                first = first or time.monotonic() - t0
            elif timed and first is not None and msg.complete.usage.ttft_ms > 0:
                gaps.append(max(0.0, first - msg.complete.usage.ttft_ms * 1e-3))
        bar.update(1)

    prefixes: dict[int, list[int]] = {}
    for ctx, size in sweep.prefills(max_len):  # one at a time: each prefill is measured alone
        prefix = prefixes.setdefault(ctx, fresh(ctx))
        for _ in range(sweep.repeats):
            one(prefix + fresh(size), 2, timed=True)  # alone: the client's own hop, not its threads' contention
    with ThreadPoolExecutor(max(sweep.batch_sizes) * nodes) as pool:
        for plen in sweep.decode_prompts_for(max_len):
            for b in sweep.batch_sizes:
                list(pool.map(lambda ids: one(ids, sweep.decode_tokens), [fresh(plen) for _ in range(b * nodes)]))
    bar.close()
    return gaps
