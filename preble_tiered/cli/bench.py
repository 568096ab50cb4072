"""`preble bench`: drive a running cluster over the gRPC API (or any server over the OpenAI
API, `--openai`: see bench_openai.py) with a workload or a trace.

Requests are sent at their arrival times (open loop), as token ids drawn from the
model's vocabulary (`workloads.tokens`), greedy, with `ignore_eos` so each produces its
workload's output length. TTFT and latency are measured at the client; cached tokens by
tier come from each request's usage message. The summary has the JSON shape of `preble sim`.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from preble_tiered.types import GenParams
from preble_tiered.api import convert
from preble_tiered.api.auth import aio_channel, bearer
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from preble_tiered.sim.metrics import RequestRecord, SimResult, stats
from preble_tiered.types import WorkloadRequest
from preble_tiered.workloads.tokens import request_token_ids


@dataclass(frozen=True)
class BenchConfig:
    addr: str
    max_output_tokens: int | None = None
    """Cap on each request's output tokens (None: the workload's)."""
    timeout_s: float = 600.0
    progress: bool = True
    openai_url: str | None = None
    """Drive this OpenAI API base URL (e.g. http://127.0.0.1:8000/v1) instead of gRPC at `addr`."""
    vocab_size: int | None = None
    """The model's vocabulary for the prompt token ids (None: the server's report)."""
    nodes: int | None = None
    """Nodes behind an OpenAI server that does not report them (summaries per node)."""
    token: str | None = None
    """The Inference API's bearer token (over --openai: the API key), when the server requires one."""
    admin_token: str | None = None
    """The Admin API's token, for the router's policy and branch counts (optional)."""
    tls_ca: str | None = None
    """PEM of the CA (or the router's certificate): connect over TLS."""


@dataclass
class BenchOutcome:
    summary: dict
    failures: list[str]
    records: list[RequestRecord] = field(default_factory=list)
    """One per finished request, in the order of the requests given."""


def check_fits(requests: Sequence[WorkloadRequest], max_model_len: int, max_out: int | None) -> None:
    """Raises ValueError when a request cannot fit the model (before anything is sent)."""
    for r in requests:
        out = min(r.output_tokens, max_out) if max_out else r.output_tokens
        if r.prompt_tokens + max(out, 1) > max_model_len:
            raise ValueError(f"request {r.request_id} has {r.prompt_tokens} prompt + {out} output tokens; the model "
                             f"allows {max_model_len}: use a trace with shorter prompts or --max-output-tokens")


async def run_bench(requests: Sequence[WorkloadRequest], cfg: BenchConfig, label: str = "") -> BenchOutcome:
    if cfg.openai_url:
        return await _run_openai(requests, cfg, label)
    md = bearer(cfg.token) if cfg.token else None
    admin_md = bearer(cfg.admin_token) if cfg.admin_token else None
    async with aio_channel(cfg.addr, cfg.tls_ca, CHANNEL_OPTIONS) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        try:
            info = await stub.GetModelInfo(inference_pb2.ModelInfoRequest(), timeout=10, metadata=md)
        except grpc.aio.AioRpcError as e:
            raise RuntimeError(f"cannot use the cluster at {cfg.addr}: {e.code().name}: {e.details()}") from None
        if info.nodes_alive == 0:
            raise ValueError(f"the cluster at {cfg.addr} has no node serving")
        check_fits(requests, info.max_model_len, cfg.max_output_tokens)
        policy, branches_before = await _router_view(ch, admin_md)

        async def one(r: WorkloadRequest, t0: float) -> RequestRecord:
            return await _send(stub, r, info.vocab_size, cfg, t0, md)

        done, failures, wall = await _replay(requests, one, grpc.aio.AioRpcError,
                                             lambda e: f"{e.code().name}: {e.details()}", cfg.progress)
        _, branches_after = await _router_view(ch, admin_md)
    branches = {k: v - branches_before.get(k, 0) for k, v in branches_after.items() if v - branches_before.get(k, 0)}
    return _outcome(policy or label, label, done, failures, branches, wall, info.nodes_alive)


async def _run_openai(requests: Sequence[WorkloadRequest], cfg: BenchConfig, label: str) -> BenchOutcome:
    import httpx
    import openai

    from preble_tiered.cli import bench_openai

    async with openai.AsyncOpenAI(base_url=cfg.openai_url, api_key=cfg.token or bench_openai.api_key(), max_retries=0,
                                  timeout=cfg.timeout_s) as client:
        try:
            server = await bench_openai.describe(client, cfg.openai_url, cfg.vocab_size)
        except (openai.APIError, httpx.HTTPError) as e:
            raise RuntimeError(f"cannot use the OpenAI API at {cfg.openai_url}: {type(e).__name__}: {e}") from None
        if server.max_model_len:
            check_fits(requests, server.max_model_len, cfg.max_output_tokens)

        async def one(r: WorkloadRequest, t0: float) -> RequestRecord:
            out = min(r.output_tokens, cfg.max_output_tokens) if cfg.max_output_tokens else r.output_tokens
            ids = request_token_ids(r, server.vocab_size).tolist()
            return await bench_openai.send(client, server, r, ids, max(1, out), t0)

        # httpx errors while a stream is read are not wrapped by the openai package
        done, failures, wall = await _replay(requests, one, (openai.APIError, httpx.HTTPError, RuntimeError),
                                             lambda e: f"{type(e).__name__}: {e}", cfg.progress)
    branches = dict(Counter(r.branch for r in done if r.branch))
    return _outcome(f"openai:{server.model}", label, done, failures, branches, wall, server.nodes or cfg.nodes or 1)


async def _replay(requests: Sequence[WorkloadRequest], one, errors, describe, progress: bool):
    """Send each request at its arrival time; (records of those that finished, failures, wall s)."""
    records: list[RequestRecord | None] = [None] * len(requests)
    failures: list[str] = []
    bar = _bar(len(requests), progress)
    t0 = time.monotonic()
    base = min((r.arrival_s for r in requests), default=0.0)

    async def timed(i: int, r: WorkloadRequest) -> None:
        delay = (r.arrival_s - base) - (time.monotonic() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            records[i] = await one(r, t0)
        except errors as e:
            failures.append(f"{r.request_id}: {describe(e)}")
        bar.update(1)

    await asyncio.gather(*(timed(i, r) for i, r in enumerate(requests)))
    bar.close()
    return [r for r in records if r is not None], failures, time.monotonic() - t0


def _outcome(policy: str, label: str, done: list[RequestRecord], failures: list[str], branches: dict[str, int],
             wall: float, nodes: int) -> BenchOutcome:
    if not done:
        raise RuntimeError(f"every request failed; first error: {failures[0] if failures else '?'}")
    res = SimResult(policy, done, [], branches, wall, [])
    summary = res.summary(label, nodes)
    summary.pop("ideal", None)
    summary.pop("sim_wall_s", None)
    summary.pop("decision_us", None)  # not visible from the client: see the router's /metrics
    summary["wall_s"] = wall
    summary["failed"] = len(failures)
    summary["cached_token_share"] = (sum(summary["cached_tokens"].values()) / summary["prompt_tokens"]
                                     if summary["prompt_tokens"] else 0.0)
    server = [r.server_ttft_s for r in done if math.isfinite(r.server_ttft_s)]
    if server:  # the router's own TTFT: the rest of the client's is the client and the wire
        summary["server_ttft"] = stats(server)
    node = [r.node_ttft_s for r in done if math.isfinite(r.node_ttft_s)]
    if node:  # the node's: received -> first token (its queue, admission, prefill)
        summary["node_ttft"] = stats(node)
    engine = [r.engine_ttft_s for r in done if math.isfinite(r.engine_ttft_s)]
    if engine:  # the engine's, admitted -> first token, of the requests that met nothing else there
        summary["engine_ttft"] = {**stats(engine), "requests": len(engine)}
    return BenchOutcome(summary, failures, done)


async def _send(stub, r: WorkloadRequest, vocab: int, cfg: BenchConfig, t0: float, md=None) -> RequestRecord:
    out = min(r.output_tokens, cfg.max_output_tokens) if cfg.max_output_tokens else r.output_tokens
    params = GenParams(max_tokens=max(1, out), temperature=0.0, ignore_eos=True)
    ids = request_token_ids(r, vocab).tolist()
    req = inference_pb2.GenerateRequest(request_id=f"{r.request_id}-{int(t0 * 1e3) % 10**9}",
                                        sampling=convert.params_to_pb(params))
    req.token_ids.ids.extend(ids)
    sent = time.monotonic() - t0
    first = None
    usage = None
    async for msg in stub.Generate(req, timeout=cfg.timeout_s, metadata=md):
        if msg.WhichOneof("kind") == "chunk":
            if first is None:
                first = time.monotonic() - t0
        else:
            usage = msg.complete.usage
    end = time.monotonic() - t0
    if usage is None:
        raise RuntimeError(f"{r.request_id}: stream ended without a result")
    rec = RequestRecord(r.request_id, 0, usage.branch, sent, len(ids), usage.completion_tokens,
                        first_token_s=first if first is not None else end, finish_s=end)
    rec.cached = convert.cached_from_pb(usage.cached_tokens)
    rec.recomputed_tokens = usage.recomputed_tokens
    rec.server_ttft_s = usage.ttft_ms * 1e-3 if usage.ttft_ms > 0 else float("nan")
    rec.node_ttft_s = usage.node_ttft_ms * 1e-3 if usage.node_ttft_ms > 0 else float("nan")
    rec.engine_ttft_s = usage.engine_ttft_ms * 1e-3 if usage.engine_ttft_ms > 0 else float("nan")
    return rec


async def _router_view(ch: grpc.aio.Channel, md=None) -> tuple[str, dict[str, int]]:
    """The router's policy and branch counts (empty if its Admin API is not reachable or wants a token
    we were not given)."""
    try:
        st = await admin_pb2_grpc.AdminStub(ch).ClusterStats(admin_pb2.ClusterStatsRequest(), timeout=5, metadata=md)
    except grpc.aio.AioRpcError:
        return "", {}
    return st.policy, dict(st.branch_counts)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True)

