"""The bodies the OpenAI API answers with: a whole completion, or its stream chunks (the
`data:` of each server-sent event). One Format per endpoint; chunks are encoded with msgspec
(one per token on a long answer: this is on the per-token path)."""

from __future__ import annotations

import msgspec

from preble_tiered.router.dispatch import Outcome
from preble_tiered.router.openai_api.schema import usage_dict

_encoder = msgspec.json.Encoder()


def encode(obj) -> str:
    return _encoder.encode(obj).decode()


def usage(o: Outcome) -> dict:
    run = o.run
    return usage_dict(len(run.ids), len(run.generated), o.cached, o.recomputed_tokens, run.rid, o.node,
                      o.decision.branch.value, o.ttft_s * 1e3, o.latency_s * 1e3)


class Format:
    """Request-scoped: the id, model and creation time every body of one answer carries."""

    object_whole = ""
    object_chunk = ""
    id_prefix = ""

    def __init__(self, rid: str, model: str, created: int, include_usage: bool) -> None:
        self.id = self.id_prefix + rid
        self.model, self.created, self.include_usage = model, created, include_usage
        self._chunk_head = self._head(self.object_chunk)  # built once: every token's chunk carries it

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, o: Outcome) -> dict:
        return {**self._head(self.object_whole), "choices": [self._choice("".join(o.run.text), o.finish_reason)],
                "usage": usage(o)}

    def begin(self) -> list[str]:
        return []

    def chunk(self, text: str) -> str:
        return encode({**self._chunk_head, "choices": [self._delta(text, None)]})

    def end(self, o: Outcome) -> list[str]:
        out = [encode({**self._chunk_head, "choices": [self._delta("", o.finish_reason)]})]
        if self.include_usage:
            out.append(encode({**self._chunk_head, "choices": [], "usage": usage(o)}))
        return out

    def _choice(self, text: str, finish_reason: str) -> dict:
        raise NotImplementedError

    def _delta(self, text: str, finish_reason: str | None) -> dict:
        raise NotImplementedError


class CompletionFormat(Format):
    object_whole = object_chunk = "text_completion"
    id_prefix = "cmpl-"

    def _choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    _delta = _choice  # a completion's chunk has the same choice shape as the whole answer


class ChatFormat(Format):
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def begin(self) -> list[str]:
        return [encode({**self._chunk_head, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})]

    def _choice(self, text: str, finish_reason: str) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def _delta(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "delta": {"content": text} if text or finish_reason is None else {},
                "logprobs": None, "finish_reason": finish_reason}
