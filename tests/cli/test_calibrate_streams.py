"""`preble calibrate`'s background streams against a fake Inference stub (the sweep's client
alone; the real cluster runs them in tests/router/test_admin_e2e.py)."""

from __future__ import annotations

import threading

import grpc
import pytest

from preble_tiered.api.pb import inference_pb2
from preble_tiered.cli.calibrate import MAX_BACKGROUND_STREAMS, Sweep, _run_sweep

SWEEP = Sweep(prompt_sizes=(64, 256, 512), cached_contexts=(0,), batch_sizes=(1, 2), decode_prompts=(64,),
              decode_tokens=8, repeats=3, background_streams=2)


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


class _Call:
    """A server stream: the messages, then (`hold`) nothing until cancelled."""

    def __init__(self, hold: bool) -> None:
        self.hold, self.cancelled = hold, threading.Event()

    def __iter__(self):
        if self.hold:
            if not self.cancelled.wait(10):
                raise AssertionError("a background stream was never cancelled")
            raise _Error(grpc.StatusCode.CANCELLED)
        yield inference_pb2.GenerateResponse(chunk=inference_pb2.GenerateChunk())
        yield inference_pb2.GenerateResponse(
            complete=inference_pb2.GenerateComplete(usage=inference_pb2.Usage(ttft_ms=1.0)))

    def cancel(self) -> None:
        self.cancelled.set()


class _Stub:
    def __init__(self, background_error: grpc.StatusCode | None = None) -> None:
        self.background_error = background_error
        self.background: list[_Call] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.streams_up = threading.Event()  # the prefills wait for both streams, as on a real cluster

    def Generate(self, req, metadata=(), timeout=None):  # noqa: N802 - the gRPC method's name
        with self.lock:
            if req.sampling.max_tokens == SWEEP.background_tokens:
                if self.background_error is not None:
                    raise _Error(self.background_error)
                self.background.append(_Call(hold=True))
                if len(self.background) == SWEEP.background_streams:
                    self.streams_up.set()
                return self.background[-1]
            self.sent += 1
        if self.background_error is None:
            self.streams_up.wait(5)
        return _Call(hold=False)


def test_background_streams_run_beside_the_prefills_and_are_cancelled_with_them():
    stub = _Stub()
    gaps, background = _run_sweep(SWEEP, stub, (), vocab=260, nodes=1, max_len=4096, progress=False)
    assert stub.sent == SWEEP.requests(nodes=1)  # every prefill and decode of the sweep
    assert len(gaps) == len(SWEEP.prefills()) * SWEEP.repeats
    # each stream's request waited on its node until the prefills were done, then was cancelled
    assert background == len(stub.background) == SWEEP.background_streams
    assert all(c.cancelled.is_set() for c in stub.background)


def test_a_background_stream_that_fails_stops_the_sweep_with_its_error():
    stub = _Stub(background_error=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.RpcError) as e:
        _run_sweep(SWEEP, stub, (), vocab=260, nodes=1, max_len=4096, progress=False)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stub.sent < SWEEP.requests(nodes=1)  # no decode batch was sent after it


def test_a_sweep_refuses_more_background_streams_than_client_threads_it_allows():
    Sweep(background_streams=MAX_BACKGROUND_STREAMS).check()
    with pytest.raises(ValueError, match=f"--background-streams must be 0 to {MAX_BACKGROUND_STREAMS}"):
        Sweep(background_streams=MAX_BACKGROUND_STREAMS + 1).check()
