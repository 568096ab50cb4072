"""End to end on loopback: a router and two node agents with real vLLM engines (tiny model).

One cluster serves the whole module (engines take ~15 s to start); the node-kill test runs
last among the cluster tests because it takes a node away. Every node drops its third
residency batch (fault injection) so the router's gap detection and snapshot resync run
for real.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ports import free_port

from preble_tiered.cli.launcher import ClusterSpec, LocalCluster, cache_dir
from preble_tiered.node.agent import FAULT_DROP_EVENT_SEQ
from preble_tiered.api.pb import (admin_pb2, admin_pb2_grpc, common_pb2, inference_pb2, inference_pb2_grpc,
                                     node_pb2, node_pb2_grpc)

pytestmark = pytest.mark.slow

DOC = ("The committee met on a grey morning to discuss the harbour, the new lighthouse and the budget. " * 20)[:1600]


@pytest.fixture(scope="module")
def model_dir():
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model())


@pytest.fixture(scope="module")
def cluster(model_dir, tmp_path_factory):
    metrics_port = free_port()
    spec = ClusterSpec(nodes=2, model=model_dir, port=free_port(), kv_cache_bytes=64 << 20, max_model_len=4096,
                       log_dir=str(tmp_path_factory.mktemp("logs")), node_env={FAULT_DROP_EVENT_SEQ: "3"},
                       state_path=str(tmp_path_factory.mktemp("state") / "router.json"),
                       router_args=("--metrics-port", str(metrics_port)))
    started_at = time.time()
    c = LocalCluster(spec).start(progress=lambda m: None)
    c.metrics_port, c.started_at = metrics_port, started_at
    yield c
    c.stop()


@pytest.fixture(scope="module")
def stubs(cluster):
    ch = grpc.insecure_channel(cluster.addr)
    yield inference_pb2_grpc.InferenceStub(ch), admin_pb2_grpc.AdminStub(ch)
    ch.close()


def text_req(text: str, max_tokens: int = 4, rid: str = "") -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(text=text, request_id=rid, sampling=common_pb2.SamplingParams(
        max_tokens=max_tokens, temperature=0.0))


def nodes(admin) -> list[admin_pb2.NodeStatus]:
    return list(admin.ListNodes(admin_pb2.ListNodesRequest()).nodes)


def test_router_and_nodes_report_serving_and_reflect_their_services(cluster, stubs):
    _, admin = stubs
    for addr in [cluster.addr] + [n.address for n in nodes(admin)]:
        with grpc.insecure_channel(addr) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(cluster.addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
    assert {"preble.v1.Inference", "preble.v1.Admin", "grpc.health.v1.Health"} <= names


def test_router_keeps_its_state_where_the_cluster_spec_says_and_nothing_in_the_cache_dir(cluster):
    port = cluster.addr.rsplit(":", 1)[1]
    default = cache_dir() / f"router-{port}-state.json"  # a file from an older run on this port may be there
    assert not default.exists() or default.stat().st_mtime < cluster.started_at
    deadline = time.monotonic() + 10
    path = Path(cluster.spec.state_path)
    while not path.exists() and time.monotonic() < deadline:  # written once the nodes have registered
        time.sleep(0.1)
    assert set(json.loads(path.read_text())["nodes"]) == {"node0", "node1"}


def test_second_question_on_a_document_goes_to_its_node_and_reuses_its_cache(stubs):
    inference, _ = stubs
    first = inference.GenerateOnce(text_req(DOC + " Question one: who met?"), timeout=120).usage
    second = inference.GenerateOnce(text_req(DOC + " Question two: what about the budget?"), timeout=120).usage
    assert second.node == first.node
    assert first.cached_tokens.hbm < 64  # cold (at most a block shared with earlier tests)
    # vLLM reused every full block of the shared document: its real num_cached_tokens
    assert second.cached_tokens.hbm >= (len(DOC) // 32 - 1) * 32
    assert second.recomputed_tokens == second.prompt_tokens - second.cached_tokens.hbm
    assert second.branch == "exploit"
    assert second.ttft_ms < first.ttft_ms
    for u in (first, second):  # the node's part of the TTFT: less than the router's, which holds it;
        assert 0 < u.engine_ttft_ms < u.node_ttft_ms < u.ttft_ms  # the engine's (each met nothing else there), less again


def test_router_index_equals_what_the_engines_hold_after_a_lost_batch(cluster, stubs):
    inference, admin = stubs
    for i in range(6):  # enough batches on both nodes to pass the dropped one (seq 3)
        inference.GenerateOnce(text_req(f"document {i}: " + DOC[: 300 + 97 * i]), timeout=120)
    deadline = time.monotonic() + 10
    while True:
        mismatched = []
        for n in nodes(admin):
            with grpc.insecure_channel(n.address) as ch:
                snap = node_pb2_grpc.NodeStub(ch).Snapshot(node_pb2.SnapshotRequest(), timeout=10)
            engine = sorted(b.hash for b in snap.blocks)
            router = list(admin.GetNodeResidency(admin_pb2.NodeResidencyRequest(node_id=n.node_id)).hashes)
            if engine != router or not engine:
                mismatched.append(n.name)
        if not mismatched:
            break
        assert time.monotonic() < deadline, f"router index differs from the engines on {mismatched}"
        time.sleep(0.2)
    assert all(n.resyncs >= 1 for n in nodes(admin) if n.event_seq >= 3)
    assert any(n.event_seq >= 3 for n in nodes(admin))


@pytest.mark.parametrize("req, fix", [
    (inference_pb2.GenerateRequest(text=""), "prompt is empty"),
    (inference_pb2.GenerateRequest(token_ids=common_pb2.TokenIds(ids=[5, 100000])), "out of the vocabulary"),
    (inference_pb2.GenerateRequest(token_ids=common_pb2.TokenIds(ids=[5] * 4090)), "exceeds the model's limit"),
    (text_req("hello", max_tokens=0), "max_tokens must be at least 1"),
    (inference_pb2.GenerateRequest(text="hi", sampling=common_pb2.SamplingParams(temperature=-1)), "temperature"),
    (inference_pb2.GenerateRequest(text="hi", sampling=common_pb2.SamplingParams(top_p=2)), "top_p"),
])
def test_bad_input_is_invalid_argument_and_harms_nothing(stubs, req, fix):
    inference, admin = stubs
    with pytest.raises(grpc.RpcError) as ei:
        inference.GenerateOnce(req, timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fix in ei.value.details()
    assert all(n.alive for n in nodes(admin))
    assert inference.GenerateOnce(text_req("still fine?"), timeout=60).usage.completion_tokens == 4


def test_generate_json_prints_the_usage_schema(cluster):
    r = subprocess.run([sys.executable, "-m", "preble_tiered.cli", "generate", "--addr", cluster.addr, "--json",
                        "--max-tokens", "3", "Hello there"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"text", "node", "prompt_tokens", "cached_tokens", "ttft_ms", "latency_ms"} <= set(out)
    assert set(out["cached_tokens"]) == {"hbm", "dram", "disk", "remote"}
    assert out["prompt_tokens"] == len("Hello there".encode()) and out["node"].startswith("node")
    assert isinstance(out["text"], str) and 0 < out["ttft_ms"] <= out["latency_ms"]


def test_router_exports_prometheus_metrics(cluster):
    body = urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=5).read().decode()
    ok = [ln for ln in body.splitlines() if ln.startswith('preble_router_requests_total{status="ok"}')]
    assert ok and float(ok[0].split()[-1]) >= 3
    assert 'preble_router_routing_decisions_total{branch="exploit"}' in body
    assert "preble_router_ttft_seconds_bucket" in body and 'preble_router_cached_tokens_total{tier="hbm"}' in body


def test_bench_drives_the_cluster_and_writes_the_sim_json_shape(cluster, tmp_path):
    trace = tmp_path / "t.jsonl"
    lines = [{"t": 0.05 * i, "segments": [["shared-doc", 400], [f"q{i}", 20]], "output_tokens": 3} for i in range(6)]
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "preble_tiered.cli", "bench", "--addr", cluster.addr, "--trace",
                        str(trace), "--json", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert {"latency", "ttft", "tpot", "throughput_rps", "cached_tokens", "recomputed_tokens"} <= set(run)
    assert set(run["ttft"]) == {"mean", "p50", "p90", "p99"} and run["requests"] == 6 and run["failed"] == 0
    # the shared 400-token document is computed once per node at most: the rest is cached
    assert run["cached_tokens"]["hbm"] >= 3 * 384
    assert run["prompt_tokens"] == 6 * 420
    assert run["policy"] == "e2_tiered"


def test_router_calibrated_its_prefill_model_from_the_nodes_measurements(stubs):
    _, admin = stubs
    st = admin.ClusterStats(admin_pb2.ClusterStatsRequest())
    assert st.cost_model.startswith("fitted"), st.cost_model
    assert "per chunk of 2048 tokens" in st.cost_model  # the engines' step budget, from their registration


def test_node_serve_stream_batches_per_step_and_fails_requests_one_by_one(stubs):
    """The router's door to a node: many requests on one Serve stream. Outputs of one engine
    step travel in one batch; a bad or duplicate request fails alone with the status Submit
    would end with; a cancelled request stops and sends nothing more."""
    import queue

    _, admin = stubs
    addr = nodes(admin)[0].address
    sampling = common_pb2.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    prompt = [ord(c) + 4 for c in DOC[:300]]
    out: queue.Queue = queue.Queue()

    def requests():
        while (r := out.get()) is not None:
            yield r

    def submit(rid, ids=prompt, params=sampling):
        out.put(node_pb2.ServeRequest(submit=node_pb2.SubmitRequest(request_id=rid, prompt_token_ids=ids,
                                                                   sampling=params)))

    with grpc.insecure_channel(addr) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        reference = [t for r in stub.Submit(node_pb2.SubmitRequest(request_id="serve-ref", prompt_token_ids=prompt,
                                                                   sampling=sampling), timeout=60)
                     if r.WhichOneof("kind") == "chunk" for t in r.chunk.token_ids]
        for i in range(3):
            submit(f"serve-{i}")
        submit("serve-0")  # already running
        submit("serve-bad", ids=[5, 99999])
        long = common_pb2.SamplingParams(max_tokens=2000, temperature=0.0, ignore_eos=True)
        submit("serve-cancel", params=long)
        tokens: dict[str, list[int]] = {}
        ends: dict[str, object] = {}
        mixed = False
        cancelled_after = None
        call = stub.Serve(requests(), timeout=120)
        for batch in call:
            # One batch per engine step, or fewer: steps the loop could not send apart leave together.
            chunk_rids = [it.request_id for it in batch.items if it.WhichOneof("kind") == "chunk"]
            mixed |= len({r for r in chunk_rids if r.startswith("serve-") and r[-1].isdigit()}) > 1
            for it in batch.items:
                kind = it.WhichOneof("kind")
                if kind == "chunk":
                    tokens.setdefault(it.request_id, []).extend(it.chunk.token_ids)
                else:
                    ends.setdefault(it.request_id, []).append(it)
            if "serve-cancel" in tokens and cancelled_after is None:
                cancelled_after = len(tokens["serve-cancel"])
                out.put(node_pb2.ServeRequest(cancel="serve-cancel"))
            if all(f"serve-{i}" in ends for i in range(3)) and "serve-bad" in ends and cancelled_after:
                break
        out.put(None)
        call.cancel()
    for i in range(3):
        assert tokens[f"serve-{i}"] == reference
        assert ends[f"serve-{i}"][-1].done.completion_tokens == 12
    assert mixed, "requests running together should share batches"
    dup = [e for e in ends["serve-0"] if e.WhichOneof("kind") == "error"]
    assert dup and dup[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    bad = ends["serve-bad"][0]
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "vocabulary" in bad.error.message
    assert "serve-cancel" not in ends and len(tokens["serve-cancel"]) < 2000


def test_killed_node_is_marked_down_fast_and_no_request_is_lost(cluster, stubs):
    inference, admin = stubs
    victim = cluster.nodes[0]
    results: dict[int, object] = {}

    def send(i: int) -> None:
        try:
            results[i] = inference.GenerateOnce(text_req(f"request {i} " + DOC[: 200 + 50 * i], max_tokens=48),
                                                timeout=300).usage
        except grpc.RpcError as e:
            results[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not any(n.inflight for n in nodes(admin) if n.name == "node0"):
        assert time.monotonic() < deadline, "node0 never got work"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while any(n.alive for n in nodes(admin) if n.name == "node0"):
        time.sleep(0.05)
    down_after = time.monotonic() - killed_at
    for t in threads:
        t.join(300)
    assert down_after < 2.0, f"node0 marked down after {down_after:.2f} s"
    failed = {i: r for i, r in results.items() if isinstance(r, grpc.RpcError)}
    assert not failed, f"requests lost: {failed}"
    assert len(results) == 8 and all(u.node == "node1" or u.reroutes == 0 for u in results.values())
    assert all(u.completion_tokens == 48 for u in results.values())
    rerouted = admin.ClusterStats(admin_pb2.ClusterStatsRequest()).requests_rerouted
    assert rerouted >= 1
    victim_id = next(n.node_id for n in nodes(admin) if n.name == "node0")  # ids follow registration order
    assert list(admin.GetNodeResidency(admin_pb2.NodeResidencyRequest(node_id=victim_id)).hashes) == []


def test_stop_leaves_no_process_behind(cluster):
    pids = cluster.pids()
    cluster.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_node_is_not_serving_until_its_engine_is_ready_and_stops_on_sigterm(model_dir, tmp_path):
    port, metrics_port = free_port(), free_port()
    log = open(tmp_path / "node.log", "wb")
    p = subprocess.Popen([sys.executable, "-m", "preble_tiered.cli", "node", "--model", model_dir, "--port",
                          str(port), "--name", "lonely", "--kv-cache-bytes", str(64 << 20), "--max-model-len", "4096",
                          "--metrics-port", str(metrics_port)], stdout=log,
                         stderr=subprocess.STDOUT, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    seen = []
    try:
        deadline = time.monotonic() + 180
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline and (not seen or seen[-1] != "SERVING"):
                assert p.poll() is None, (tmp_path / "node.log").read_text()
                try:
                    st = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    name = health_pb2.HealthCheckResponse.ServingStatus.Name(st)
                    if not seen or seen[-1] != name:
                        seen.append(name)
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        assert seen == ["NOT_SERVING", "SERVING"], seen
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "preble_node_queue_depth" in body and "preble_node_ttft_seconds_bucket" in body
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
        log.close()
    assert rc == 0, (tmp_path / "node.log").read_text()[-2000:]


def _start_serve(model_dir, port, tmp_path, *extra):
    http_port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "preble_tiered.cli", "serve", "--nodes", "1", "--model", model_dir,
                          "--port", str(port), "--http-port", str(http_port), "--kv-cache-bytes", str(64 << 20), "--max-model-len", "4096",
                          "--log-dir", str(tmp_path / "logs"), "--state", str(tmp_path / "state.json"), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         # Ctrl-C reaches it as it would in a terminal, even when this test process
                         # was started with SIGINT ignored (a shell's background job)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert any(ln.split() == ["gRPC", f"127.0.0.1:{port}"] for ln in lines), "".join(lines)
        assert any(ln.split() == ["OpenAI", f"http://127.0.0.1:{http_port}/v1"] for ln in lines), "".join(lines)
    except BaseException:
        p.send_signal(signal.SIGINT)  # stops its router and nodes
        p.wait(60)
        raise
    return p, lines


def _children_of_port(port) -> str:
    nodes = subprocess.run(["pgrep", "-f", f"--router 127.0.0.1:{port}"], capture_output=True, text=True).stdout
    router = subprocess.run(["pgrep", "-f", f"router --host 127.0.0.1 --port {port}"], capture_output=True,
                            text=True).stdout
    return (nodes + router).strip()


def test_preble_serve_tiers_pasted_command_warm_restart_ctrl_c_and_sigkill(model_dir, tmp_path):
    port = free_port()
    tiers = ("--dram-bytes", "64M", "--disk-bytes", "256M", "--disk-dir", str(tmp_path / "kv"))
    p, lines = _start_serve(model_dir, port, tmp_path, *tiers)
    try:
        assert any(f"KV tiers per node: DRAM 64.0 MiB, disk 256.0 MiB under {tmp_path / 'kv'}" in ln
                   for ln in lines), "".join(lines)
        # The printed client command works from a fresh shell (no virtual environment on PATH).
        cmd = next(ln.strip() for ln in lines if " generate --addr " in ln)
        assert cmd.split()[0].startswith("/"), cmd
        fresh = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
        ran = subprocess.run(["bash", "-c", cmd.replace("'Summarise the plot of Hamlet.'", repr(DOC))],
                             env=fresh, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert "prompt tokens" in ran.stderr
        # So does the printed curl (where curl is installed; else the same request from here).
        curl = next(ln.strip() for ln in lines if ln.strip().startswith("curl "))
        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", curl], env=fresh, capture_output=True, text=True, timeout=120).stdout
        else:
            words = shlex.split(curl)
            req = urllib.request.Request(words[2], data=words[words.index("-d") + 1].encode(),
                                         headers={"Content-Type": "application/json"})
            out = urllib.request.urlopen(req, timeout=120).read().decode()
        assert 1 <= json.loads(out)["usage"]["completion_tokens"] <= 32, out
        p.send_signal(signal.SIGINT)  # a clean stop keeps the DRAM tier's blocks on disk
        rest = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    assert _children_of_port(port) == "", "processes left after Ctrl-C"

    # Warm restart: the same disk tier is reopened and the router's index holds its blocks.
    p, lines = _start_serve(model_dir, port, tmp_path, *tiers)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            status = nodes(admin_pb2_grpc.AdminStub(ch))[0]
        assert status.disk_blocks > 0, status
        disk = next(u for u in status.tiers if u.tier == common_pb2.TIER_DISK)
        assert disk.blocks == status.disk_blocks and disk.capacity_bytes == 256 << 20
        # Killed without a chance to stop them, the launcher's children still exit.
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 60
        while _children_of_port(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _children_of_port(port) == "", "router or node outlived a SIGKILLed launcher"
    finally:
        if p.poll() is None:
            p.kill()
