"""The OpenAI API's request bodies (pydantic) and the shapes of its answers.

Fields the OpenAI API has and this router does not use are ignored, as the OpenAI API ignores
unknown fields, except those whose answer a client would miss (`logprobs`, `top_logprobs`: a
400 says they are not served). `priority` is an extension: the gRPC priority, in [-9, 9].

The sampling fields' and token ids' types are strict, as OpenAI's are: `"stream": "yes"`,
`"max_tokens": true` or a prompt of `[1.0, 2.0]` is a 400, not coerced (an integer may still be
given for a float).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(default=False, strict=True)


class SamplingFields(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float | None = Field(default=None, strict=True)
    top_p: float | None = Field(default=None, strict=True)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, strict=True)
    n: int = Field(default=1, strict=True)
    user: str | None = Field(default=None, max_length=256)
    ignore_eos: bool = Field(default=False, strict=True)
    stream: bool = Field(default=False, strict=True)
    stream_options: StreamOptions | None = None
    priority: int = Field(default=0, strict=True)
    logprobs: Any = None
    """Not served: anything but null or false is refused (`OpenAIFront._check_common`; on completions
    `logprobs: 0` asks for the sampled tokens' logprobs)."""
    top_logprobs: Any = None
    """Not served: anything but null or 0 is refused."""


TokenId = Annotated[int, Field(strict=True)]


class CompletionRequest(SamplingFields):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: int | None = Field(default=16, strict=True)
    """OpenAI's default for completions."""


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    """Any role the model's chat template knows (as vLLM takes it; e.g. Llama 3.1's "ipython")."""
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, strict=True)
    max_completion_tokens: int | None = Field(default=None, strict=True)
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
