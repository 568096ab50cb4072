"""`BulkEngine.read` against a scripted stand-in for Mooncake's engine: the in-flight window,
where a read stops on a failed, unsubmittable or timed-out block, and what it frees."""

from __future__ import annotations

import pytest

import preble_tiered.transfer.bulk as bulk_mod
from preble_tiered.transfer.bulk import BulkEngine


class ScriptedEngine:
    """Each block is one batch; a batch arrives after `checks_to_arrive` status checks, or
    fails / never ends / cannot be submitted as scripted by the block's index."""

    def __init__(self, checks_to_arrive: int = 2, fail_at: int | None = None, stuck_at: int | None = None,
                 refuse_at: int | None = None) -> None:
        self.checks_to_arrive = checks_to_arrive
        self.fail_at, self.stuck_at, self.refuse_at = fail_at, stuck_at, refuse_at
        self.batches: dict[int, dict] = {}  # batch id -> {index, length, checks, freed}
        self.inflight = self.peak = 0
        self.checks = 0

    def get_rpc_port(self) -> int:
        return 1

    def batch_transfer_async_read(self, session, local, remote, lengths):
        assert len(local) == len(remote) == len(lengths) == 1  # one block per batch
        index = len(self.batches)
        if index == self.refuse_at:
            return 0
        batch = 0x1000 + index
        self.batches[batch] = {"index": index, "length": lengths[0], "checks": 0, "freed": False}
        self.inflight += lengths[0]
        self.peak = max(self.peak, self.inflight)
        return batch

    def transfer_check_status(self, batch):
        b = self.batches[batch]
        assert not b["freed"], "checked a batch after Mooncake freed it"
        self.checks += 1
        b["checks"] += 1
        if b["index"] == self.stuck_at:
            return 0
        if b["index"] == self.fail_at:
            b["freed"] = True
            self.inflight -= b["length"]
            return -1
        if b["checks"] >= self.checks_to_arrive:
            b["freed"] = True
            self.inflight -= b["length"]
            return 1
        return 0


def read(engine: ScriptedEngine, n: int, length: int = 100) -> int:
    return BulkEngine(engine, "127.0.0.1", "tcp").read("peer:1", list(range(n)), list(range(n)), [length] * n)


def test_every_block_arrives_and_every_batch_is_freed_within_the_in_flight_window(monkeypatch):
    monkeypatch.setattr(bulk_mod, "MAX_INFLIGHT_BYTES", 300)
    eng = ScriptedEngine()
    assert read(eng, 10) == 10
    assert len(eng.batches) == 10 and all(b["freed"] for b in eng.batches.values())
    assert eng.peak == 300  # three blocks of 100 in flight at most, and the window was used


def test_a_block_larger_than_the_window_is_still_read_alone(monkeypatch):
    monkeypatch.setattr(bulk_mod, "MAX_INFLIGHT_BYTES", 50)
    eng = ScriptedEngine()
    assert read(eng, 3) == 3 and eng.peak == 100


def test_a_failed_block_stops_the_read_there_and_what_already_ended_after_it_is_freed():
    eng = ScriptedEngine(checks_to_arrive=1, fail_at=3)
    assert read(eng, 8) == 3
    # blocks 4.. were submitted (the window is large) and had ended: the stop freed them
    assert all(b["freed"] for b in eng.batches.values())


def test_a_block_that_cannot_be_submitted_ends_the_read_after_those_in_flight():
    eng = ScriptedEngine(refuse_at=5)
    assert read(eng, 8) == 5
    assert len(eng.batches) == 5 and all(b["freed"] for b in eng.batches.values())


def test_a_block_that_never_ends_times_the_read_out(monkeypatch):
    monkeypatch.setattr(bulk_mod, "READ_TIMEOUT_S", 0.05)
    eng = ScriptedEngine(stuck_at=2)
    assert read(eng, 5) == 2
    assert not eng.batches[0x1002]["freed"]  # still in flight: Mooncake still owns it


def test_the_read_sleeps_between_checks_instead_of_spinning(monkeypatch):
    sleeps = []
    monkeypatch.setattr(bulk_mod.time, "sleep", sleeps.append)
    eng = ScriptedEngine(checks_to_arrive=3)
    assert read(eng, 4) == 4
    # block 0 needs 3 checks (2 sleeps); each later one was checked again after each sleep
    assert sleeps and all(s == pytest.approx(bulk_mod.POLL_S) for s in sleeps)
    assert len(sleeps) == eng.checks - 4  # every check that did not find its block arrived slept once


def test_a_closed_engine_reads_nothing():
    engine = BulkEngine(ScriptedEngine(), "127.0.0.1", "tcp")
    engine._engine = None
    assert engine.read("peer:1", [1], [1], [100]) == 0
