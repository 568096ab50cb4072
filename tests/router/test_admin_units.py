"""Admin building blocks on their own: the persisted state file, the decision ring, token
loading, and the auth interceptor on a real gRPC server (node-side pins and eviction are
tested with the node's KV runtime, tests/node/test_kv_runtime.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from preble_tiered.scheduler.pins import NamedPrefix, PinSpec
from preble_tiered.scheduler.types import Branch, Decision, Plan
from preble_tiered.router.admin_state import AdminState, check_name
from preble_tiered.api.auth import TokenAuth, bearer, load_token
from preble_tiered.router.decisions import DecisionRing
from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc
from preble_tiered.types import Tier

# ---------------------------------------------------------------- persisted state
def test_state_round_trips(tmp_path):
    path = tmp_path / "state.json"
    st = AdminState(path)
    st.prefixes["sys"] = NamedPrefix("sys", (1, 2, 3), (0xDEADBEEF, 0xFFFFFFFFFFFFFFFF), 5.0)
    st.pins["sys"] = PinSpec("sys", Tier.DISK, 2, 5.0, 99.0)
    st.save()
    st.remember("node0", 1)
    st.remember("node1", 1)  # the id moved to another name: the old name lets go of it
    again = AdminState(path)
    assert again.prefixes == st.prefixes and again.pins == st.pins and again.node_ids == {"node1": 1}


@pytest.mark.parametrize("content", ["{not json", "my notes\n", '["a list"]', '{"version": 99}',
                                     '{"version": 1, "prefixes": [{"name": "x"}], "pins": []}'])
def test_a_file_that_is_not_a_state_file_is_refused_and_left_as_it_is(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"notes.txt is not a preble admin state file .*--state"):
        AdminState(path)
    assert path.read_text() == content and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_directory_is_refused_and_left_where_it_is(tmp_path):
    (tmp_path / "keep").write_text("x")
    with pytest.raises(ValueError, match="is not a regular file"):
        AdminState(tmp_path)
    assert tmp_path.is_dir() and (tmp_path / "keep").read_text() == "x"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="bad prefix name"):
        check_name(name)


# ---------------------------------------------------------------- decision ring
def decision(rid: str) -> Decision:
    return Decision(rid, 0, Plan(0, ()), Branch.EXPLORE)


def test_ring_keeps_the_last_requests_and_prompts_within_budget():
    ring = DecisionRing(capacity=3, token_budget=1000)
    for i in range(6):
        ring.record(f"r{i}", float(i), decision(f"r{i}"), [i] * 4, {})
    assert len(ring) == 6  # trimming is housekeeping, off the decision path ...
    ring.record("r6", 6.0, decision("r6"), [6] * 4, {})
    assert len(ring) == 3  # ... unless it falls behind by twice the bound
    assert [r for r in ("r3", "r4", "r5", "r6") if ring.get(r)] == ["r4", "r5", "r6"]

    ring = DecisionRing(capacity=3, token_budget=10)
    for i in range(3):
        ring.record(f"r{i}", float(i), decision(f"r{i}"), [i] * 4, {})
    ring.trim()
    kept = [r for r in ("r0", "r1", "r2") if ring.get(r).prompt is not None]
    assert kept == ["r1", "r2"]  # 8 tokens fit in 10; the oldest prompt went first
    rec = ring.record("r2", 9.0, decision("r2"), [1], {})  # a re-route: same record, next attempt
    assert rec.attempt == 1 and len(ring) == 3
    ring.finish(rec, "done")
    assert rec.state == "done" and list(rec.prompt) == [1] and not isinstance(rec.prompt, list)


# ---------------------------------------------------------------- tokens
def test_token_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("PREBLE_TEST_TOKEN", raising=False)
    assert load_token("PREBLE_TEST_TOKEN", None) is None
    monkeypatch.setenv("PREBLE_TEST_TOKEN", "short")
    with pytest.raises(ValueError, match="16 to"):
        load_token("PREBLE_TEST_TOKEN", None)
    f = tmp_path / "tok"
    f.write_text("  " + "a" * 32 + "  \n")
    assert load_token("PREBLE_TEST_TOKEN", str(f)) == "a" * 32  # the file wins over the variable
    with pytest.raises(ValueError, match="cannot read"):
        load_token("PREBLE_TEST_TOKEN", str(tmp_path / "missing"))


class _CountingAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def ClusterStats(self, request, context):
        self.calls += 1
        return admin_pb2.ClusterStatsResponse(policy="p")


def test_interceptor_refuses_without_the_token_and_the_handler_never_runs():
    token = "t" * 32

    async def body():
        svc = _CountingAdmin()
        server = grpc.aio.server(interceptors=[TokenAuth({"/preble.v1.Admin/": token})])
        admin_pb2_grpc.add_AdminServicer_to_server(svc, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                codes = []
                for md in ((), bearer("x" * 32), (("authorization", token),)):
                    try:
                        await stub.ClusterStats(admin_pb2.ClusterStatsRequest(), metadata=md)
                    except grpc.aio.AioRpcError as e:
                        codes.append((e.code(), e.details()))
                assert [c for c, _ in codes] == [grpc.StatusCode.UNAUTHENTICATED] * 3
                assert "missing" in codes[0][1] and "wrong" in codes[1][1]
                assert "admin token (--admin-token-file FILE, or the PREBLE_ADMIN_TOKEN variable)" in codes[0][1]
                assert svc.calls == 0
                ok = await stub.ClusterStats(admin_pb2.ClusterStatsRequest(), metadata=bearer(token))
                assert ok.policy == "p" and svc.calls == 1
        finally:
            await server.stop(0)

    asyncio.run(body())
