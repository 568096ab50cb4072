"""The node edge's request check: `api.validate.validate_prompt` against a node's ModelInfo,
as the agent's Submit runs it (the engine itself does not validate again)."""

from __future__ import annotations

import pytest

from preble_tiered.api.validate import validate_prompt
from preble_tiered.engine.api import ModelInfo
from preble_tiered.types import GenParams

INFO = ModelInfo(model="m", vocab_size=260, max_model_len=100, block_size=32, kv_capacity_tokens=1024,
                 kv_bytes_per_token=8192, eos_token_id=1)


def validate(prompt, params) -> None:
    validate_prompt(INFO.vocab_size, INFO.max_model_len, prompt, params)


@pytest.mark.parametrize("prompt, params, message", [
    ([], GenParams(), "prompt is empty"),
    ([5, 260], GenParams(), r"token id 260 is out of the vocabulary: ids must be in \[0, 260\)"),
    ([5, -1], GenParams(), "token id -1 is out of the vocabulary"),
    ([5] * 90, GenParams(max_tokens=11),
     "prompt of 90 tokens plus max_tokens 11 exceeds the model's limit of 100 tokens; shorten the prompt"),
    ([5], GenParams(max_tokens=0), "max_tokens must be at least 1"),
    ([5], GenParams(temperature=-0.1), "temperature must be a finite number >= 0"),
    ([5], GenParams(temperature=float("nan")), "temperature"),
    ([5], GenParams(top_p=0.0), r"top_p must be in \(0, 1\]"),
    ([5], GenParams(top_p=1.5), "top_p"),
    ([5], GenParams(stop=("x",) * 17), "at most 16 stop strings"),
    ([5], GenParams(stop=("x" * 257,)), "stop strings must have 1 to 256 characters"),
    ([5], GenParams(stop=("",)), "stop strings must have 1 to 256 characters"),
])
def test_node_edge_rejects_with_the_fix(prompt, params, message):
    with pytest.raises(ValueError, match=message):
        validate(prompt, params)


def test_node_edge_accepts_the_limit():
    validate([0, 259] * 45, GenParams(max_tokens=10, stop=("a" * 256,) * 16))
