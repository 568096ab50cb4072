"""The disk writer: writes off the caller's thread, in order, bounded, drained on close; and
the store sends its demotions and write-through copies through it."""

from __future__ import annotations

import threading
import time

from preble_tiered.kvstore.disk import HEADER_SIZE, DiskTier
from preble_tiered.kvstore.disk_writer import DiskWriter
from preble_tiered.kvstore.store import TieredStore
from preble_tiered.kvstore.tiers import BlockKey, DramTier, StoredBlock
from preble_tiered.types import Tier

SIZE = 64


def block(h: int) -> StoredBlock:
    return StoredBlock(BlockKey("m", h), None, bytes([h % 256]) * SIZE)


def test_writes_run_on_the_writers_thread_in_order_and_drain_waits_for_them():
    seen, gate = [], threading.Event()

    def write(b):
        gate.wait(5)
        seen.append((b.key.block_hash, threading.current_thread().name))

    w = DiskWriter(write, max_pending=8)
    assert all(w.submit(block(h)) for h in (1, 2, 3))
    assert seen == [] and w.pending == 3  # the caller never waits for a write
    gate.set()
    assert w.drain(5)
    assert seen == [(1, "preble-disk-writer"), (2, "preble-disk-writer"), (3, "preble-disk-writer")]
    w.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking_and_close_writes_the_rest():
    gate, seen = threading.Event(), []
    w = DiskWriter(lambda b: (gate.wait(5), seen.append(b.key.block_hash)), max_pending=2)
    assert w.submit(block(1))
    deadline = time.monotonic() + 5
    while w.pending != 1 or not w._busy:  # until the thread has taken block 1
        assert time.monotonic() < deadline, "the writer never took the block"
    assert w.submit(block(2)) and w.submit(block(3)) and not w.submit(block(4))
    assert w.dropped == 1
    gate.set()
    w.close()
    assert seen == [1, 2, 3] and not w.submit(block(5))


def test_a_failing_write_does_not_stop_the_writer(caplog):
    seen = []

    def write(b):
        if b.key.block_hash == 1:
            raise OSError("disk on fire")
        seen.append(b.key.block_hash)

    w = DiskWriter(write)
    w.submit(block(1))
    w.submit(block(2))
    assert w.drain(5) and seen == [2] and "disk on fire" in caplog.text
    w.close()


def test_store_demotions_and_write_through_copies_go_through_the_writer(tmp_path):
    disk = DiskTier(tmp_path / "db", 16 * (HEADER_SIZE + SIZE), "m")
    store = TieredStore(DramTier(2 * SIZE), disk, "write_back", namespace="m")
    threads = []

    def write(b):
        threads.append(threading.current_thread().name)
        store.write_to_disk(b)

    store.disk_writer = DiskWriter(write)
    for h in (1, 2, 3, 4):  # 1 and 2 are evicted from DRAM: demoted on the writer's thread
        store.put(block(h))
    assert store.disk_writer.drain(5)
    assert threads == ["preble-disk-writer"] * 2
    assert [h for h in (1, 2, 3, 4) if disk.contains(BlockKey("m", h))] == [1, 2]
    wt = TieredStore(DramTier(8 * SIZE), DiskTier(tmp_path / "db2", 16 * (HEADER_SIZE + SIZE), "m"),
                     "write_through", namespace="m")
    wt.disk_writer = DiskWriter(wt.write_to_disk)
    assert wt.put(block(7)) == (Tier.DRAM,)  # on disk shortly, not yet
    wt.disk_writer.close()
    assert wt.disk.contains(BlockKey("m", 7))
    store.close()
    wt.close()
