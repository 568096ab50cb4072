"""`BulkEngine.read` against a scripted stand-in for Mooncake's engine: the in-flight window,
where a read stops on a failed, unsubmittable or timed-out block, what it frees, and how long
the slots of blocks still in flight after a stop stay quarantined."""

from __future__ import annotations

import pytest

import preble_tiered.transfer.bulk as bulk_mod
from preble_tiered.transfer.bulk import BulkEngine


class ScriptedEngine:
    """Each block is one batch; a batch arrives after `checks_to_arrive` status checks, or
    fails / never ends / cannot be submitted as scripted by the block's index."""

    def __init__(self, checks_to_arrive: int = 2, fail_at: int | None = None, stuck: tuple[int, ...] = (),
                 refuse_at: int | None = None, late: tuple[int, ...] = (), raise_at_check: int | None = None) -> None:
        self.checks_to_arrive = checks_to_arrive
        self.fail_at, self.stuck, self.refuse_at = fail_at, set(stuck), refuse_at
        self.late = set(late)  # blocks reporting TIMEOUT (-2): a slice is late, the batch may still write
        self.raise_at_check = raise_at_check
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
        if self.checks == self.raise_at_check:
            raise RuntimeError("the engine failed")
        b["checks"] += 1
        if b["index"] in self.stuck:
            return 0
        if b["index"] in self.late:
            return -2
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
    eng = ScriptedEngine(stuck=(2,))
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


class Slot:
    """Stands for a pool slot's view; the quarantine only keeps a reference to it."""


def test_quarantined_slots_stay_held_while_a_stopped_reads_block_is_in_flight_into_them():
    eng = ScriptedEngine(checks_to_arrive=1, fail_at=2, stuck=(4, 5))
    bulk = BulkEngine(eng, "127.0.0.1", "tcp")
    slots = [(0x9000 + i, Slot()) for i in range(6)]
    assert bulk.read("peer:1", [a for a, _ in slots], list(range(6)), [100] * 6) == 2
    bulk.quarantine(slots[2:], hold_s=0.0)  # the caller keeps the slots of what did not arrive
    assert len(bulk._quarantine) == 1  # blocks 4 and 5 may still write into their slots
    eng.stuck.discard(4)
    bulk.quarantine([], hold_s=0.0)
    assert len(bulk._quarantine) == 1  # block 5 has not ended
    eng.stuck.discard(5)
    assert bulk.read("peer:1", [], [], []) == 0  # a later read releases what has ended
    assert bulk._quarantine == [] and bulk._unended == {}
    assert all(b["freed"] for b in eng.batches.values())  # the late blocks' batches were freed too


def test_quarantined_slots_with_nothing_in_flight_are_held_for_the_hold_time_only():
    eng = ScriptedEngine(checks_to_arrive=1, fail_at=1)
    bulk = BulkEngine(eng, "127.0.0.1", "tcp")
    slots = [(0x9000 + i, Slot()) for i in range(3)]
    assert bulk.read("peer:1", [a for a, _ in slots], list(range(3)), [100] * 3) == 1
    bulk.quarantine(slots[1:], hold_s=60.0)
    bulk.quarantine([], hold_s=0.0)
    assert len(bulk._quarantine) == 1  # within its hold
    bulk.quarantine(slots[:1], hold_s=0.0)  # past its (zero) hold and nothing in flight: released next time
    bulk.quarantine([], hold_s=0.0)
    assert len(bulk._quarantine) == 1 and bulk._quarantine[0][1] == slots[1:]


def test_a_block_reported_late_is_waited_for_and_its_slot_held_as_in_flight(monkeypatch):
    monkeypatch.setattr(bulk_mod, "READ_TIMEOUT_S", 0.05)
    eng = ScriptedEngine(checks_to_arrive=1, late=(1,))
    bulk = BulkEngine(eng, "127.0.0.1", "tcp")
    slots = [(0x9000 + i, Slot()) for i in range(3)]
    assert bulk.read("peer:1", [a for a, _ in slots], list(range(3)), [100] * 3) == 1
    assert eng.batches[0x1001]["checks"] > 1  # -2 did not stop the read: only the deadline did
    bulk.quarantine(slots[1:], hold_s=0.0)
    bulk.quarantine([], hold_s=0.0)
    assert len(bulk._quarantine) == 1 and 0x9001 in bulk._unended  # still able to write: held


def test_a_read_that_raises_still_holds_the_slots_of_what_it_submitted():
    eng = ScriptedEngine(checks_to_arrive=5, raise_at_check=3)
    bulk = BulkEngine(eng, "127.0.0.1", "tcp")
    slots = [(0x9000 + i, Slot()) for i in range(4)]
    with pytest.raises(RuntimeError):
        bulk.read("peer:1", [a for a, _ in slots], list(range(4)), [100] * 4)
    assert set(bulk._unended) == {a for a, _ in slots}  # nothing had arrived; all may still write
