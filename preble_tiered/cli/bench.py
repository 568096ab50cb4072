"""`preble bench`: drive a running cluster over the gRPC API with a workload or a trace.

Requests are sent at their arrival times (open loop), as token ids drawn from the
model's vocabulary (`workloads.tokens`), greedy, with `ignore_eos` so each produces its
workload's output length. TTFT and latency are measured at the client; cached tokens by
tier come from each request's usage message. The summary has the JSON shape of `preble sim`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from preble_tiered.types import GenParams
from preble_tiered.api import convert
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from preble_tiered.sim.metrics import RequestRecord, SimResult
from preble_tiered.types import WorkloadRequest
from preble_tiered.workloads.tokens import request_token_ids


@dataclass(frozen=True)
class BenchConfig:
    addr: str
    max_output_tokens: int | None = None
    """Cap on each request's output tokens (None: the workload's)."""
    timeout_s: float = 600.0
    progress: bool = True


@dataclass
class BenchOutcome:
    summary: dict
    failures: list[str]


def check_fits(requests: Sequence[WorkloadRequest], info: inference_pb2.ModelInfo, max_out: int | None) -> None:
    """Raises ValueError when a request cannot fit the model (before anything is sent)."""
    for r in requests:
        out = min(r.output_tokens, max_out) if max_out else r.output_tokens
        if r.prompt_tokens + max(out, 1) > info.max_model_len:
            raise ValueError(f"request {r.request_id} has {r.prompt_tokens} prompt + {out} output tokens; the model "
                             f"allows {info.max_model_len}: use a trace with shorter prompts or --max-output-tokens")


async def run_bench(requests: Sequence[WorkloadRequest], cfg: BenchConfig, label: str = "") -> BenchOutcome:
    async with grpc.aio.insecure_channel(cfg.addr, options=CHANNEL_OPTIONS) as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        info = await stub.GetModelInfo(inference_pb2.ModelInfoRequest(), timeout=10)
        if info.nodes_alive == 0:
            raise ValueError(f"the cluster at {cfg.addr} has no node serving")
        check_fits(requests, info, cfg.max_output_tokens)
        policy, branches_before = await _router_view(ch)
        records: list[RequestRecord | None] = [None] * len(requests)
        failures: list[str] = []
        bar = _bar(len(requests), cfg.progress)
        t0 = time.monotonic()
        base = min((r.arrival_s for r in requests), default=0.0)

        async def one(i: int, r: WorkloadRequest) -> None:
            delay = (r.arrival_s - base) - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                records[i] = await _send(stub, r, info.vocab_size, cfg, t0)
            except grpc.aio.AioRpcError as e:
                failures.append(f"{r.request_id}: {e.code().name}: {e.details()}")
            bar.update(1)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        bar.close()
        wall = time.monotonic() - t0
        _, branches_after = await _router_view(ch)
    done = [r for r in records if r is not None]
    if not done:
        raise RuntimeError(f"every request failed; first error: {failures[0] if failures else '?'}")
    branches = {k: v - branches_before.get(k, 0) for k, v in branches_after.items() if v - branches_before.get(k, 0)}
    res = SimResult(policy or label, done, [], branches, wall, [])
    summary = res.summary(label, info.nodes_alive)
    summary.pop("ideal", None)
    summary.pop("sim_wall_s", None)
    summary.pop("decision_us", None)  # not visible from the client: see the router's /metrics
    summary["wall_s"] = wall
    summary["failed"] = len(failures)
    summary["cached_token_share"] = (sum(summary["cached_tokens"].values()) / summary["prompt_tokens"]
                                     if summary["prompt_tokens"] else 0.0)
    return BenchOutcome(summary, failures)


async def _send(stub, r: WorkloadRequest, vocab: int, cfg: BenchConfig, t0: float) -> RequestRecord:
    out = min(r.output_tokens, cfg.max_output_tokens) if cfg.max_output_tokens else r.output_tokens
    params = GenParams(max_tokens=max(1, out), temperature=0.0, ignore_eos=True)
    ids = request_token_ids(r, vocab).tolist()
    req = inference_pb2.GenerateRequest(request_id=f"{r.request_id}-{int(t0 * 1e3) % 10**9}",
                                        sampling=convert.params_to_pb(params))
    req.token_ids.ids.extend(ids)
    sent = time.monotonic() - t0
    first = None
    usage = None
    async for msg in stub.Generate(req, timeout=cfg.timeout_s):
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
    return rec


async def _router_view(ch: grpc.aio.Channel) -> tuple[str, dict[str, int]]:
    """The router's policy and branch counts (empty if its Admin API is not reachable)."""
    try:
        st = await admin_pb2_grpc.AdminStub(ch).ClusterStats(admin_pb2.ClusterStatsRequest(), timeout=5)
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

