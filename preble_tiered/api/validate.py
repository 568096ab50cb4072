"""Request validation at the edges that receive requests (the router's APIs, a node's Submit):
the limits and the messages every client sees."""

from __future__ import annotations

import math
from collections.abc import Sequence

from preble_tiered.types import GenParams

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


class InvalidField(ValueError):
    """A request field out of bounds: `param` names it (the OpenAI API's error `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def validate_prompt(vocab_size: int, max_model_len: int, prompt_token_ids: Sequence[int], params: GenParams) -> None:
    """Check a request against the model's limits.

    Raises:
        InvalidField (a ValueError): naming the field and saying what to fix.
    """
    n = len(prompt_token_ids)
    if n == 0:
        raise InvalidField("prompt", "prompt is empty: send text or at least one token id")
    lo, hi = min(prompt_token_ids), max(prompt_token_ids)
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InvalidField("prompt", f"token id {bad} is out of the vocabulary: ids must be in [0, {vocab_size})")
    validate_params(params)
    if n + params.max_tokens > max_model_len:
        raise InvalidField("prompt", f"prompt of {n} tokens plus max_tokens {params.max_tokens} exceeds the "
                                     f"model's limit of {max_model_len} tokens; shorten the prompt or lower max_tokens")


def validate_params(params: GenParams) -> None:
    """Raises InvalidField (a ValueError) for sampling parameters that make no sense."""
    if params.max_tokens < 1:
        raise InvalidField("max_tokens", f"max_tokens must be at least 1, got {params.max_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidField("temperature",
                           f"temperature must be a finite number >= 0 (0 is greedy), got {params.temperature}")
    if not math.isfinite(params.top_p) or not 0.0 < params.top_p <= 1.0:
        raise InvalidField("top_p", f"top_p must be in (0, 1], got {params.top_p}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidField("stop", f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(params.stop)}")
    for s in params.stop:
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidField("stop", f"stop strings must have 1 to {MAX_STOP_CHARS} characters, got {len(s)}")
        if not s.isascii():
            try:
                s.encode()
            except UnicodeEncodeError:
                raise InvalidField("stop", "stop strings must be valid Unicode (one holds a lone surrogate)") \
                    from None
    if params.seed is not None and not 0 <= params.seed < 1 << 63:
        raise InvalidField("seed", f"seed must be in [0, 2^63), got {params.seed}")
