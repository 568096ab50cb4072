"""KV pulls over the Mooncake Transfer Engine between two real nodes (vLLM engines, tiny
model, DRAM tiers) on loopback: the same greedy tokens as computing the prefix, reported as
remote cached tokens, the holder's lease released; a dead holder costs a recompute with the
same tokens. (A holder dying between lease and read is tested in tests/transfer/test_bulk.py.)"""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from ports import free_port

from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc, node_pb2, node_pb2_grpc
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster
from preble_tiered.hashing import BlockHasher

from test_transfer_e2e import LONG, SHORT, submit

pytest.importorskip("mooncake.engine", reason="the Mooncake Transfer Engine is not installed")
pytestmark = pytest.mark.slow

HASH = BlockHasher(32)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    spec = ClusterSpec(nodes=2, model=str(ensure_tiny_model()), port=free_port(), kv_cache_bytes=64 << 20,
                       max_model_len=4096, dram_bytes=128 << 20, log_dir=str(tmp_path_factory.mktemp("logs")),
                       state_path=str(tmp_path_factory.mktemp("state") / "router.json"), transfer="mooncake")
    c = LocalCluster(spec).start(progress=lambda m: None)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def nodes(cluster):
    with grpc.insecure_channel(cluster.addr) as ch:
        listed = admin_pb2_grpc.AdminStub(ch).ListNodes(admin_pb2.ListNodesRequest()).nodes
    chans = {n.name: grpc.insecure_channel(n.address) for n in listed}
    yield {n.name: (n.address, node_pb2_grpc.NodeStub(chans[n.name])) for n in listed}
    for ch in chans.values():
        ch.close()


def log_of(cluster, name: str) -> str:
    return (cluster.log_dir / f"{name}.log").read_text(errors="replace")


def test_prefix_pulled_over_mooncake_gives_identical_tokens(cluster, nodes):
    (src_addr, src), (_, dst) = nodes["node0"], nodes["node1"]
    for name in ("node0", "node1"):
        assert "Mooncake transfer engine (tcp) listening as 127.0.0.1:" in log_of(cluster, name)
    for prompt, rid in ((SHORT, "m0"), (LONG, "n0")):
        want, first = submit(src, rid, prompt)
        assert first.cached_tokens.remote == 0
        blocks = HASH(prompt)[: (len(prompt) - 1) // 32]
        got, done = submit(dst, rid + "-pulled", prompt, node_pb2.PullPlan(source_address=src_addr,
                                                                          source_name="node0", hashes=blocks))
        assert got == want
        assert done.cached_tokens.remote == len(blocks) * 32 and done.cached_tokens.hbm == 0
    log1 = log_of(cluster, "node1")
    assert "no bulk pulls" not in log1 and "recomputing the rest" not in log1  # the bulk path carried it all
    assert "expired KV lease" not in log_of(cluster, "node0")  # every lease was released


def test_dead_holder_costs_a_recompute_with_the_same_tokens(cluster, nodes):
    (src_addr, src), (_, dst) = nodes["node0"], nodes["node1"]
    prompt = [(i * 29 + 5) % 250 + 4 for i in range(900)]
    want, _ = submit(src, "d0", prompt)
    cluster.nodes[0].send_signal(signal.SIGKILL)
    assert cluster.nodes[0].wait(10) == -signal.SIGKILL
    blocks = HASH(prompt)[: (len(prompt) - 1) // 32]
    t0 = time.monotonic()
    got, done = submit(dst, "d1", prompt, node_pb2.PullPlan(source_address=src_addr, source_name="node0",
                                                           hashes=blocks))
    assert got == want and done.cached_tokens.remote == 0 and done.prompt_tokens == len(prompt)
    assert time.monotonic() - t0 < 30
