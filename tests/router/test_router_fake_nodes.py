"""The router against scripted in-process nodes (gRPC on loopback, no engine).

The nodes here are fakes of the Node service so the router's own logic can be driven
exactly: residency following and resynchronisation, re-routing after a node failure,
input validation and overload. The real engine is covered by tests/server/test_cluster_e2e.py.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from preble_tiered.events import BlockStored
from preble_tiered.hashing import BlockHasher
from preble_tiered.api import convert
from preble_tiered.api.pb import (admin_pb2, admin_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc,
                                     node_pb2, node_pb2_grpc)
from preble_tiered.router.config import RouterConfig
from preble_tiered.router.residency import EventGap, ResidencyFollower
from preble_tiered.router.router import Router
from preble_tiered.router.service import AdminService, InferenceService, RegistryService
from preble_tiered.types import Tier

VOCAB = 260
HASH = BlockHasher(32)


class FakeNode(node_pb2_grpc.NodeServicer):
    """Streams `tokens_per_request` tokens (ids 7, 8, ...), one chunk each, `delay_s` apart."""

    def __init__(self, name: str, tokens_per_request: int = 4, delay_s: float = 0.0) -> None:
        self.name = name
        self.tokens = tokens_per_request
        self.delay_s = delay_s
        self.submitted: list[node_pb2.SubmitRequest] = []
        self.blocks: dict[int, int | None] = {}  # resident hash -> parent
        self.batches: list[node_pb2.EventBatch] = []
        self.seq = 0
        self.snapshots = 0
        self.fail_snapshots = False
        self.changed = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.link_rates: dict[str, float] = {}
        self.prefill_samples: list[tuple[int, int, float]] = []  # reported (and dropped) by the next Load
        self.decode_steps: list[tuple[int, float, float, int]] = []
        self.load_fails = False  # Load answers UNAVAILABLE (a node whose polls fail)

    async def start(self, router_addr: str) -> None:
        self.server = grpc.aio.server()
        node_pb2_grpc.add_NodeServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        await self.server.start()
        async with grpc.aio.insecure_channel(router_addr) as ch:
            await node_pb2_grpc.RegistryStub(ch).Register(node_pb2.RegisterRequest(address=self.address,
                                                                                   info=self.info()))

    def info(self) -> node_pb2.NodeInfo:
        return node_pb2.NodeInfo(name=self.name, model="fake", vocab_size=VOCAB, max_model_len=2048, block_size=32,
                                 kv_capacity_tokens=32 * 1024, kv_bytes_per_token=8192, max_num_seqs=16,
                                 max_batch_tokens=2048)

    def store(self, prompt: list[int], skip_seq: bool = False) -> None:
        """Hold the prompt's full blocks and publish that (optionally losing the batch)."""
        hashes = HASH(prompt)
        parent = None
        for h in hashes:
            self.blocks[h] = parent
            parent = h
        self.seq += 1
        if not skip_seq:
            self.batches.append(convert.batch_to_pb(self.seq, [BlockStored(0, Tier.HBM, tuple(hashes), None)]))
        self.changed.set()
        self.changed = asyncio.Event()

    async def Submit(self, request, context):
        self.submitted.append(request)
        for i in range(request.sampling.max_tokens if request.sampling.HasField("max_tokens") else self.tokens):
            if i >= self.tokens:
                break
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield node_pb2.SubmitResponse(chunk=node_pb2.TokenChunk(token_ids=[7 + i], text=f"t{i}"))
        n = len(request.prompt_token_ids)
        yield node_pb2.SubmitResponse(done=node_pb2.SubmitDone(
            finish_reason="length", prompt_tokens=n, completion_tokens=self.tokens,
            cached_tokens=common_pb2.CachedTokens(hbm=(n - 1) // 32 * 32 if request.request_id.startswith("hit") else 0)))

    async def Serve(self, request_iterator, context):
        """The router's door: each submit runs as Submit would; items leave in batches."""
        out: asyncio.Queue = asyncio.Queue()
        tasks: dict[str, asyncio.Task] = {}

        async def run(req):
            async for resp in self.Submit(req, context):
                kind = resp.WhichOneof("kind")
                out.put_nowait(node_pb2.ServeItem(request_id=req.request_id, **{kind: getattr(resp, kind)}))

        async def read():
            async for r in request_iterator:
                if r.WhichOneof("kind") == "submit":
                    tasks[r.submit.request_id] = asyncio.create_task(run(r.submit))
                elif r.cancel in tasks:
                    tasks.pop(r.cancel).cancel()

        reader = asyncio.create_task(read())
        try:
            while True:
                items = [await out.get()]
                while not out.empty():
                    items.append(out.get_nowait())
                yield node_pb2.ServeBatch(items=items)
        finally:
            reader.cancel()
            for t in tasks.values():
                t.cancel()

    async def Events(self, request, context):
        after = request.after_seq
        while True:
            changed = self.changed
            for b in self.batches:
                if b.seq > after:
                    yield b
                    after = b.seq
            await changed.wait()

    async def Snapshot(self, request, context):
        if self.fail_snapshots:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted failure")
        self.snapshots += 1
        return convert.snapshot_to_pb(self.seq, [(Tier.HBM, h, p) for h, p in self.blocks.items()])

    async def Load(self, request, context):
        if self.load_fails:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        rep = node_pb2.LoadReport(ready=True, event_seq=self.seq)
        for link, bps in self.link_rates.items():
            rep.link_rates.add(link=link, bytes_per_s=bps, samples=3)
        for e, c, t in self.prefill_samples:
            rep.prefill_samples.add(new_tokens=e, context_tokens=c, seconds=t)
        for b, c, t, n in self.decode_steps:
            rep.decode_steps.add(batch=b, context_tokens=c, seconds=t, steps=n)
        self.prefill_samples, self.decode_steps = [], []
        return rep

    async def Info(self, request, context):
        return self.info()


class Harness:
    def __init__(self, **router_kw) -> None:
        self.router = Router(RouterConfig(**{"port": 0, "load_interval_s": 0.1, **router_kw}))
        self.server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServicer_to_server(InferenceService(self.router), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminService(self.router), self.server)
        node_pb2_grpc.add_RegistryServicer_to_server(RegistryService(self.router), self.server)
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.nodes: list[FakeNode] = []

    async def __aenter__(self) -> "Harness":
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(self.addr)
        self.inference = inference_pb2_grpc.InferenceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.router.close()
        for n in self.nodes:
            if n.server is not None:
                await n.server.stop(0)
        await self.channel.close()
        await self.server.stop(0)

    async def add_nodes(self, *nodes: FakeNode) -> None:
        for n in nodes:
            await n.start(self.addr)
            self.nodes.append(n)
        await self.until(lambda: sum(lk.alive for lk in self.router.links.values()) == len(self.nodes))

    async def until(self, cond, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)

    async def residency(self, node_id: int) -> list[int]:
        r = await self.admin.GetNodeResidency(admin_pb2.NodeResidencyRequest(node_id=node_id))
        return list(r.hashes)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def ids_request(ids, rid="", **sampling) -> inference_pb2.GenerateRequest:
    req = inference_pb2.GenerateRequest(request_id=rid, sampling=common_pb2.SamplingParams(**sampling))
    req.token_ids.ids.extend(ids)
    return req


def doc(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 31) % VOCAB for i in range(n)]


# ---------------------------------------------------------------------- pure parts
def test_follower_accepts_consecutive_and_rejects_gaps():
    f = ResidencyFollower()
    f.reset(5)
    f.accept(6)
    with pytest.raises(EventGap):
        f.accept(8)
    with pytest.raises(EventGap):
        f.accept(6)  # a replay is a gap too: the stream is not what we think


# ---------------------------------------------------------------------- end to end against fakes
def test_generate_streams_chunks_then_usage():
    async def body():
        async with Harness() as h:
            await h.add_nodes(FakeNode("a", tokens_per_request=3))
            chunks, complete = [], None
            async for m in h.inference.Generate(ids_request(doc(1, 100), max_tokens=3)):
                if m.WhichOneof("kind") == "chunk":
                    chunks.append(list(m.chunk.token_ids))
                else:
                    complete = m.complete
            assert chunks == [[7], [8], [9]]
            assert list(complete.token_ids) == [7, 8, 9] and complete.text == "t0t1t2"
            u = complete.usage
            assert (u.node, u.prompt_tokens, u.completion_tokens, u.finish_reason) == ("a", 100, 3, "length")
            assert u.recomputed_tokens == 100 and u.ttft_ms <= u.latency_ms
            st = await h.admin.ClusterStats(admin_pb2.ClusterStatsRequest())
            assert st.requests_total == 1 and st.nodes_alive == 1
    run(body())


def test_index_follows_events_and_routes_to_the_holder():
    async def body():
        async with Harness(policy="e2_tiered") as h:
            a, b = FakeNode("a"), FakeNode("b")
            await h.add_nodes(a, b)
            document = doc(2, 640)
            b.store(document)  # b holds the document (20 blocks)
            await h.until(lambda: h.router.links[1].event_seq == 1)
            assert await h.residency(1) == sorted(HASH(document))
            assert await h.residency(0) == []
            for i in range(4):
                q = document + doc(100 + i, 20)
                r = await h.inference.GenerateOnce(ids_request(q, max_tokens=2))
                assert r.usage.node == "b", f"question {i} went to {r.usage.node}"
                assert r.usage.branch == "exploit"
                assert r.usage.predicted_cached_tokens.hbm == 640
    run(body())


def test_priority_group_comes_from_the_plans_hit_ratio_shifted_by_priority():
    async def body():
        async with Harness() as h:
            a = FakeNode("a")
            await h.add_nodes(a)
            document = doc(10, 320)
            a.store(document)
            await h.until(lambda: h.router.links[0].event_seq == 1)
            await h.inference.GenerateOnce(ids_request(doc(11, 100)))  # cold: group 0
            await h.inference.GenerateOnce(ids_request(document + doc(12, 32)))  # 320/352 cached: group 9
            req = ids_request(doc(13, 100))
            req.priority = 4
            await h.inference.GenerateOnce(req)  # cold, shifted up 4
            req = ids_request(document + doc(14, 32))
            req.priority = -3
            await h.inference.GenerateOnce(req)
            assert [s.priority_group for s in a.submitted] == [0, 9, 4, 6]
            bad = ids_request([1, 2])
            bad.priority = 10
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.inference.GenerateOnce(bad)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in ei.value.details()
    run(body())


def test_lost_event_batch_is_detected_and_resynchronised_by_snapshot():
    async def body():
        async with Harness() as h:
            a = FakeNode("a")
            await h.add_nodes(a)
            assert a.snapshots == 1
            d1, d2, d3 = doc(3, 64), doc(4, 96), doc(5, 128)
            a.store(d1)
            a.store(d2, skip_seq=True)  # batch 2 is lost on the wire
            a.store(d3)
            await h.until(lambda: a.snapshots == 2 and h.router.links[0].event_seq == 3)
            want = sorted(HASH(d1) + HASH(d2) + HASH(d3))
            assert await h.residency(0) == want
            nodes = await h.admin.ListNodes(admin_pb2.ListNodesRequest())
            assert nodes.nodes[0].resyncs == 1
    run(body())


def test_batch_lost_at_the_tail_is_caught_by_the_load_reports_sequence_number():
    async def body():
        async with Harness() as h:
            a = FakeNode("a")
            await h.add_nodes(a)
            d1, d2 = doc(8, 64), doc(9, 64)
            a.store(d1)
            a.store(d2, skip_seq=True)  # lost, and nothing follows it on the stream
            await h.until(lambda: a.snapshots == 2)
            await h.until(lambda: h.router.links[0].event_seq == 2)
            assert await h.residency(0) == sorted(HASH(d1) + HASH(d2))
            assert h.router.links[0].alive and h.router.links[0].resyncs == 1
    run(body())


def test_dead_node_is_marked_down_and_its_request_continues_elsewhere():
    async def body():
        async with Harness(policy="round_robin") as h:
            a, b = FakeNode("a", tokens_per_request=6, delay_s=0.05), FakeNode("b", tokens_per_request=6)
            await h.add_nodes(a, b)
            a.store(doc(6, 64))
            await h.until(lambda: h.router.links[0].event_seq == 1)
            prompt = doc(7, 50)
            got: list[int] = []
            complete = None
            async for m in h.inference.Generate(ids_request(prompt, "r1", max_tokens=6)):
                if m.WhichOneof("kind") == "chunk":
                    got.extend(m.chunk.token_ids)
                    if len(got) == 2:  # round robin sent it to a: kill a mid-stream
                        await a.server.stop(0)
                else:
                    complete = m.complete
            assert complete is not None and complete.usage.reroutes == 1 and complete.usage.node == "b"
            # b continued from prompt + the 2 streamed tokens, with the remaining budget
            cont = b.submitted[-1]
            assert list(cont.prompt_token_ids) == prompt + [7, 8]
            assert cont.sampling.max_tokens == 4
            assert got == [7, 8, 7, 8, 9, 10] and complete.usage.completion_tokens == 6
            assert not h.router.links[0].alive
            assert await h.residency(0) == []  # its residency was dropped
            st = await h.admin.ClusterStats(admin_pb2.ClusterStatsRequest())
            assert st.requests_rerouted == 1 and st.nodes_alive == 1
            b.fail_snapshots = True
            h.router.nodes.mark_down(h.router.links[1], "scripted")  # as if a submit to b failed...
            b.store(doc(15, 64))  # ...while its stream still delivers a batch
            await asyncio.sleep(0.3)
            assert await h.residency(1) == []  # a down node's residency is not resurrected
    run(body())


@pytest.mark.parametrize("req, fix", [
    (ids_request([]), "prompt is empty"),
    (inference_pb2.GenerateRequest(text=""), "prompt is empty"),
    (ids_request([1, 2, VOCAB]), "out of the vocabulary"),
    (ids_request(list(range(100)), max_tokens=2000), "exceeds the model's limit of 2048"),
    (ids_request([1, 2, 3], max_tokens=0), "max_tokens must be at least 1"),
    (ids_request([1, 2, 3], temperature=-1), "temperature must be"),
    (ids_request([1, 2, 3], temperature=float("nan")), "temperature must be"),
    (ids_request([1, 2, 3], top_p=0.0), "top_p must be in (0, 1]"),
    (ids_request([1, 2, 3], top_p=1.5), "top_p must be in (0, 1]"),
    (ids_request([1, 2, 3], stop=[""]), "stop strings"),
    (ids_request([1, 2, 3], rid="x" * 200), "request_id has 200 characters"),
])
def test_bad_input_gets_invalid_argument_with_the_fix(req, fix):
    async def body():
        async with Harness() as h:
            await h.add_nodes(FakeNode("a"))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.inference.GenerateOnce(req)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fix in ei.value.details()
            assert h.nodes[0].submitted == []  # nothing reached a node
            assert h.router.scheduler.cluster.inflight == {}
    run(body())


def test_overload_gets_resource_exhausted_and_no_node_gets_unavailable():
    async def body():
        async with Harness(max_outstanding=1) as h:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.inference.GenerateOnce(ids_request([1, 2, 3]))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and "no node" in ei.value.details()
            await h.add_nodes(FakeNode("a", tokens_per_request=5, delay_s=0.1))
            slow = asyncio.ensure_future(h.inference.GenerateOnce(ids_request([1, 2, 3], "slow", max_tokens=5)))
            await h.until(lambda: h.router.dispatch.outstanding == 1)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await h.inference.GenerateOnce(ids_request([4, 5, 6]))
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry later" in ei.value.details()
            assert (await slow).usage.completion_tokens == 5  # the admitted one is unharmed
    run(body())


def test_node_with_another_block_size_is_refused():
    async def body():
        async with Harness() as h:
            n = FakeNode("odd")
            info = n.info()
            info.block_size = 64
            async with grpc.aio.insecure_channel(h.addr) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await node_pb2_grpc.RegistryStub(ch).Register(node_pb2.RegisterRequest(address="x:1", info=info))
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--block-size" in ei.value.details()
            assert h.router.links == {}
    run(body())


def test_hot_prefix_on_a_busy_node_is_replicated_by_a_pull_plan():
    """e2_tiered copies a hot prefix to an idle node when the holder's queue makes that
    clearly sooner: the submit to the idle node names the holder and the blocks to pull."""
    async def body():
        async with Harness(policy="e2_tiered") as h:
            a, b = FakeNode("a", delay_s=0.3), FakeNode("b", delay_s=0.3)
            await h.add_nodes(a, b)
            document = doc(20, 640)
            b.store(document)
            await h.until(lambda: h.router.links[1].event_seq == 1)
            reqs = [h.inference.GenerateOnce(ids_request(document + doc(200 + i, 20), max_tokens=2))
                    for i in range(10)]
            done = await asyncio.gather(*reqs)
            pulls = [s for s in a.submitted if s.HasField("pull")]
            assert pulls, f"no pull plan sent; branches {[d.usage.branch for d in done]}"
            for s in pulls:
                assert s.pull.source_address == b.address and s.pull.source_name == "b"
                assert list(s.pull.hashes) == HASH(document)[:20]
                assert s.expected_cached_tokens.remote == 640
            assert "replicate" in {d.usage.branch for d in done}
            assert not any(s.HasField("pull") for s in b.submitted)  # the holder pulls nothing
    run(body())


def test_measured_link_rates_replace_the_cost_models_presets():
    async def body():
        async with Harness() as h:
            a, b = FakeNode("a"), FakeNode("b")
            await h.add_nodes(a, b)
            links = h.router.scheduler.cluster.cost.links
            assert links.net.bandwidth == 12.5e9  # preset until measured
            a.link_rates = {"dram": 2e9, "disk": 1e9, "net:b": 0.8e9}
            b.link_rates = {"dram": 4e9, "net:a": 1.2e9}
            await h.until(lambda: h.router.scheduler.cluster.cost.links.dram.bandwidth == 3e9)
            links = h.router.scheduler.cluster.cost.links
            assert (links.dram.bandwidth, links.disk.bandwidth, links.net.bandwidth) == (3e9, 1e9, 1e9)  # medians
            assert h.router.scheduler.policy.planner.cost.links == links  # the planner prices with them
    run(body())


def measured(node: FakeNode, scale: float = 1.0) -> None:
    """Enough prefills and decode steps for a profile to fit: 3 sizes x 3 repeats, 2 batch sizes x 3
    context buckets."""
    node.prefill_samples = [(n, n, scale * (0.001 + n * 1e-5)) for n in (64, 512, 2048) for _ in range(3)]
    node.decode_steps = [(b, c, scale * (0.002 + b * 1e-4 + c * 1e-7), 20) for b in (1, 4) for c in (100, 1000, 4000)]


def test_a_router_started_on_a_profile_routes_on_it_until_its_nodes_measurements_refit_it():
    from preble_tiered.sim import profile_files

    prof = profile_files.load("cpu-tiny")  # measured with 8192 KV bytes per token, as the fake nodes report

    async def body():
        async with Harness(profile=prof) as h:
            a = FakeNode("a")
            await h.add_nodes(a)
            cost = h.router.scheduler.cluster.cost
            assert cost.decode == prof.decode and cost.prefill.per_chunk == prof.prefill
            assert cost.prefill.chunk == 2048 and cost.hbm_tokens == 32 * 1024  # the node's budget and capacity
            assert cost.links.dram.bandwidth == prof.links["dram"].bandwidth
            assert h.router.scheduler.policy.planner.cost is cost
            st = await h.admin.ClusterStats(admin_pb2.ClusterStatsRequest())
            assert st.cost_model == f"profile {prof.name}; decode from the profile"
            measured(a, scale=3.0)  # the node's own measurements take over
            learner = h.router.feed.learner
            await h.until(lambda: learner.prefill.fitted is not None and learner.decode.fitted is not None)
            cost = h.router.scheduler.cluster.cost
            assert cost.decode == learner.decode.fitted and cost.prefill == learner.prefill.fitted
            st = await h.admin.ClusterStats(admin_pb2.ClusterStatsRequest())
            assert st.cost_model.startswith("fitted (9 samples") and st.cost_model.endswith("; decode fitted")
    run(body())


def test_a_profile_of_another_kv_layout_is_not_routed_on(caplog):
    from dataclasses import replace

    from preble_tiered.scheduler.cost_model import CPU_TINY_PREFILL, FlatDecode
    from preble_tiered.sim import profile_files

    prof = replace(profile_files.load("cpu-tiny"), kv_bytes_per_token=4096)  # another model's KV

    async def body():
        async with Harness(profile=prof) as h:
            await h.add_nodes(FakeNode("a"))
            cost = h.router.scheduler.cluster.cost
            assert cost.prefill == CPU_TINY_PREFILL and cost.decode == FlatDecode()
            st = await h.admin.ClusterStats(admin_pb2.ClusterStatsRequest())
            assert st.cost_model == ("preset (cpu tiny; profile cpu-tiny is for another KV layout); "
                                     "decode not measured (flat)")
    with caplog.at_level("WARNING", logger="preble_tiered.router.nodes"):
        run(body())
    assert any("4096 KV bytes per token" in r.getMessage() and "8192" in r.getMessage() for r in caplog.records)


def test_profile_holds_what_the_nodes_measured_before_the_call_not_only_what_polls_brought():
    async def body():
        async with Harness(load_interval_s=60.0) as h:  # no periodic poll after the first during the test
            a, b = FakeNode("a"), FakeNode("b")
            await h.add_nodes(a, b)
            measured(a, scale=100.0)  # measured before the reset: dropped with it
            await h.admin.GetProfile(admin_pb2.ProfileRequest(reset=True))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await h.admin.GetProfile(admin_pb2.ProfileRequest())
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "too few prefill" in e.value.details()
            measured(b)
            resp = await h.admin.GetProfile(admin_pb2.ProfileRequest(name="fresh"))
            assert resp.prefill_samples == 9 and resp.decode_steps == 120
            prof = json.loads(resp.profile_json)
            assert prof["name"] == "fresh" and prof["coverage"]["prefill_new_tokens"] == [64, 2048]
            assert prof["decode"]["a"] == pytest.approx(2.0, rel=0.05)  # ms: b's steps, not a's dropped ones (x100)
    run(body())


def test_a_reset_is_refused_while_a_node_does_not_report_so_nothing_measured_before_it_comes_after():
    async def body():
        async with Harness(load_interval_s=60.0, down_after_s=60.0) as h:
            a, b = FakeNode("a"), FakeNode("b")
            await h.add_nodes(a, b)
            measured(a, scale=100.0)  # measured before the reset, by a node that cannot report it now
            a.load_fails = True
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await h.admin.GetProfile(admin_pb2.ProfileRequest(reset=True))
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "node(s) a did not report" in e.value.details()
            a.load_fails = False
            await h.admin.GetProfile(admin_pb2.ProfileRequest(reset=True))  # a reports first: dropped with it
            measured(b)
            prof = json.loads((await h.admin.GetProfile(admin_pb2.ProfileRequest(name="fresh"))).profile_json)
            assert prof["decode"]["a"] == pytest.approx(2.0, rel=0.05)  # b's steps only (a's were x100)
    run(body())


def test_profile_refreshes_do_not_count_as_the_polls_that_judge_the_event_stream():
    async def body():
        async with Harness(load_interval_s=60.0) as h:
            a = FakeNode("a")
            await h.add_nodes(a)
            await h.until(lambda: a.snapshots == 1)
            a.store(doc(9, 8), skip_seq=True)  # the node is a batch ahead of what the router followed
            for _ in range(3):  # refreshes a few ms apart: not "two polls in a row behind" a poll interval apart
                await h.admin.GetProfile(admin_pb2.ProfileRequest(reset=True))
            await asyncio.sleep(0.3)
            assert a.snapshots == 1 and h.router.links[0].resyncs == 0
    run(body())


def test_a_node_gets_its_id_back_after_a_router_restart_whatever_the_order_it_registers_in(tmp_path):
    state = str(tmp_path / "state.json")

    async def body():
        async with Harness(state_path=state) as h:
            a, b = FakeNode("a"), FakeNode("b")
            await h.add_nodes(a)
            await h.add_nodes(b)
            assert {lk.name: n for n, lk in h.router.links.items()} == {"a": 0, "b": 1}
        async with Harness(state_path=state) as h:  # a restarted router; b comes back first, then a newcomer
            b, c, a = FakeNode("b"), FakeNode("c"), FakeNode("a")
            await h.add_nodes(b)
            await h.add_nodes(c)
            await h.add_nodes(a)
            assert {lk.name: n for n, lk in h.router.links.items()} == {"b": 1, "c": 2, "a": 0}
            assert sorted(h.router.scheduler.cluster.nodes[n].alive for n in (0, 1, 2)) == [True] * 3
    run(body())
