"""`preble bench --openai URL`: the same open-loop replay as `preble bench`, over the OpenAI
API of any server (ours, vLLM's, a peer router's), so that one load generator drives them all.

Each request is `POST /v1/completions` through the `openai` package: the prompt as the same
token ids `preble bench` sends over gRPC, greedy, `ignore_eos`, streamed with usage. TTFT is
the first streamed token chunk. Cached tokens come from `usage.preble` where the server is
ours (by tier), else from `prompt_tokens_details.cached_tokens` (counted as the engine's
cache, `hbm`), else none.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from preble_tiered.sim.metrics import TIER_KEYS, RequestRecord
from preble_tiered.types import WorkloadRequest


@dataclass(frozen=True)
class OpenAIServer:
    model: str
    max_model_len: int | None
    vocab_size: int
    nodes: int | None
    """Nodes serving (ours reports it on /health; None elsewhere)."""


def api_key() -> str:
    """PREBLE_INFERENCE_TOKEN, else OPENAI_API_KEY, else a placeholder (servers without auth)."""
    return os.environ.get("PREBLE_INFERENCE_TOKEN") or os.environ.get("OPENAI_API_KEY") or "none"


async def describe(client, url: str, vocab_size: int | None) -> OpenAIServer:
    """What the server serves, from `GET /models` (and `/health` where it reports nodes).

    Raises:
        ValueError: no model is served, or the vocabulary size is unknown (say --vocab-size).
    """
    import httpx

    models = (await client.models.list()).data
    if not models:
        raise ValueError(f"{url} serves no model (GET /models is empty): is a node up?")
    m = models[0]
    extra = m.model_extra or {}
    vocab = vocab_size or extra.get("vocab_size")
    if not vocab:
        raise ValueError(f"{url} does not say its vocabulary size: give --vocab-size (the model's config.json "
                         "vocab_size)")
    nodes = None
    try:
        async with httpx.AsyncClient(timeout=5) as h:
            r = await h.get(url.rstrip("/").removesuffix("/v1") + "/health")
            nodes = r.json().get("nodes_alive") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    return OpenAIServer(m.id, extra.get("max_model_len"), int(vocab), nodes)


async def send(client, server: OpenAIServer, r: WorkloadRequest, ids: list[int], max_tokens: int,
               t0: float) -> RequestRecord:
    """One request, streamed; raises the openai package's errors on failure."""
    sent = time.monotonic() - t0
    first = None
    usage = None
    stream = await client.completions.create(
        model=server.model, prompt=ids, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and first is None:
            first = time.monotonic() - t0
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.monotonic() - t0
    if usage is None:
        raise RuntimeError(f"{r.request_id}: the stream ended without usage")
    ours = (usage.model_extra or {}).get("preble")
    rec = RequestRecord(r.request_id, 0, ours["branch"] if ours else "", sent, len(ids), usage.completion_tokens,
                        first_token_s=first if first is not None else end, finish_s=end)
    if ours:
        rec.cached = {k: int(ours["cached_tokens"].get(k, 0)) for k in TIER_KEYS}
        rec.recomputed_tokens = int(ours["recomputed_tokens"])
    else:
        details = usage.prompt_tokens_details
        hit = int(details.cached_tokens or 0) if details is not None else 0
        rec.cached = {**dict.fromkeys(TIER_KEYS, 0), "hbm": hit}
        rec.recomputed_tokens = len(ids) - hit
    return rec
