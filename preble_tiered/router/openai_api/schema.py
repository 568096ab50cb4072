"""The OpenAI API's request bodies (pydantic) and the shapes of its answers.

Fields the OpenAI API has and this router does not use are ignored, as the OpenAI API ignores
unknown fields. `priority` is an extension: the gRPC priority, in [-9, 9].
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    priority: int = 0


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16
    """OpenAI's default for completions."""


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    """Unset with max_tokens: up to the model's length."""


def usage_dict(prompt_tokens: int, completion_tokens: int, cached: dict[str, int], recomputed: int,
               request_id: str, node: str, branch: str, ttft_ms: float, latency_ms: float) -> dict:
    """OpenAI's usage object plus `preble`: cached tokens by tier, recomputed tokens, the node
    and E2 branch, and the request id `preble admin explain` takes."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": prompt_tokens - recomputed},
            "preble": {"request_id": request_id, "node": node, "branch": branch,
                       "cached_tokens": dict(cached), "recomputed_tokens": recomputed,
                       "ttft_ms": round(ttft_ms, 3), "latency_ms": round(latency_ms, 3)}}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
