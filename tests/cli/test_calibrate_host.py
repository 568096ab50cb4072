"""`preble calibrate`'s host phase on a scripted stub: which prefills count as run beside
another node's work of the same host, and that a failed stream stops the phase with its error;
and its reset, tried again while the router waits for a node's report."""

import time
from types import SimpleNamespace

import grpc
import pytest

from preble_tiered.cli.calibrate import BESIDE_ROUNDS, _beside_a_stream, _reset

HOSTS = {"a": "10.0.0.1", "b": "10.0.0.1", "c": "10.0.0.2"}


class Stub:
    """Generate: the decode stream (max_tokens > 2) yields a chunk, then completes after
    `stream_s` on node "a"; a prefill completes at once with `prefill(size, streaming)`."""

    def __init__(self, prefill, stream_s=0.2, stream_error=None):
        self.prefill, self.stream_s, self.stream_error, self.streaming = prefill, stream_s, stream_error, False

    def Generate(self, req, metadata=(), timeout=None):
        if req.sampling.max_tokens > 2:
            self.streaming = True
            yield SimpleNamespace(WhichOneof=lambda _: "chunk")
            if self.stream_error:
                raise self.stream_error
            time.sleep(self.stream_s)
            self.streaming = False
            usage = SimpleNamespace(node="a", engine_ttft_ms=0.0)
        else:
            usage = self.prefill(len(req.token_ids.ids), self.streaming)
        yield SimpleNamespace(WhichOneof=lambda _: "complete", complete=SimpleNamespace(usage=usage))


def u(node, ms):
    return SimpleNamespace(node=node, engine_ttft_ms=ms)


def test_a_prefill_counts_beside_the_stream_only_alone_in_its_engine_on_another_node_of_its_host():
    def prefill(size, streaming):
        if not streaming:
            return u("b", 100.0)  # alone: 100 ms at every size
        return {512: u("a", 50.0),     # on the stream's node
                1024: u("b", 0.0),     # shared its engine with something
                1536: u("b", 110.0)}[size]  # beside it: 1.1x

    assert _beside_a_stream(Stub(prefill), (), 260, 4096, HOSTS) == [pytest.approx(1.1)] * BESIDE_ROUNDS
    # on another host, the stream's work is not beside it
    other = lambda size, streaming: u("c", 150.0) if streaming else u("c", 100.0)  # noqa: E731
    assert _beside_a_stream(Stub(other), (), 260, 4096, HOSTS) == []

    def slow(size, streaming):  # ends after the stream did
        time.sleep(0.05)
        return prefill(size, streaming)

    assert _beside_a_stream(Stub(slow, stream_s=0.0), (), 260, 4096, HOSTS) == []
    # sizes the model cannot hold are left out (1536 here)
    assert _beside_a_stream(Stub(prefill), (), 260, 1500, HOSTS) == []


def test_a_stream_that_fails_stops_the_phase_with_its_error():
    with pytest.raises(ConnectionError, match="node gone"):
        _beside_a_stream(Stub(lambda s, st: u("b", 1.0), stream_error=ConnectionError("node gone")), (), 260, 4096,
                         HOSTS)


class Refusal(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "node(s) b did not report"


class Admin:
    """GetProfile(reset=True) fails with `codes` in turn, then succeeds."""

    def __init__(self, *codes):
        self.codes, self.calls = list(codes), 0

    def GetProfile(self, req, metadata=(), timeout=None):
        assert req.reset
        self.calls += 1
        if self.codes:
            raise Refusal(self.codes.pop(0))


def test_the_reset_is_tried_again_while_a_node_does_not_report_and_other_errors_stop_it(capsys):
    admin = Admin(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    _reset(admin, (), tries=3, wait_s=0.0)
    assert admin.calls == 3 and capsys.readouterr().err.count("the reset waits for the nodes") == 2
    with pytest.raises(grpc.RpcError):  # still refused on the last try
        _reset(Admin(*[grpc.StatusCode.UNAVAILABLE] * 3), (), tries=3, wait_s=0.0)
    denied = Admin(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(grpc.RpcError):
        _reset(denied, (), tries=3, wait_s=0.0)
    assert denied.calls == 1
