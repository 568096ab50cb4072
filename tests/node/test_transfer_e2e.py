"""KV pulls over the gRPC stream (`--transfer grpc`, the fallback of the bulk path) between
two real nodes (vLLM engines, tiny model, DRAM tiers) on loopback.

A prefix computed on node0 is pulled over `Transfer.Pull` into node1 and loaded there: same
greedy tokens, reported as remote cached tokens, and the router learns node1's new DRAM
residency. Then node0 dies mid-pull (fault injection: it exits after sending its 40th piece
of one call): node1 recomputes what did not arrive and still answers with the same tokens.
"""

from __future__ import annotations

import time

import grpc
import pytest
from ports import free_port

from preble_tiered.hashing import BlockHasher
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster
from preble_tiered.node.agent import FAULT_DIE_AFTER_PIECES
from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc, common_pb2, node_pb2, node_pb2_grpc

pytestmark = pytest.mark.slow

HASH = BlockHasher(32)
SHORT = [(i * 37) % 250 + 4 for i in range(600)]  # 18 usable blocks: fewer pieces than the fault's 40
LONG = [(i * 53 + 11) % 250 + 4 for i in range(2900)]  # 90 blocks: node0 dies in the middle


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    spec = ClusterSpec(nodes=2, model=str(ensure_tiny_model()), port=free_port(), kv_cache_bytes=64 << 20,
                       max_model_len=4096, dram_bytes=128 << 20, log_dir=str(tmp_path_factory.mktemp("logs")),
                       state_path=str(tmp_path_factory.mktemp("state") / "router.json"),
                       node_env={FAULT_DIE_AFTER_PIECES: "40"}, transfer="grpc")
    c = LocalCluster(spec).start(progress=lambda m: None)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def nodes(cluster):
    with grpc.insecure_channel(cluster.addr) as ch:
        listed = admin_pb2_grpc.AdminStub(ch).ListNodes(admin_pb2.ListNodesRequest()).nodes
    by_name = {n.name: n.address for n in listed}
    cluster.node_ids = {n.name: n.node_id for n in listed}
    chans = {name: grpc.insecure_channel(addr) for name, addr in by_name.items()}
    yield {name: (addr, node_pb2_grpc.NodeStub(chans[name])) for name, addr in by_name.items()}
    for ch in chans.values():
        ch.close()


def submit(stub, rid: str, prompt: list[int], pull: node_pb2.PullPlan | None = None):
    req = node_pb2.SubmitRequest(request_id=rid, prompt_token_ids=prompt, pull=pull,
                                 sampling=common_pb2.SamplingParams(max_tokens=8, temperature=0.0))
    tokens, done = [], None
    for msg in stub.Submit(req, timeout=120):
        if msg.WhichOneof("kind") == "chunk":
            tokens += msg.chunk.token_ids
        else:
            done = msg.done
    assert done is not None
    return tokens, done


def test_prefix_pulled_from_another_node_gives_identical_tokens(cluster, nodes):
    (src_addr, src), (_, dst) = nodes["node0"], nodes["node1"]
    want, first = submit(src, "a0", SHORT)
    assert first.cached_tokens.remote == 0
    blocks = HASH(SHORT)[: (len(SHORT) - 1) // 32]
    got, done = submit(dst, "a1", SHORT, node_pb2.PullPlan(source_address=src_addr, source_name="node0",
                                                           hashes=blocks))
    assert got == want
    assert done.cached_tokens.remote == len(blocks) * 32 and done.cached_tokens.hbm == 0
    # the router hears that node1 now holds the prefix in DRAM
    with grpc.insecure_channel(cluster.addr) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        deadline = time.monotonic() + 5
        while True:
            res = admin.GetNodeResidency(admin_pb2.NodeResidencyRequest(node_id=cluster.node_ids["node1"],
                                                                        tier=common_pb2.TIER_DRAM))
            held = set(res.hashes)
            if set(blocks) <= held or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert set(blocks) <= held


def test_load_reports_carry_measured_link_rates(nodes):
    _, dst = nodes["node1"]
    rep = dst.Load(node_pb2.LoadRequest(), timeout=5)
    rates = {r.link: r for r in rep.link_rates}
    assert any(k.startswith("net:") for k in rates) and "dram" in rates
    assert all(r.bytes_per_s > 0 and r.samples >= 1 for r in rates.values())


def test_source_dying_mid_pull_falls_back_to_recompute(cluster, nodes):
    (src_addr, src), (_, dst) = nodes["node0"], nodes["node1"]
    want, _ = submit(src, "b0", LONG)
    blocks = HASH(LONG)[: (len(LONG) - 1) // 32]
    got, done = submit(dst, "b1", LONG, node_pb2.PullPlan(source_address=src_addr, source_name="node0",
                                                          hashes=blocks))
    assert cluster.nodes[0].wait(10) == 3  # node0 really died (the fault's exit code)
    assert got == want  # identical: what arrived was whole and verified, the rest recomputed
    assert 0 < done.cached_tokens.remote < len(blocks) * 32  # the whole blocks before the death were used
    c = done.cached_tokens
    assert (c.hbm, c.dram, c.disk) == (0, 0, 0) and done.prompt_tokens == len(LONG)  # the rest was recomputed
