"""The OpenAI front without engines: chat templates, a router with no node yet, the port."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from fastapi.testclient import TestClient

from preble_tiered.router.config import RouterConfig
from preble_tiered.router.openai_api.app import OpenAIFront
from preble_tiered.router.openai_api.chat_template import ChatTemplate, TemplateError, load_chat_template
from preble_tiered.router.openai_api.server import HttpServer
from preble_tiered.router.router import Router

MSGS = [{"role": "user", "content": "hi"}]


def test_template_from_the_jinja_file_wins_over_the_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "CONFIG", "bos_token": "<s>"}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]"
                                                  "{% endfor %}")
    assert load_chat_template(tmp_path).render(MSGS) == "<s>[hi]"


def test_template_from_the_config_named_default_and_added_token_shapes(tmp_path):
    cfg = {"chat_template": [{"name": "tool_use", "template": "TOOLS"},
                             {"name": "default", "template": "{{ eos_token }}{{ messages[0]['role'] }}"}],
           "eos_token": {"content": "</s>", "lstrip": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_chat_template(tmp_path).render(MSGS) == "</s>user"


def test_no_template_is_none(tmp_path):
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert load_chat_template(tmp_path) is None


def test_a_template_that_refuses_says_why():
    t = ChatTemplate("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(TemplateError, match="refused the messages: system first"):
        t.render(MSGS)
    with pytest.raises(TemplateError, match="failed"):
        ChatTemplate("{{ messages[5]['content'] }}").render(MSGS)


def test_the_tiny_models_template_renders_roles_and_the_reply_prompt():
    from preble_tiered.engine.tiny_model import CHAT_TEMPLATE

    t = ChatTemplate(CHAT_TEMPLATE)
    assert t.render([{"role": "system", "content": "S"}, *MSGS]) == "<|system|>\nS\n<|user|>\nhi\n<|assistant|>\n"
    assert t.render(MSGS, add_generation_prompt=False) == "<|user|>\nhi\n"


@pytest.fixture
def nodeless():
    with TestClient(OpenAIFront(Router(RouterConfig(port=0))).app()) as c:
        yield c


def test_before_any_node_health_is_503_and_generation_unavailable(nodeless):
    assert nodeless.get("/health").status_code == 503
    assert nodeless.get("/v1/models").json() == {"object": "list", "data": []}
    r = nodeless.post("/v1/completions", json={"model": "m", "prompt": "hello"})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable_error" and "no node" in r.json()["error"]["message"]
    r = nodeless.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
    assert r.status_code == 503


def test_validation_errors_name_the_field(nodeless):
    r = nodeless.post("/v1/completions", json={"prompt": "x", "max_tokens": "many"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and err["message"].startswith("max_tokens:")
    r = nodeless.post("/v1/chat/completions", json={"messages": [{"content": "no role"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"


def test_http_port_bounds_and_a_taken_port():
    with pytest.raises(ValueError, match="http_port"):
        RouterConfig(http_port=70000)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen for HTTP on 127.0.0.1:{taken}"):
            asyncio.run(HttpServer(None, "127.0.0.1", taken).start())


def test_loop_controls_work_and_a_broken_template_says_so(tmp_path):
    t = ChatTemplate("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m['content'] }}"
                     "{% endfor %}")
    assert t.render([*MSGS, {"role": "user", "content": "more"}]) == "hi"
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")
    (tmp_path / "chat_template.jinja").write_text("{{ unclosed")
    with pytest.raises(TemplateError, match="does not compile"):
        load_chat_template(tmp_path)


def test_the_token_is_checked_before_the_body_is_read():
    cfg = RouterConfig(port=0, inference_token="t" * 16)
    with TestClient(OpenAIFront(Router(cfg)).app()) as c:
        r = c.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = c.post("/v1/completions", content=b"{not json", headers={"Authorization": "Bearer " + "t" * 16,
                                                                      "Content-Type": "application/json"})
        assert r.status_code == 400  # past the gate, the body is read and refused
        assert c.get("/health").status_code == 503  # probes need no token
