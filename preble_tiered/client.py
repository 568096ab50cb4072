"""A small synchronous client of the Inference API (used by `preble generate`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


from preble_tiered.types import GenParams
from preble_tiered.api import convert
from preble_tiered.api.auth import bearer, channel
from preble_tiered.api.grpc_util import CHANNEL_OPTIONS
from preble_tiered.api.pb import common_pb2, inference_pb2, inference_pb2_grpc


def build_request(prompt: str | Sequence[int], params: GenParams | None = None,
                  request_id: str = "") -> inference_pb2.GenerateRequest:
    req = inference_pb2.GenerateRequest(request_id=request_id)
    if isinstance(prompt, str):
        req.text = prompt
    else:
        req.token_ids.CopyFrom(common_pb2.TokenIds(ids=list(prompt)))
    if params is not None:
        req.sampling.CopyFrom(convert.params_to_pb(params))
    return req


def usage_dict(complete: inference_pb2.GenerateComplete) -> dict:
    """The final message as `preble generate --json` prints it."""
    u = complete.usage
    return {
        "text": complete.text,
        "node": u.node,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": convert.cached_from_pb(u.cached_tokens),
        "recomputed_tokens": u.recomputed_tokens,
        "ttft_ms": round(u.ttft_ms, 3),
        "latency_ms": round(u.latency_ms, 3),
        "finish_reason": u.finish_reason,
        "branch": u.branch,
        "request_id": u.request_id,
    }


class Client:
    """Args:
        token: the Inference API's bearer token, when the router requires one.
        tls_ca: PEM of the CA (or the server's self-signed certificate): connect with TLS.
    """

    def __init__(self, addr: str, timeout_s: float | None = None, token: str | None = None,
                 tls_ca: str | None = None) -> None:
        self.channel = channel(addr, tls_ca, CHANNEL_OPTIONS)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = bearer(token) if token else ()

    def stream(self, req: inference_pb2.GenerateRequest) -> Iterator[inference_pb2.GenerateResponse]:
        return self.stub.Generate(req, timeout=self.timeout_s, metadata=self.metadata)

    def generate(self, req: inference_pb2.GenerateRequest) -> inference_pb2.GenerateComplete:
        return self.stub.GenerateOnce(req, timeout=self.timeout_s, metadata=self.metadata)

    def model_info(self, timeout_s: float | None = None) -> inference_pb2.ModelInfo:
        return self.stub.GetModelInfo(inference_pb2.ModelInfoRequest(), timeout=timeout_s or self.timeout_s or 10.0,
                                      metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
