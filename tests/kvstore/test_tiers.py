"""DRAM and disk tiers: exact LRU order, pins, events, checksums, restarts, degraded mode."""

from __future__ import annotations

import logging

import pytest
from rocksdict import Options, Rdict

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored
from preble_tiered.kvstore.disk import HEADER_SIZE, DiskTier, decode_value, encode_header
from preble_tiered.kvstore.tiers import BlockKey, DramTier, StoredBlock, parents_first
from preble_tiered.types import Tier

NS = "m"


def key(h: int, ns: str = NS) -> BlockKey:
    return BlockKey(ns, h)


def make_block(h: int, parent: int | None = None, size: int = 10, ns: str = NS) -> StoredBlock:
    return StoredBlock(key(h, ns), parent, bytes([h % 256]) * size)


def hashes_of(keys: list[BlockKey]) -> list[int]:
    return [k.block_hash for k in keys]


def disk_cap(n_blocks: int, size: int = 10) -> int:
    return n_blocks * (HEADER_SIZE + size)


# -- DRAM -------------------------------------------------------------------------------

def test_dram_evicts_least_recently_used_in_exact_order():
    t = DramTier(30)
    for h in (1, 2, 3):
        assert t.put(make_block(h)) == []
    assert t.get(key(1)) is not None  # 1 becomes most recent
    assert [b.key.block_hash for b in t.put(make_block(4))] == [2]
    assert [b.key.block_hash for b in t.put(make_block(5))] == [3]
    assert hashes_of(t.lru_order()) == [1, 4, 5]
    big = t.put(make_block(6, size=20))  # needs two victims
    assert [b.key.block_hash for b in big] == [1, 4]
    assert hashes_of(t.lru_order()) == [5, 6]
    assert t.used_bytes == 30
    assert t.stats()["evictions"] == 4


def test_dram_pinned_blocks_survive_and_full_pins_return_none():
    t = DramTier(30)
    for h in (1, 2, 3):
        t.put(make_block(h))
    assert t.pin(key(1)) is True
    assert [b.key.block_hash for b in t.put(make_block(4))] == [2]
    t.pin(key(3))
    t.pin(key(4))
    before = t.lru_order()
    assert t.put(make_block(5)) is None  # nothing evictable: a return value, not an error
    assert t.lru_order() == before and t.stats()["rejected"] == 1
    t.unpin(key(1))
    assert [b.key.block_hash for b in t.put(make_block(5))] == [1]


def test_unpin_below_zero_raises_and_pin_of_absent_key_is_false():
    t = DramTier(100)
    t.put(make_block(1))
    assert t.pin(key(2)) is False
    t.pin(key(1))
    t.pin(key(1))
    t.unpin(key(1))
    t.unpin(key(1))
    with pytest.raises(RuntimeError):
        t.unpin(key(1))
    with pytest.raises(RuntimeError):
        t.unpin(key(2))


def test_put_larger_than_capacity_raises():
    with pytest.raises(ValueError, match="exceeds"):
        DramTier(10).put(make_block(1, size=11))


def test_dram_get_returns_the_stored_buffer_without_copying():
    t = DramTier(100)
    data = bytes(range(10))
    view = memoryview(bytearray(20))
    t.put(StoredBlock(key(1), None, data))
    t.put(StoredBlock(key(2), 1, view))
    assert t.get(key(1)).data is data
    assert t.get(key(2)).data is view
    assert t.used_bytes == 30


def test_put_of_a_held_key_only_refreshes_it():
    t = DramTier(30)
    first = make_block(1)
    t.put(first)
    t.put(make_block(2))
    t.take_events()
    assert t.put(make_block(1)) == []
    assert hashes_of(t.lru_order()) == [2, 1]
    assert t.get(key(1)) is first and t.take_events() == []


def test_remove_refuses_pinned_and_reports_events():
    t = DramTier(100)
    t.put(make_block(1))
    t.pin(key(1))
    with pytest.raises(RuntimeError):
        t.remove(key(1))
    t.unpin(key(1))
    assert t.remove(key(1)) is True and t.remove(key(1)) is False
    assert t.take_events() == [BlockStored(0, Tier.DRAM, (1,), None), BlockRemoved(0, Tier.DRAM, (1,))]


def test_events_coalesce_chains_and_drain_once():
    t = DramTier(40)
    for h, p in ((1, None), (2, 1), (3, 2), (9, None)):
        t.put(make_block(h, p))
    assert t.take_events() == [BlockStored(0, Tier.DRAM, (1, 2, 3), None), BlockStored(0, Tier.DRAM, (9,), None)]
    assert t.take_events() == []
    t.put(make_block(4, 3, size=20))  # evicts 1 and 2
    assert t.take_events() == [BlockRemoved(0, Tier.DRAM, (1, 2)), BlockStored(0, Tier.DRAM, (4,), 3)]


def test_keys_list_parents_before_children_whatever_the_lru_order():
    t = DramTier(100)
    for h, p in ((1, None), (2, 1), (3, 2), (7, 1)):
        t.put(make_block(h, p))
    t.get(key(1))
    assert hashes_of(t.lru_order()) == [2, 3, 7, 1]
    assert [(k.block_hash, p) for k, p in t.keys()] == [(1, None), (2, 1), (3, 2), (7, 1)]


def test_parents_first_keeps_cycles_and_orphans():
    items = [(key(2), 1), (key(1), 2), (key(5), 4), (key(4), None)]
    assert [k.block_hash for k, _ in parents_first(items)] == [4, 5, 2, 1]


def test_dram_stats_count_hits_and_misses():
    t = DramTier(100)
    t.put(make_block(1))
    t.get(key(1))
    t.get(key(2))
    s = t.stats()
    assert (s["hits"], s["misses"], s["bytes"], s["blocks"], s["capacity"]) == (1, 1, 10, 1, 100)


# -- disk -------------------------------------------------------------------------------

def test_disk_round_trip_keeps_data_and_parent(tmp_path):
    t = DiskTier(tmp_path / "db", disk_cap(4), NS)
    t.put(make_block(1))
    t.put(make_block(2, 1))
    got = t.get(key(2))
    assert bytes(got.data) == make_block(2).data and got.parent == 1
    assert t.get(key(3)) is None
    assert t.used_bytes == disk_cap(2)
    t.close()


def test_disk_capacity_bound_and_lru_eviction(tmp_path):
    t = DiskTier(tmp_path / "db", disk_cap(3), NS)
    for h in (1, 2, 3):
        t.put(make_block(h))
    t.get(key(1))
    evicted = t.put(make_block(4))
    assert [(b.key.block_hash, b.data) for b in evicted] == [(2, b"")]  # last tier: data not read back
    assert hashes_of(t.lru_order()) == [3, 1, 4]
    assert t.used_bytes == disk_cap(3) <= t.capacity_bytes
    assert t._db.get(t._data_key(key(2))) is None and t._db.get(t._meta_key(key(2))) is None
    with pytest.raises(ValueError, match="exceeds"):
        t.put(make_block(9, size=disk_cap(3)))
    t.close()


def test_disk_corrupt_block_is_dropped_counted_and_reported(tmp_path, caplog):
    t = DiskTier(tmp_path / "db", disk_cap(4), NS)
    t.put(make_block(1))
    t.put(make_block(2, 1))
    t.take_events()
    dkey = t._data_key(key(2))
    raw = bytearray(t._db.get(dkey))
    raw[-1] ^= 0xFF
    t._db.put(dkey, bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert t.get(key(2)) is None
    assert "checksum" in caplog.text
    assert t.stats()["corrupt"] == 1 and not t.contains(key(2))
    assert t.take_events() == [BlockRemoved(0, Tier.DISK, (2,))]
    assert t._db.get(dkey) is None
    assert t.get(key(1)) is not None
    t.close()


def test_disk_corruption_written_through_a_second_handle(tmp_path):
    path = str(tmp_path / "db")
    t = DiskTier(path, disk_cap(4), NS)
    t.put(make_block(1))
    dkey = t._data_key(key(1))
    t.close()
    db = Rdict(path, Options(raw_mode=True))
    db.put(dkey, b"garbage")
    db.close()
    t = DiskTier(path, disk_cap(4), NS)
    assert t.contains(key(1))  # only the metadata is scanned on open
    assert t.get(key(1)) is None and t.stats()["corrupt"] == 1
    assert t.take_events()[-1] == BlockRemoved(0, Tier.DISK, (1,))
    t.close()


def test_disk_bit_flip_inside_an_sst_file_is_caught_by_the_block_checksum(tmp_path):
    """Reads skip RocksDB's own block CRC (the tier's xxh3 covers the same bytes): a flip in
    the file itself, under a fresh handle that maps it, must still be a counted miss."""
    path = tmp_path / "db"
    t = DiskTier(path, disk_cap(4, 4096), NS)
    t.put(StoredBlock(key(1), None, b"\xab" * 4096))
    t.put(StoredBlock(key(2), 1, b"\xcd" * 4096))
    t.close()
    flipped = 0
    for sst in path.glob("*.sst"):
        raw = bytearray(sst.read_bytes())
        at = raw.find(b"\xcd" * 4096)
        if at >= 0:
            raw[at + 2048] ^= 0x01
            sst.write_bytes(bytes(raw))
            flipped += 1
    assert flipped == 1
    t = DiskTier(path, disk_cap(4, 4096), NS)
    assert t.get(key(2)) is None
    assert t.stats()["corrupt"] == 1 and not t.contains(key(2))
    assert bytes(t.get(key(1)).data) == b"\xab" * 4096
    t.close()


def test_disk_metadata_record_that_disagrees_with_its_block_is_dropped_on_read(tmp_path):
    path = str(tmp_path / "db")
    t = DiskTier(path, disk_cap(4), NS)
    t.put(make_block(1))
    t.put(make_block(2, 1))
    dkey, mkey = t._data_key(key(2)), t._meta_key(key(2))
    t.close()
    db = Rdict(path, Options(raw_mode=True))
    db.put(mkey, encode_header(dkey, 7, make_block(2).data))  # a well-formed record, wrong parent
    db.close()
    t = DiskTier(path, disk_cap(4), NS)
    assert dict(t.keys())[key(2)] == 7  # the scan believes the record ...
    assert t.get(key(2)) is None  # ... the read does not serve a block that disagrees with it
    assert t.stats()["corrupt"] == 1 and not t.contains(key(2))
    assert t.get(key(1)) is not None
    t.close()


def test_disk_metadata_record_with_an_impossible_length_is_dropped_not_trimmed_against(tmp_path):
    """A record claiming a block larger than the whole tier would make the reopen trim every
    block ahead of it to "fit"; it is dropped as corrupt instead and the rest survive."""
    path = str(tmp_path / "db")
    t = DiskTier(path, disk_cap(8), NS)
    for h, p in ((1, None), (2, 1), (3, 2)):
        t.put(make_block(h, p))
    mkey = t._meta_key(key(1))
    t.close()
    db = Rdict(path, Options(raw_mode=True))
    raw = bytearray(db.get(mkey))
    raw[21] ^= 0x01  # a high byte of the length field: ~1 TB
    db.put(mkey, bytes(raw))
    db.close()
    t = DiskTier(path, disk_cap(8), NS)
    assert sorted(k.block_hash for k, _ in t.keys()) == [2, 3]
    assert t.stats()["corrupt"] == 1 and t.used_bytes == disk_cap(2)
    assert bytes(t.get(key(3)).data) == make_block(3).data
    t.close()


_TRUNCATED_SST_SCRIPT = r"""
import os, sys, pathlib
from preble_tiered.kvstore.base import BlockKey, StoredBlock
from preble_tiered.kvstore.disk import DiskTier
path = pathlib.Path(sys.argv[1])
t = DiskTier(path, 64 << 20, "ns")
for h in range(1, 101):
    t.put(StoredBlock(BlockKey("ns", h), None, bytes([h]) * 65536))
t.close()
t = DiskTier(path, 64 << 20, "ns")
assert t.get(BlockKey("ns", 2)) is not None  # the file is open now
for sst in path.glob("*.sst"):
    os.truncate(sst, os.path.getsize(sst) // 2)
got = t.get(BlockKey("ns", 90))  # its bytes are past the cut
print(int(got is None), t.stats()["read_errors"] + t.stats()["corrupt"], flush=True)
t.close()
"""


def test_an_sst_file_truncated_under_an_open_tier_costs_a_miss_not_the_process(tmp_path):
    """Reads do not map the files by default: a truncated file is a failed read, not SIGBUS."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TRUNCATED_SST_SCRIPT, str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    missed, counted = map(int, proc.stdout.split())
    assert missed == 1 and counted >= 1


def assert_parents_first(pairs):
    seen: set[int] = set()
    present = {k.block_hash for k, _ in pairs}
    for k, parent in pairs:
        assert parent is None or parent not in present or parent in seen
        seen.add(k.block_hash)


def test_disk_restart_comes_back_warm(tmp_path):
    path = tmp_path / "db"
    t = DiskTier(path, disk_cap(8), NS)
    for h, p in ((1, None), (2, 1), (3, 2), (10, None)):
        t.put(make_block(h, p))
    before_data = {k: bytes(t.get(k).data) for k, _ in t.keys()}
    before_keys = sorted(t.keys(), key=lambda kp: kp[0].block_hash)
    t.close()
    t.close()  # idempotent

    t = DiskTier(path, disk_cap(8), NS)
    assert t.take_events() == [
        AllBlocksCleared(0, Tier.DISK),
        BlockStored(0, Tier.DISK, (1, 2, 3), None),
        BlockStored(0, Tier.DISK, (10,), None),
    ]
    assert sorted(t.keys(), key=lambda kp: kp[0].block_hash) == before_keys
    assert_parents_first(t.keys())
    assert hashes_of(t.lru_order()) == [10, 3, 2, 1]  # no use times survive: chain tails go first
    assert {k: bytes(t.get(k).data) for k, _ in t.keys()} == before_data
    assert t.used_bytes == disk_cap(4)
    t.close()


def test_disk_reopened_smaller_trims_to_capacity(tmp_path):
    path = tmp_path / "db"
    t = DiskTier(path, disk_cap(4), NS)
    for h, p in ((1, None), (2, 1), (3, 2), (4, 3)):
        t.put(make_block(h, p))
    t.close()
    t = DiskTier(path, disk_cap(2), NS)
    assert [k.block_hash for k, _ in t.keys()] == [1, 2]
    assert t.used_bytes == disk_cap(2)
    t.close()
    assert [k.block_hash for k, _ in DiskTier(path, disk_cap(4), NS).keys()] == [1, 2]


class _FailingWrites:
    """A db handle whose writes fail like a full disk; reads go to the real db."""

    def __init__(self, db):
        self._db = db

    def write(self, *args, **kwargs):
        raise Exception("IO error: No space left on device")

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_disk_write_failure_degrades_without_raising(tmp_path, caplog):
    t = DiskTier(tmp_path / "db", disk_cap(4), NS)
    t.put(make_block(1))
    real = t._db
    t._db = _FailingWrites(real)
    with caplog.at_level(logging.WARNING):
        assert t.put(make_block(2)) is None
        assert t.put(make_block(3)) is None
    assert t.degraded and t.stats()["degraded"] == 1 and t.stats()["write_errors"] == 1
    assert caplog.text.count("disabling disk writes") == 1
    assert not t.contains(key(2)) and t.used_bytes == disk_cap(1)
    assert bytes(t.get(key(1)).data) == make_block(1).data  # reads still work
    t._db = real
    t.close()


def test_disk_namespaces_share_a_db_without_mixing(tmp_path):
    path = tmp_path / "db"
    a = DiskTier(path, disk_cap(4), "a")
    a.put(make_block(1, ns="a"))
    with pytest.raises(ValueError, match="namespace"):
        a.put(make_block(2, ns="b"))
    a.close()
    b = DiskTier(path, disk_cap(4), "b")
    assert b.keys() == []
    b.put(make_block(2, ns="b"))
    b.close()
    a = DiskTier(path, disk_cap(4), "a")
    assert a.keys() == [(key(1, "a"), None)]
    a.close()
    with pytest.raises(ValueError, match="x00"):
        DiskTier(path, disk_cap(4), "bad\x00ns")


def test_disk_use_after_close_raises(tmp_path):
    t = DiskTier(tmp_path / "db", disk_cap(4), NS)
    t.put(make_block(1))
    t.close()
    with pytest.raises(RuntimeError, match="closed"):
        t.get(key(1))


def test_value_codec_rejects_truncation_and_foreign_keys():
    data = b"kv-bytes"
    header = encode_header(b"k1", 7, data)
    assert len(header) == HEADER_SIZE
    parent, view = decode_value(b"k1", header + data)
    assert parent == 7 and bytes(view) == data
    assert decode_value(b"k1", header + data[:-1]) is None
    assert decode_value(b"k2", header + data) is None  # a value moved under another key
    assert decode_value(b"k1", b"short") is None


def test_disk_large_blocks_survive_restart(tmp_path):
    path = tmp_path / "db"
    size = 256 * 1024  # above the blob threshold: stored in RocksDB blob files
    t = DiskTier(path, disk_cap(3, size), NS)
    blocks = [make_block(h, h - 1 if h > 1 else None, size=size) for h in (1, 2, 3)]
    for b in blocks:
        t.put(b)
    t.close()
    t = DiskTier(path, disk_cap(3, size), NS)
    assert [bytes(t.get(b.key).data) for b in blocks] == [b.data for b in blocks]
    assert t.stats()["corrupt"] == 0
    t.close()


_FULL_DISK_SCRIPT = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))  # every file this process writes: <= 3 MiB
from preble_tiered.kvstore.base import BlockKey, StoredBlock
from preble_tiered.kvstore.disk import DiskTier
t = DiskTier(sys.argv[1], 256 << 20, "ns")
accepted = 0
for i in range(600):  # 150 MiB of blocks: RocksDB's memtable flushes fail long before that
    if t.put(StoredBlock(BlockKey("ns", i + 1), None, bytes([i % 251]) * (256 << 10))) is None:
        break
    accepted += 1
first = t.get(BlockKey("ns", 1))
print(accepted, int(t.degraded), t.stats()["write_errors"], int(first is not None and bytes(first.data[:1]) == b"\0"))
t.close()  # must not raise on the full disk
print("closed")
"""


def test_a_really_full_disk_degrades_the_tier_and_close_still_succeeds(tmp_path):
    """Not a fake: RocksDB itself hits EFBIG (a per-process file-size limit stands in for a
    full disk, no root needed), its flush fails, and the tier turns degraded."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path / "db")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split()
    accepted, degraded, errors, readable = map(int, lines[:4])
    assert degraded == 1 and errors >= 1 and 0 < accepted < 600
    assert readable == 1  # what was accepted stays readable while the process lives
    assert lines[4] == "closed" and "disabling disk writes" in out.stderr


def test_disk_tier_written_for_another_model_is_emptied_not_served(tmp_path, caplog):
    path = tmp_path / "db"
    t = DiskTier(path, disk_cap(8), NS, fingerprint="model-a")
    t.put(make_block(1))
    t.put(make_block(2, 1))
    t.close()

    t = DiskTier(path, disk_cap(8), NS, fingerprint="model-a")  # the same model: warm
    assert sorted(hashes_of([k for k, _ in t.keys()])) == [1, 2]
    t.close()

    with caplog.at_level(logging.WARNING):
        t = DiskTier(path, disk_cap(8), NS, fingerprint="model-b")
    assert t.keys() == [] and t.used_bytes == 0 and t.get(key(1)) is None
    assert "written for model-a, not model-b" in caplog.text
    t.put(make_block(3))
    t.close()
    t = DiskTier(path, disk_cap(8), NS, fingerprint="model-b")
    assert hashes_of([k for k, _ in t.keys()]) == [3]
    t.close()


def test_disk_tier_without_a_recorded_fingerprint_is_emptied_when_one_is_given(tmp_path):
    path = tmp_path / "db"
    t = DiskTier(path, disk_cap(8), NS)  # no fingerprint: no check, nothing recorded
    t.put(make_block(1))
    t.close()
    t = DiskTier(path, disk_cap(8), NS)
    assert hashes_of([k for k, _ in t.keys()]) == [1]
    t.close()
    t = DiskTier(path, disk_cap(8), NS, fingerprint="model-a")
    assert t.keys() == []
    t.close()
