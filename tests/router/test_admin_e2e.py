"""The Admin API end to end: a router with an admin token and a state file, two real nodes
(vLLM engines, tiny model) with small DRAM tiers (32 blocks each), on loopback.

Pins protect a prefix from eviction pressure that evicts an unpinned one; unpinning releases
it; two replicas land on two nodes; pins survive a router restart; calls without the token
change nothing; `explain` shows the decision the router took; `--json` output has the
documented shape.
"""

from __future__ import annotations

import json
import random
import time

import grpc
import pytest
from ports import free_port

from preble_tiered.cli import main as cli
from preble_tiered.hashing import BlockHasher
from preble_tiered.api.auth import bearer
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster
from preble_tiered.api.pb import (admin_pb2, admin_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc,
                                     node_pb2, node_pb2_grpc)

pytestmark = pytest.mark.slow

TOKEN = "e2e-admin-token-0123456789"
AUTH = bearer(TOKEN)
HASH = BlockHasher(32)
DRAM_BYTES = 8 << 20  # 32 blocks of the tiny model (256 KiB each)


def doc(seed: int, blocks: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 250) for _ in range(blocks * 32 + 1)]


def until(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    d = tmp_path_factory.mktemp("admin")
    (d / "token").write_text(TOKEN + "\n")
    spec = ClusterSpec(nodes=2, model=str(ensure_tiny_model()), port=free_port(), kv_cache_bytes=64 << 20,
                       max_model_len=4096, dram_bytes=DRAM_BYTES, log_dir=str(d / "logs"),
                       state_path=str(d / "state.json"), router_args=("--admin-token-file", str(d / "token")))
    c = LocalCluster(spec).start(progress=lambda m: None)
    c.token_file = str(d / "token")
    c.state_file = d / "state.json"
    yield c
    c.stop()


@pytest.fixture()
def admin(cluster):
    with grpc.insecure_channel(cluster.addr) as ch:
        yield admin_pb2_grpc.AdminStub(ch)


def call(stub, method, req, **kw):
    return getattr(stub, method)(req, metadata=AUTH, timeout=60, **kw)


def node_stubs(admin):
    nodes = call(admin, "ListNodes", admin_pb2.ListNodesRequest()).nodes
    return {n.node_id: node_pb2_grpc.NodeStub(grpc.insecure_channel(n.address)) for n in nodes}


def dram_blocks(admin, node: int) -> set[int]:
    return set(call(admin, "GetNodeResidency", admin_pb2.NodeResidencyRequest(node_id=node,
                                                                             tier=common_pb2.TIER_DRAM)).hashes)


def name(admin, n: str, ids: list[int]) -> admin_pb2.PrefixInfo:
    return call(admin, "NamePrefix", admin_pb2.NamePrefixRequest(name=n, token_ids=common_pb2.TokenIds(ids=ids)))


def replicas(admin, n: str) -> list[admin_pb2.PinReplica]:
    return list(call(admin, "ShowPrefix", admin_pb2.PrefixRef(key=n)).pin.nodes)


def all_pinned(admin, n: str, count: int):
    reps = replicas(admin, n)
    return reps if len(reps) == count and all(r.state == "pinned" for r in reps) else None


def flood(stub, seeds) -> None:
    for s in seeds:
        req = node_pb2.SubmitRequest(request_id=f"flood-{s}", prompt_token_ids=doc(s, 8),
                                     sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.0))
        for _ in stub.Submit(req, timeout=120):
            pass


# ---------------------------------------------------------------------- security
def test_calls_without_the_token_are_refused_and_change_nothing(cluster, admin):
    ids = doc(1, 2)
    for md in ((), bearer("not-the-token-but-long-enough")):
        for method, req in (("NamePrefix", admin_pb2.NamePrefixRequest(name="evil", token_ids=common_pb2.TokenIds(ids=ids))),
                            ("PinPrefix", admin_pb2.PinPrefixRequest(name="evil")),
                            ("ListPrefixes", admin_pb2.ListPrefixesRequest())):
            with pytest.raises(grpc.RpcError) as e:
                getattr(admin, method)(req, metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = call(admin, "ListPrefixes", admin_pb2.ListPrefixesRequest(named_only=True))
    assert [p.name for p in listed.prefixes] == []
    assert not cluster.state_file.exists() or "evil" not in cluster.state_file.read_text()


@pytest.mark.parametrize("req,code,fix", [
    (admin_pb2.NamePrefixRequest(name="bad name", text="x" * 400), "INVALID_ARGUMENT", "letters, digits"),
    (admin_pb2.NamePrefixRequest(name="short", token_ids=common_pb2.TokenIds(ids=[5, 6])), "INVALID_ARGUMENT",
     "fewer than one KV block"),
    (admin_pb2.NamePrefixRequest(name="oov", token_ids=common_pb2.TokenIds(ids=[10**7] * 40)), "INVALID_ARGUMENT",
     "vocabulary"),
    (admin_pb2.PinPrefixRequest(name="nobody"), "NOT_FOUND", "name it first"),
    (admin_pb2.PrefixRef(key="nobody"), "NOT_FOUND", "prefixes ls"),
    (admin_pb2.ExplainRequest(request_id="never-sent"), "NOT_FOUND", "keeps the last"),
])
def test_bad_admin_input_gets_a_clear_status(admin, req, code, fix):
    method = {admin_pb2.NamePrefixRequest: "NamePrefix", admin_pb2.PinPrefixRequest: "PinPrefix",
              admin_pb2.PrefixRef: "ShowPrefix", admin_pb2.ExplainRequest: "Explain"}[type(req)]
    with pytest.raises(grpc.RpcError) as e:
        call(admin, method, req)
    assert e.value.code().name == code and fix in e.value.details()


def test_pin_bounds_and_evicting_a_pinned_prefix_are_refused(admin):
    name(admin, "bounds", doc(2, 2))
    for req, fix in ((admin_pb2.PinPrefixRequest(name="bounds", replicas=65), "replicas"),
                     (admin_pb2.PinPrefixRequest(name="bounds", ttl_s=-1), "ttl")):
        with pytest.raises(grpc.RpcError) as e:
            call(admin, "PinPrefix", req)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fix in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        call(admin, "EvictPrefix", admin_pb2.EvictPrefixRequest(key="bounds", tier=common_pb2.TIER_HBM))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---------------------------------------------------------------------- explain
def test_explain_matches_the_decision_actually_taken(cluster, admin):
    prompt = doc(3, 6)
    with grpc.insecure_channel(cluster.addr) as ch:
        inf = inference_pb2_grpc.InferenceStub(ch)
        usages = []
        for rid in ("ex-1", "ex-2"):
            req = inference_pb2.GenerateRequest(request_id=rid, token_ids=common_pb2.TokenIds(ids=prompt),
                                                sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0))
            usages.append(inf.GenerateOnce(req, timeout=120).usage)
            time.sleep(0.5)  # let the residency events of the first reach the router
    for rid, u in zip(("ex-1", "ex-2"), usages):
        rec = call(admin, "Explain", admin_pb2.ExplainRequest(request_id=rid))
        assert (rec.node, rec.branch, rec.state, rec.prompt_tokens) == (u.node, u.branch, "done", len(prompt))
        assert rec.predicted_cached_tokens == u.predicted_cached_tokens
        assert rec.actual_cached_tokens == u.cached_tokens
        assert rec.ttft_ms > 0 and rec.candidates and rec.node_id in {c.node_id for c in rec.candidates}
        planned = {s.action: s.tokens for s in rec.plan}
        assert sum(planned.values()) == len(prompt)
    second = call(admin, "Explain", admin_pb2.ExplainRequest(request_id="ex-2"))
    assert second.branch == "exploit" and second.actual_cached_tokens.hbm > 0
    assert {s.action: s.tokens for s in second.plan}["in_place"] == second.predicted_cached_tokens.hbm


# ---------------------------------------------------------------------- pins
def test_pinned_prefix_survives_eviction_pressure_and_unpin_releases_it(admin):
    keep, drop = doc(10, 4), doc(11, 4)
    keep_h, drop_h = set(HASH(keep)), set(HASH(drop))
    name(admin, "keep", keep)
    name(admin, "drop", drop)
    call(admin, "PinPrefix", admin_pb2.PinPrefixRequest(name="keep", tier=common_pb2.TIER_DRAM))
    node = until(lambda: all_pinned(admin, "keep", 1), what="keep pinned")[0].node_id
    call(admin, "WarmPrefix", admin_pb2.WarmPrefixRequest(key="drop", node_ids=[node]))
    until(lambda: keep_h | drop_h <= dram_blocks(admin, node), what="both prefixes in DRAM")
    stub = node_stubs(admin)[node]
    flood(stub, range(100, 106))  # 48 new blocks through a 32-block DRAM tier
    held = until(lambda: (lambda h: h if not drop_h <= h else None)(dram_blocks(admin, node)), 30,
                 "the unpinned prefix to be evicted")
    assert keep_h <= held  # the pinned one stayed
    assert stub.Load(node_pb2.LoadRequest(), timeout=10).tiers[0].pinned_blocks >= len(keep_h)
    call(admin, "UnpinPrefix", admin_pb2.PrefixRef(key="keep"))
    until(lambda: all(n.pinned_prefixes == 0 for n in call(admin, "ListNodes", admin_pb2.ListNodesRequest()).nodes
                      if n.node_id == node), what="the node to release the pin")
    flood(stub, range(200, 206))
    until(lambda: not keep_h <= dram_blocks(admin, node), 30, "the released prefix to be evicted")


def test_a_pin_with_two_replicas_ends_up_on_two_nodes(admin):
    dup = doc(20, 3)
    name(admin, "dup", dup)
    info = call(admin, "PinPrefix", admin_pb2.PinPrefixRequest(name="dup", replicas=2))
    assert info.replicas == 2
    reps = until(lambda: all_pinned(admin, "dup", 2), what="two pinned replicas")
    assert {r.node_id for r in reps} == {0, 1}
    for r in reps:
        assert set(HASH(dup)) <= dram_blocks(admin, r.node_id)


def test_pins_survive_a_router_restart(cluster, admin):
    call(admin, "PinPrefix", admin_pb2.PinPrefixRequest(name="dup", replicas=2))  # idempotent if already there
    cluster.restart_router()
    with grpc.insecure_channel(cluster.addr) as ch:
        fresh = admin_pb2_grpc.AdminStub(ch)
        listed = call(fresh, "ListPrefixes", admin_pb2.ListPrefixesRequest(named_only=True))
        pinned = {p.name for p in listed.prefixes if p.pinned}
        assert "dup" in pinned and "keep" not in pinned
        assert {p.name for p in listed.prefixes} >= {"keep", "drop", "dup"}
        reps = until(lambda: all_pinned(fresh, "dup", 2), what="the pins re-acknowledged after the restart")
        assert {r.node_id for r in reps} == {0, 1}


def test_a_pin_is_released_at_its_ttl(admin):
    name(admin, "brief", doc(30, 2))
    info = call(admin, "PinPrefix", admin_pb2.PinPrefixRequest(name="brief", ttl_s=2.0))
    assert info.expires_unix > time.time()
    until(lambda: not call(admin, "ShowPrefix", admin_pb2.PrefixRef(key="brief")).prefix.pinned, 20,
          "the ttl to release the pin")


# ---------------------------------------------------------------------- CLI --json
def run_cli(cluster, capsys, *args) -> object:
    rc = cli.main(["admin", "--addr", cluster.addr, "--admin-token-file", cluster.token_file, "--json", *args])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


SCHEMAS = {
    ("nodes",): {"nodes": [{"node_id": int, "name": str, "alive": bool, "hbm_blocks": str, "dram_blocks": str,
                            "pinned_prefixes": int, "tiers": list}]},
    ("stats",): {"policy": str, "requests_total": str, "branch_counts": dict, "cached_tokens_total": dict},
    ("prefixes", "ls"): {"prefixes": [{"name": str, "hash": str, "hash_hex": str, "tokens": int, "where": list,
                                        "demand": float, "pinned": bool}], "total": int},
    ("prefixes", "show", "dup"): {"prefix": {"name": str, "hash_hex": str, "where": [{"node": str, "tier": str,
                                                                                      "blocks": int, "bytes": str}]},
                                  "pin": {"replicas": int, "nodes": [{"state": str, "blocks_held": int}]}},
    ("explain", "json-ex"): {"request_id": str, "branch": str, "node": str, "candidates": [{"load_s": float,
                                                                                       "total_s": float}],
                          "plan": [{"action": str, "tokens": int}], "predicted_cached_tokens": dict,
                          "actual_cached_tokens": dict, "state": str},
}


def conforms(value, schema, path="$") -> None:
    if isinstance(schema, dict):
        assert isinstance(value, dict), path
        for k, sub in schema.items():
            assert k in value, f"{path}.{k} missing"
            conforms(value[k], sub, f"{path}.{k}")
    elif isinstance(schema, list):
        assert isinstance(value, list) and value, f"{path}: expected a non-empty list"
        for i, item in enumerate(value):
            conforms(item, schema[0], f"{path}[{i}]")
    elif schema is float:
        assert isinstance(value, (int, float)), path
    else:
        assert isinstance(value, schema), f"{path}: {type(value).__name__} is not {schema.__name__}"


@pytest.mark.parametrize("args", list(SCHEMAS), ids=lambda a: " ".join(a))
def test_json_output_has_the_documented_shape(cluster, capsys, args):
    if args[0] == "explain":  # the decision ring is in memory: a restart above emptied it
        with grpc.insecure_channel(cluster.addr) as ch:
            inference_pb2_grpc.InferenceStub(ch).GenerateOnce(inference_pb2.GenerateRequest(
                request_id="json-ex", token_ids=common_pb2.TokenIds(ids=doc(40, 2)),
                sampling=common_pb2.SamplingParams(max_tokens=2)), timeout=120)
    conforms(run_cli(cluster, capsys, *args), SCHEMAS[args])


def test_cli_without_a_token_fails_with_the_status(cluster, capsys, monkeypatch):
    monkeypatch.delenv("PREBLE_ADMIN_TOKEN", raising=False)
    assert cli.main(["admin", "--addr", cluster.addr, "nodes"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


# ------------------------------------------------------------------ cluster profiles
def test_calibrate_writes_a_profile_of_this_cluster_that_preble_sim_runs_on(cluster, admin, tmp_path, capsys):
    call(admin, "GetProfile", admin_pb2.ProfileRequest(reset=True))
    with pytest.raises(grpc.RpcError) as e:  # nothing measured since the reset
        call(admin, "GetProfile", admin_pb2.ProfileRequest())
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "too few prefill" in e.value.details()
    out = tmp_path / "profile.json"
    rc = cli.main(["calibrate", "--addr", cluster.addr, "-o", str(out), "--name", "e2e", "--admin-token-file",
                   cluster.token_file, "--prompt-sizes", "64", "256", "512", "--cached-contexts", "0", "512",
                   "--batch-sizes", "1", "4", "--decode-prompts", "64", "512", "--decode-tokens", "16",
                   "--repeats", "2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    prof = json.loads(out.read_text())
    assert prof["name"] == "e2e" and prof["nodes"] == 2
    # the profile held every measurement of the sweep: none came in after it was fitted
    later = call(admin, "GetProfile", admin_pb2.ProfileRequest())
    assert (later.prefill_samples, later.decode_steps) == (prof["coverage"]["prefill_samples"],
                                                           prof["coverage"]["decode_steps"])
    nodes = call(admin, "ListNodes", admin_pb2.ListNodesRequest()).nodes
    assert prof["engine"]["hbm_tokens"] == min(n.kv_capacity_tokens for n in nodes)
    assert prof["engine"]["max_num_seqs"] == 16 and prof["engine"]["max_batch_tokens"] > 0
    assert prof["engine"]["dram_tokens"] == DRAM_BYTES // prof["kv_bytes_per_token"]
    assert prof["coverage"]["prefill_new_tokens"][1] >= 512 and prof["coverage"]["decode_batch"][1] >= 2
    assert prof["decode"]["a"] > 0 and prof["request_overhead_s"] > prof["client_overhead_s"] > 0
    # the overhead is the median over requests that met nothing else in the engine: the prefills, sent one
    # at a time, among them
    assert prof["coverage"]["overhead_samples"] >= 12
    n = prof["coverage"]["overhead_samples"]
    said = capsys.readouterr().out
    assert f"the median of {n} requests that met nothing else in the engine" in said
    # the prefill is fitted with causal attention, and says so
    assert prof["prefill"]["causal"] is True and "*new*(context-(new-1)/2)" in said
    # both nodes run on this host: the last phase measured prefills beside a decode stream
    assert prof["host_nodes"] == 2 and 0.0 <= prof["host_prefill_slowdown"] < 1.0
    assert prof["coverage"]["host_samples"] > 0 and "host: 2 nodes share one host's cores" in said
    # its prefills (up to 1,536 tokens) ran before the reset: none entered the fit (the sweep's largest
    # is a 512-token context with 64 more)
    assert prof["coverage"]["prefill_new_tokens"][1] < 1024
    # the router fitted its own decode model from the same steps (e2_tiered's decode rule runs on it)
    assert "decode fitted" in call(admin, "ClusterStats", admin_pb2.ClusterStatsRequest()).cost_model
    # `preble admin profile` fits the same measurements; `preble sim` runs on either.
    assert cli.main(["admin", "--addr", cluster.addr, "--admin-token-file", cluster.token_file, "profile",
                     "-o", str(tmp_path / "admin.json")]) == 0
    assert json.loads((tmp_path / "admin.json").read_text())["engine"] == prof["engine"]
    capsys.readouterr()
    res = tmp_path / "sim.json"
    assert cli.main(["sim", "--profile", str(out), "--workload", "toolbench", "--nodes", "2", "--requests", "20",
                     "--rps", "1", "--quiet", "--json", str(res)]) == 0
    assert "profile=" in capsys.readouterr().out
    doc_ = json.loads(res.read_text())
    assert doc_["profile"]["name"] == "e2e" and doc_["runs"][0]["requests"] == 20
