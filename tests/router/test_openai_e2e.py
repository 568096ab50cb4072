"""The OpenAI HTTP API end to end: the official `openai` package against a router and two real
nodes (tiny model), with an inference token set and at most 4 requests in flight (so 429 is
reachable). One cluster serves the module."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import grpc
import httpx
import openai
import pytest
from ports import free_port

from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc
from preble_tiered.cli.launcher import ClusterSpec, LocalCluster

pytestmark = pytest.mark.slow

TOKEN = "openai-e2e-token-0123456789"
MODEL = "tiny-llama-v2"
DOC = ("Minutes of the harbour committee: the lighthouse, the new pier, the dredging budget. " * 30)[:2000]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from preble_tiered.engine.tiny_model import ensure_tiny_model

    d = tmp_path_factory.mktemp("openai")
    (d / "token").write_text(TOKEN + "\n")
    spec = ClusterSpec(nodes=2, model=str(ensure_tiny_model()), port=free_port(), http_port=free_port(),
                       kv_cache_bytes=64 << 20, max_model_len=4096, log_dir=str(d / "logs"), inference_token=TOKEN,
                       state_path=str(d / "state.json"),
                       router_args=("--inference-token-file", str(d / "token"), "--max-outstanding", "4"))
    c = LocalCluster(spec).start(progress=lambda m: None)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def client(cluster):
    with openai.OpenAI(base_url=cluster.http_url, api_key=TOKEN, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster):
    with grpc.insecure_channel(cluster.addr) as ch:
        yield admin_pb2_grpc.AdminStub(ch)


def post(cluster, path: str, body, token: str | None = TOKEN, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if raw is None and body is not None:
        raw = json.dumps(body).encode()  # ASCII JSON: a lone surrogate travels escaped
    if raw is not None:
        return httpx.post(cluster.http_url + path, content=raw, headers={**headers, "Content-Type": "application/json"},
                          timeout=60)
    return httpx.post(cluster.http_url + path, json=body, headers=headers, timeout=60)


def assert_openai_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err
    return err


# ---------------------------------------------------------------------------- plain routes
def test_health_models_and_metrics(cluster, client):
    with urllib.request.urlopen(cluster.http_url.removesuffix("/v1") + "/health", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["nodes_alive"] == 2
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["max_model_len"] == 4096
    with urllib.request.urlopen(cluster.http_url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        assert b"preble_router_requests" in r.read()


# ---------------------------------------------------------------------------- completions
def test_completion_of_text_and_of_token_ids(client):
    r = client.completions.create(model=MODEL, prompt="The harbour committee met to", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(b"The harbour committee met to")  # byte-level tokenizer
    assert r.usage.completion_tokens == 6
    ids = [4 + b for b in b"The harbour committee met to"]
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.usage.prompt_tokens == len(ids)
    assert r2.choices[0].text == r.choices[0].text  # the same prompt, greedy: the same text


def test_streamed_completion_ends_with_usage_and_matches_the_whole_one(client):
    kw = dict(model=MODEL, prompt="Dredging the channel will cost", max_tokens=12, temperature=0,
              extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_stream_is_server_sent_events_ending_with_done(cluster):
    body = {"model": MODEL, "prompt": "Pier", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", cluster.http_url + "/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [ln[len("data:"):].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "text_completion" for d in data[:-1])


def test_repeated_long_prompt_reports_cached_tokens_by_tier(client, admin):
    kw = dict(model=MODEL, prompt=DOC + " Question: who pays?", max_tokens=2, temperature=0)
    first = client.completions.create(**kw)
    second = client.completions.create(**kw)
    p1, p2 = first.usage.model_extra["preble"], second.usage.model_extra["preble"]
    assert first.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - p1["recomputed_tokens"]
    assert second.usage.prompt_tokens_details.cached_tokens >= second.usage.prompt_tokens - 32  # all full blocks
    assert sum(p2["cached_tokens"].values()) >= second.usage.prompt_tokens - 32
    assert p2["node"] == p1["node"] and p2["branch"] == "exploit"
    rec = admin.Explain(admin_pb2.ExplainRequest(request_id=p2["request_id"]), timeout=10)
    assert rec.request_id == p2["request_id"] and rec.node == p2["node"]


# ---------------------------------------------------------------------------- chat
def test_chat_renders_the_models_template(client):
    msgs = [{"role": "system", "content": "You keep minutes."}, {"role": "user", "content": "Who spoke first?"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    rendered = "<|system|>\nYou keep minutes.\n<|user|>\nWho spoke first?\n<|assistant|>\n"
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(rendered.encode())
    assert r.usage.completion_tokens == 5
    parts = [{"role": "user", "content": [{"type": "text", "text": "Who spoke "}, {"type": "text", "text": "first?"}]}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=parts, max_tokens=4, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.prompt_tokens == len("<|user|>\nWho spoke first?\n<|assistant|>\n".encode())
    assert chunks[-1].usage.completion_tokens == 4


# ---------------------------------------------------------------------------- bad input
BAD = [
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens must be at least 1"),
    ("/completions", {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/completions", {"model": MODEL, "prompt": "x", "top_p": 2}, 400, "top_p"),
    ("/completions", {"model": MODEL, "prompt": "x", "n": 2}, 400, "n must be 1"),
    ("/completions", {"model": MODEL, "prompt": "x", "stop": ["s"] * 17}, 400, "stop strings"),
    ("/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/completions", {"model": MODEL}, 400, "prompt"),
    ("/completions", {"model": MODEL, "prompt": ""}, 400, "empty"),
    ("/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt per request"),
    ("/completions", {"model": MODEL, "prompt": [5, 99999]}, 400, "out of the vocabulary"),
    ("/completions", {"model": MODEL, "prompt": "x" * 4095, "max_tokens": 2}, 400, "exceeds the model's limit"),
    ("/completions", {"model": MODEL, "prompt": "x", "priority": 12}, 400, "priority"),
    ("/completions", {"model": "gpt-4", "prompt": "x"}, 404, "is not served here"),
    ("/chat/completions", {"model": MODEL, "messages": []}, 400, "messages is empty"),
    ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "only text content parts"),
    ("/completions", {"model": MODEL, "prompt": "x", "seed": -1}, 400, "seed must be in"),
    ("/completions", {"model": MODEL, "prompt": "x", "stop": "\ud800"}, 400, "lone surrogate"),
    ("/completions", {"model": MODEL, "prompt": "a\ud800b"}, 400, "lone surrogate"),
    ("/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "not served"),
    ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n must"),
    ("/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/completions", {"model": MODEL, "prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ("/completions", {"model": MODEL, "prompt": "x", "logprobs": 5}, 400, "logprobs is not served"),
    ("/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                           "top_logprobs": 2}, 400, "logprobs is not served"),
    ("/completions", {"model": MODEL, "prompt": "x", "logprobs": 0}, 400, "logprobs is not served"),
    ("/completions", {"model": MODEL, "prompt": [5.0, 6.0]}, 400, "prompt"),
    ("/nowhere", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 2}, "top_p"),
    ({"seed": -1}, "seed"), ({"stop": ["s"] * 17}, "stop"), ({"prompt": [5, 99999]}, "prompt"),
    ({"prompt": "x" * 4095, "max_tokens": 2}, "prompt"), ({"priority": 12}, "priority"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_the_error_names_the_field_at_fault(cluster, body, param):
    err = assert_openai_error(post(cluster, "/completions", {"model": MODEL, "prompt": "x", **body}), 400)
    assert err["param"] == param, err


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_in_openais_error_shape(cluster, path, body, status, words):
    assert_openai_error(post(cluster, path, body), status, words)


def test_malformed_json_and_oversized_bodies(cluster):
    assert_openai_error(post(cluster, "/completions", None, raw=b'{"prompt": '), 400,
                        "the request body is not valid JSON at character 11")
    host, port = cluster.http_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:  # a declared 64 MiB body: refused unread
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {64 << 20}\r\n\r\n{{".encode())
        answer = b""
        while b"}}" not in answer and (part := s.recv(4096)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * (1 << 20)

    r = httpx.post(cluster.http_url + "/completions", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert_openai_error(r, 413, "the limit is")


def test_the_token_is_required_and_unknown_fields_are_ignored(cluster):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1, "logit_bias": {"5": 1}, "frobnicate": True,
            "temperature": 0, "logprobs": False, "top_logprobs": 0}  # an int for a float, logprobs off: fine
    assert_openai_error(post(cluster, "/completions", body, token=None), 401, "missing bearer token")
    assert_openai_error(post(cluster, "/completions", body, token="wrong-token-0123456789"), 401, "wrong bearer")
    r = httpx.get(cluster.http_url + "/models", timeout=10)
    assert r.status_code == 401
    assert post(cluster, "/completions", body).status_code == 200
    r = httpx.get(cluster.http_url + "/models", headers={"Authorization": f"bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200  # the scheme is case-insensitive


def test_over_the_routers_limit_is_429(cluster):
    async def go():
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            body = {"model": MODEL, "prompt": DOC, "max_tokens": 200, "ignore_eos": True}
            return await asyncio.gather(*(c.post(cluster.http_url + "/completions", json=body) for _ in range(10)))

    answers = asyncio.run(go())
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 4 and codes.count(429) == 6, codes  # 10 at once, 4 admitted: none slips past
    err = next(r for r in answers if r.status_code == 429).json()["error"]
    assert err["type"] == "rate_limit_error" and "limit 4" in err["message"]


def _explain_state(admin, rid: str, want: str, within_s: float) -> str:
    deadline, state = time.monotonic() + within_s, ""
    while time.monotonic() < deadline:
        state = admin.Explain(admin_pb2.ExplainRequest(request_id=rid), timeout=10).state
        if state == want:
            break
        time.sleep(0.1)
    return state


def _idle(admin, within_s: float) -> list:
    deadline = time.monotonic() + within_s
    while True:
        nodes = admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10).nodes
        if sum(n.inflight for n in nodes) == 0 and sum(n.running for n in nodes) == 0 or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)


def test_client_disconnect_mid_stream_frees_the_node(cluster, admin):
    body = {"model": MODEL, "prompt": DOC, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", cluster.http_url + "/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "gone-mid-stream"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(ln.startswith("data:") for ln in got)
        assert sum(n.inflight for n in admin.ListNodes(admin_pb2.ListNodesRequest(), timeout=10).nodes) == 1
    # 2,000 tokens take the tiny model far longer than this: only an abort ends it in time
    assert _explain_state(admin, "gone-mid-stream", "failed", 3.0) == "failed"
    nodes = _idle(admin, 5.0)
    assert sum(n.inflight for n in nodes) == 0 and sum(n.running for n in nodes) == 0


def test_client_disconnect_before_a_whole_answer_frees_the_node(cluster, admin):
    host, port = cluster.http_url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"model": MODEL, "prompt": DOC, "max_tokens": 2000, "ignore_eos": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:  # not streamed: nothing comes back early
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"X-Request-Id: gone-whole\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert _explain_state(admin, "gone-whole", "running", 5.0) == "running"
    assert _explain_state(admin, "gone-whole", "failed", 3.0) == "failed"
    nodes = _idle(admin, 5.0)
    assert sum(n.inflight for n in nodes) == 0 and sum(n.running for n in nodes) == 0


def test_malformed_grpc_bytes_are_invalid_argument(cluster):
    with grpc.insecure_channel(cluster.addr) as ch:
        call = ch.unary_unary("/preble.v1.Inference/GenerateOnce")
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff\xff", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in e.value.details()


def test_preble_bench_replays_a_trace_over_the_openai_api(cluster, monkeypatch):
    from preble_tiered.cli.bench import BenchConfig, run_bench
    from preble_tiered.types import Segment, WorkloadRequest

    monkeypatch.setenv("PREBLE_INFERENCE_TOKEN", TOKEN)
    reqs = [WorkloadRequest(f"r{i}", 0.5 * i, (Segment("shared-doc", 640), Segment(f"q{i}", 40)), 6)
            for i in range(4)]
    cfg = BenchConfig(addr="", openai_url=cluster.http_url, progress=False)
    out = asyncio.run(run_bench(reqs, cfg, "trace"))
    s = out.summary
    assert out.failures == [] and s["requests"] == 4 and s["ttft"]["mean"] > 0
    assert s["policy"] == f"openai:{MODEL}"  # the server, not the workload: its routing is not visible over HTTP
    assert s["prompt_tokens"] == 4 * 680
    assert sum(s["cached_tokens"].values()) >= 2 * 640  # the shared document, after the first request
    assert sum(s["branches"].values()) == 4
