import pytest

from preble_tiered.api.validate import validate_prompt
from preble_tiered.types import GenParams


@pytest.mark.parametrize("ids, params, fix", [
    ([], GenParams(), "prompt is empty"),
    ([1, -1], GenParams(), "token id -1 is out of the vocabulary"),
    ([1, 100], GenParams(), "token id 100 is out of the vocabulary: ids must be in [0, 100)"),
    ([1] * 60, GenParams(max_tokens=5), "prompt of 60 tokens plus max_tokens 5 exceeds the model's limit of 64"),
    ([1], GenParams(max_tokens=0), "max_tokens must be at least 1"),
    ([1], GenParams(temperature=float("inf")), "temperature"),
    ([1], GenParams(top_p=0.0), "top_p"),
    ([1], GenParams(stop=("a",) * 17), "at most 16 stop strings"),
    ([1], GenParams(stop=("a" * 257,)), "stop strings must have 1 to 256"),
])
def test_bad_requests_say_what_to_fix(ids, params, fix):
    with pytest.raises(ValueError, match=None) as ei:
        validate_prompt(100, 64, ids, params)
    assert fix in str(ei.value)


def test_good_request_passes_at_the_limit():
    validate_prompt(100, 64, [99] * 59, GenParams(max_tokens=5, temperature=0.0, top_p=1.0, stop=("x",)))
