"""JSONL trace replay: round trips, defaults, ordering and line-numbered errors."""

import io
import json

import pytest

from preble_tiered.types import Segment, WorkloadRequest
from preble_tiered.workloads import WorkloadConfig, load_trace, make_workload, write_trace

GOOD = '{"t": 0.5, "segments": [["sys", 300], ["q1", 40]], "output_tokens": 16}'


def write_lines(tmp_path, *lines: str):
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_of_a_generated_stream(tmp_path):
    reqs = make_workload("mixed", WorkloadConfig(requests=300, seed=3))
    path = tmp_path / "mixed.jsonl"
    write_trace(reqs, path)
    back = load_trace(path)
    assert [(r.request_id, r.arrival_s, r.segments, r.output_tokens) for r in back] == [
        (r.request_id, r.arrival_s, r.segments, r.output_tokens) for r in reqs
    ]
    assert {r.workload for r in back} == {"trace"}


def test_write_to_an_open_file_and_read_back(tmp_path):
    reqs = [WorkloadRequest("a", 1 / 3, (Segment("x", 7),), 2), WorkloadRequest("b", 2.0, (Segment("y", 1),), 1)]
    buf = io.StringIO()
    write_trace(reqs, buf)
    assert len(buf.getvalue().splitlines()) == 2
    path = write_lines(tmp_path, buf.getvalue().rstrip("\n"))
    back = load_trace(path)
    assert back[0].arrival_s == 1 / 3  # floats survive exactly
    assert [r.request_id for r in back] == ["a", "b"]


def test_default_ids_blank_lines_and_sorting(tmp_path):
    path = write_lines(
        tmp_path,
        '{"t": 2, "segments": [["a", 10]], "output_tokens": 1}',
        "",
        '{"t": 1, "segments": [["b", 10]], "output_tokens": 3, "id": "mine"}',
        "   ",
        '{"t": 2, "segments": [["c", 5]], "output_tokens": 2}',
    )
    reqs = load_trace(path)
    assert [r.request_id for r in reqs] == ["mine", "trace-1", "trace-5"]
    assert [r.arrival_s for r in reqs] == [1.0, 2.0, 2.0]
    assert reqs[1].segments == (Segment("a", 10),)


def test_limit_and_time_scale(tmp_path):
    lines = [json.dumps({"t": float(t), "segments": [[f"s{t}", 8]], "output_tokens": 1}) for t in (3, 1, 2, 0)]
    path = write_lines(tmp_path, *lines)
    reqs = load_trace(path, limit=2, time_scale=0.5)
    assert [r.arrival_s for r in reqs] == [0.0, 0.5]
    assert load_trace(path, limit=0) == []
    with pytest.raises(ValueError, match="time_scale"):
        load_trace(path, time_scale=0)
    with pytest.raises(ValueError, match="limit"):
        load_trace(path, limit=-1)


@pytest.mark.parametrize(
    "bad, words",
    [
        ('{"t": 1, "segments": [["a", 10]], "output_tokens": 1', "invalid JSON"),
        ('[1, 2]', "JSON object"),
        ('{"segments": [["a", 10]], "output_tokens": 1}', "'t'"),
        ('{"t": 1, "output_tokens": 1}', "'segments'"),
        ('{"t": 1, "segments": [["a", 10]]}', "'output_tokens'"),
        ('{"t": -0.5, "segments": [["a", 10]], "output_tokens": 1}', '"t" must be >= 0'),
        ('{"t": "soon", "segments": [["a", 10]], "output_tokens": 1}', '"t" must be a finite number'),
        ('{"t": 1, "segments": [], "output_tokens": 1}', "non-empty"),
        ('{"t": 1, "segments": [["a", 0]], "output_tokens": 1}', "n_tokens must be >= 1"),
        ('{"t": 1, "segments": [["a", -3]], "output_tokens": 1}', "n_tokens must be >= 1"),
        ('{"t": 1, "segments": [["a", 2.5]], "output_tokens": 1}', "n_tokens must be an integer"),
        ('{"t": 1, "segments": [["a", true]], "output_tokens": 1}', "n_tokens must be an integer"),
        ('{"t": 1, "segments": [["a"]], "output_tokens": 1}', "pair"),
        ('{"t": 1, "segments": [[7, 10]], "output_tokens": 1}', "id must be a non-empty string"),
        ('{"t": 1, "segments": [["a", 10]], "output_tokens": 0}', '"output_tokens" must be >= 1'),
        ('{"t": 1, "segments": [["a", 10]], "output_tokens": 1.5}', '"output_tokens" must be an integer'),
        ('{"t": 1, "segments": [["a", 10]], "output_tokens": 1, "id": ""}', '"id" must be'),
        ('{"t": 1, "segments": [["a", 10]], "output_tokens": 1, "id": "trace-1"}', "duplicate id"),
    ],
)
def test_each_invalid_line_is_named(tmp_path, bad, words):
    path = write_lines(tmp_path, GOOD, "", bad, GOOD.replace("0.5", "0.7").replace("q1", "q2"))
    with pytest.raises(ValueError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert words in message


def test_writing_a_negative_time_raises():
    with pytest.raises(ValueError, match="arrival time"):
        write_trace([WorkloadRequest("a", -1.0, (Segment("x", 1),), 1)], io.StringIO())
