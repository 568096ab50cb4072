"""Disk tier: KV blocks in RocksDB (rocksdict), checksummed, LRU-bounded, warm on restart.

Layout in the db (raw bytes keys and values; one db may hold several namespaces):

    namespace + b"\\0" + hash (8 bytes, big-endian) -> header (32 B) + data   the block
    namespace + b"\\1" + hash (8 bytes, big-endian) -> header (32 B)          its metadata
    namespace + b"\\2fingerprint"                  -> what wrote the blocks (model, layout)

    header = magic "PBKV" | version u8 | flags u8 (bit 0: has parent) | reserved u16
             | parent u64 | data length u64 | checksum u64            (little-endian)
    checksum = xxh3_64(key || header[:24] || data)

The metadata copy lets a reopened tier rebuild its index by scanning 32-byte records
instead of every block's data. A block and its metadata are written and deleted in one
WriteBatch (with its evictions), so they never disagree after a crash. Every read
verifies the checksum; a bad block is dropped (counted, logged, reported as BlockRemoved)
and the read is a miss, so the caller recomputes.

Capacity counts header + data bytes of live blocks; RocksDB reclaims deleted space at
compaction, so the files may briefly exceed it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

import xxhash
from rocksdict import DBCompressionType, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from preble_tiered.kvstore.base import BlockKey, StoredBlock, parents_first
from preble_tiered.kvstore.lru import IndexEntry, LruTier
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)

MAGIC = b"PBKV"
VERSION = 1
_PREFIX = struct.Struct("<4sBBHQQ")  # magic, version, flags, reserved, parent, length
HEADER_SIZE = _PREFIX.size + 8  # + checksum
_HAS_PARENT = 0x1
_DATA_SEP = b"\x00"
_META_SEP = b"\x01"
_FINGERPRINT_KEY = b"\x02fingerprint"


@dataclass(frozen=True, slots=True)
class BlockHeader:
    parent: int | None
    length: int
    checksum: int


def _checksum(db_key: bytes, prefix: bytes, data: bytes | memoryview) -> int:
    h = xxhash.xxh3_64()
    h.update(db_key)
    h.update(prefix)
    h.update(data)
    return h.intdigest()


def encode_header(db_key: bytes, parent: int | None, data: bytes | memoryview) -> bytes:
    """The 32-byte header for `data` stored under `db_key`."""
    flags = 0 if parent is None else _HAS_PARENT
    prefix = _PREFIX.pack(MAGIC, VERSION, flags, 0, parent or 0, memoryview(data).nbytes)
    return prefix + _checksum(db_key, prefix, data).to_bytes(8, "little")


def decode_header(raw: bytes) -> BlockHeader | None:
    """Parse a header; None if it is not one this version wrote."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, version, flags, _, parent, length = _PREFIX.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        return None
    checksum = int.from_bytes(raw[_PREFIX.size : HEADER_SIZE], "little")
    return BlockHeader(parent if flags & _HAS_PARENT else None, length, checksum)


def decode_value(db_key: bytes, value: bytes) -> tuple[int | None, memoryview] | None:
    """(parent, data) of a stored value, or None if it fails any check."""
    header = decode_header(value)
    if header is None or len(value) != HEADER_SIZE + header.length:
        return None
    data = memoryview(value)[HEADER_SIZE:]  # a view: no copy of the block
    if _checksum(db_key, value[: _PREFIX.size], data) != header.checksum:
        return None
    return header.parent, data


def _db_options(mmap_reads: bool = False) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    # KV tensors barely compress; compression would only cost CPU on the load path.
    opts.set_compression_type(DBCompressionType.none())
    # Blocks live in the SST files, not in blob files: measured on 256 KiB blocks (flushed, page
    # cache warm), blob files read at 1.0 GB/s and write at 0.5 GB/s, SSTs at 2.9 and 0.75 GB/s
    # (benchmarks/tiers_bandwidth.py). Loads are on the TTFT path; compaction's rewrites are not.
    opts.set_keep_log_file_num(2)
    # Opt-in: map the SST files, so a get is one copy out of the page cache instead of a read
    # into a heap buffer and a copy out of it (4.8 -> 5.9 GB/s here). Off by default: a
    # mapped file that is truncated underneath, or a page the disk fails to read, raises
    # SIGBUS and kills the node, where a read() fails and the tier counts a miss.
    opts.set_allow_mmap_reads(mmap_reads)
    return opts


def _get_options() -> ReadOptions:
    """Point reads of blocks: no RocksDB block checksum, no block cache.

    Every value carries its own xxh3 over key, header and data, verified on each read, so
    RocksDB's per-block CRC would check the same bytes a second time. Blocks are read once
    per load and then live in the engine or the DRAM tier, so caching them in RocksDB's block
    cache would only evict its index blocks.
    """
    opts = ReadOptions()
    opts.set_verify_checksums(False)
    opts.fill_cache(False)
    return opts


class DiskTier(LruTier):
    """An LRU-bounded block store on local disk for one namespace.

    On open the index is rebuilt from the db, so a restarted node comes back warm: `keys()`
    lists what is on disk, and the first `take_events()` yields AllBlocksCleared(DISK)
    followed by BlockStored for every block found (a self-contained resync for the router).
    The rebuilt LRU order puts descendants before their ancestors, so chain tails go first.

    Write failures (disk full, I/O errors) never raise: the first one is logged, the tier
    turns `degraded` and every later `put` returns None, so the node carries on DRAM-only.
    Reads keep working. Degraded is sticky until the tier is reopened.

    Args:
        path: the RocksDB directory (created if missing).
        capacity_bytes: bound on header + data bytes of live blocks.
        namespace: the model namespace this tier serves; other namespaces in the same db
            are left alone.
        disable_wal: skip RocksDB's write-ahead log (no second write of every block). A clean `close`
            flushes; a crash loses only the most recent blocks, which is fine for a cache.
        mmap_reads: map the SST files for reads (faster; a truncated file or a disk read
            error then kills the process with SIGBUS instead of costing a miss).
        fingerprint: what the blocks are valid for (the model's files, the KV layout). A tier
            reopened with another fingerprint, or a non-empty one where none was recorded,
            held blocks of something else that may have the same hashes: its blocks of this
            namespace are deleted, not served. Empty: no check.
    """

    def __init__(self, path: str | os.PathLike[str], capacity_bytes: int, namespace: str = "", *,
                 disable_wal: bool = True, mmap_reads: bool = False, fingerprint: str = "") -> None:
        if _DATA_SEP.decode() in namespace or _META_SEP.decode() in namespace:
            raise ValueError(f"namespace {namespace!r} must not contain \\x00 or \\x01 (they separate db keys)")
        super().__init__(Tier.DISK, capacity_bytes)
        self.namespace = namespace
        self.path = os.fspath(path)
        self._ns = namespace.encode("utf-8")
        self._degraded = False
        self._write_opts = WriteOptions()
        self._write_opts.disable_wal = disable_wal
        self._get_opts = _get_options()
        self._db: Rdict | None = Rdict(self.path, _db_options(mmap_reads))
        if not fingerprint or self._claim(fingerprint.encode("utf-8")):
            self._rebuild()

    # -- keys -----------------------------------------------------------------------------
    def _data_key(self, key: BlockKey) -> bytes:
        return self._ns + _DATA_SEP + key.block_hash.to_bytes(8, "big")

    def _meta_key(self, key: BlockKey) -> bytes:
        return self._ns + _META_SEP + key.block_hash.to_bytes(8, "big")

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"DiskTier at {self.path} is closed")
        return self._db

    # -- LruTier hooks --------------------------------------------------------------------
    def _size_of(self, block: StoredBlock) -> int:
        return HEADER_SIZE + block.nbytes

    def put(self, block: StoredBlock) -> list[StoredBlock] | None:
        if block.key.namespace != self.namespace:
            raise ValueError(
                f"block namespace {block.key.namespace!r} does not match the disk tier's "
                f"{self.namespace!r}; open one DiskTier per namespace"
            )
        return super().put(block)

    def _write(self, block: StoredBlock, size: int, victims: list[BlockKey]) -> IndexEntry | None:
        db = self._open_db()
        if self._degraded:
            return None
        batch = self._delete_batch(victims)
        dkey = self._data_key(block.key)
        header = encode_header(dkey, block.parent, block.data)
        batch.put(dkey, b"".join((header, block.data)))
        batch.put(self._meta_key(block.key), header)
        try:
            db.write(batch, self._write_opts)
        except Exception as exc:  # rocksdict raises a bare Exception for I/O errors
            self._degrade("write", exc)
            return None
        return IndexEntry(size=size, parent=block.parent)

    def _read(self, key: BlockKey, entry: IndexEntry) -> StoredBlock | None:
        db = self._open_db()
        dkey = self._data_key(key)
        try:
            value = db.get(dkey, read_opt=self._get_opts)
        except Exception as exc:  # an I/O error: a miss, but the block may be fine
            self._counters["read_errors"] += 1
            logger.warning("disk tier at %s: read failed (%s); treating as a miss", self.path, exc)
            return None
        decoded = None if value is None else decode_value(dkey, value)
        # The value must also agree with what the index was told (from its metadata record).
        if decoded is None or decoded[0] != entry.parent or HEADER_SIZE + len(decoded[1]) != entry.size:
            self._drop_corrupt(key)
            return None
        return StoredBlock(key, decoded[0], decoded[1])

    def _erase(self, key: BlockKey) -> None:
        self._erase_many([key])

    def _delete_batch(self, keys: list[BlockKey]) -> WriteBatch:
        batch = WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(self._data_key(key))
            batch.delete(self._meta_key(key))
        return batch

    # -- failure handling -----------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        """True once a write failed; the tier then stores nothing new."""
        return self._degraded

    def _degrade(self, what: str, exc: Exception) -> None:
        self._counters["write_errors"] += 1
        if not self._degraded:
            self._degraded = True
            logger.warning("disk tier at %s: %s failed (%s); disabling disk writes, continuing DRAM-only",
                           self.path, what, exc)

    def _drop_corrupt(self, key: BlockKey) -> None:
        self._counters["corrupt"] += 1
        logger.warning("disk tier at %s: block %016x failed its checksum; dropped (will be recomputed)",
                       self.path, key.block_hash)
        self._erase(key)
        self._forget(key)

    # -- open / close ---------------------------------------------------------------------
    def _scan_metadata(self) -> tuple[list[tuple[BlockKey, int | None]], dict[BlockKey, int]]:
        """(key, parent) and sizes of every block of this namespace, from the 32-byte records.

        The scan reads with RocksDB's block checksums on, so damaged records are caught. If
        RocksDB reports damage (a damaged data block that the seek to the first record lands
        in ends the scan too, which used to reopen the tier silently empty and leak every
        block on disk), it scans again without them. Records are then checked for sense only
        (a length no block of this tier can have is dropped as corrupt); any other damage to a
        record is caught at the block's first read, which checks the value against it.
        """
        pairs, sizes, bad, err = self._scan_pass(ReadOptions())
        if err is not None:
            logger.warning("disk tier at %s: RocksDB reports damage in the metadata scan (%s); "
                           "rescanning without its block checksums", self.path, err)
            pairs, sizes, bad, err = self._scan_pass(self._get_opts)
            if err is not None:  # an I/O error mid-scan: come back with what was read
                logger.warning("disk tier at %s: metadata scan stopped early (%s); %d blocks indexed",
                               self.path, err, len(pairs))
        if bad:
            self._counters["corrupt"] += len(bad)
            logger.warning("disk tier at %s: %d unreadable metadata records dropped", self.path, len(bad))
            self._erase_many(bad)
        return pairs, sizes

    def _scan_pass(self, read_opts: ReadOptions) -> tuple[list, dict, list, Exception | None]:
        prefix = self._ns + _META_SEP
        pairs: list[tuple[BlockKey, int | None]] = []
        sizes: dict[BlockKey, int] = {}
        bad: list[BlockKey] = []
        it = self._open_db().iter(read_opts)
        it.seek(prefix)
        while it.valid():
            mkey = it.key()
            if not mkey.startswith(prefix):
                break
            if len(mkey) == len(prefix) + 8:  # else not a key this module writes; leave it alone
                key = BlockKey(self.namespace, int.from_bytes(mkey[len(prefix):], "big"))
                header = decode_header(it.value())
                if header is None or HEADER_SIZE + header.length > self._capacity:
                    bad.append(key)  # malformed, or a length no block here can have
                else:
                    pairs.append((key, header.parent))
                    sizes[key] = HEADER_SIZE + header.length
            it.next()
        try:
            it.status()
        except Exception as exc:
            return pairs, sizes, bad, exc
        return pairs, sizes, bad, None

    def _claim(self, fingerprint: bytes) -> bool:
        """Record `fingerprint`, first deleting this namespace's blocks if another wrote them.
        False when they could not be deleted: the tier must then not index them."""
        db = self._open_db()
        key = self._ns + _FINGERPRINT_KEY
        recorded = db.get(key)
        if recorded == fingerprint:
            return True
        pairs, _ = self._scan_metadata()
        if pairs:
            logger.warning("disk tier at %s: its %d blocks were written for %s, not %s; deleted",
                           self.path, len(pairs), (recorded or b"an unrecorded model").decode("utf-8", "replace"),
                           fingerprint.decode("utf-8", "replace"))
            self._erase_many([k for k, _ in pairs])
            if self._degraded:  # could not delete them: serve none of them (the tier stays empty)
                return False
        try:
            db.put(key, fingerprint, self._write_opts)
            db.flush()
        except Exception as exc:
            self._degrade("fingerprint write", exc)
        return True

    def _rebuild(self) -> None:
        pairs, sizes = self._scan_metadata()
        order = parents_first(pairs)
        # No use times survive a restart; evict chain tails before the prefixes they extend.
        self._index = OrderedDict((k, IndexEntry(sizes[k], p)) for k, p in reversed(order))
        self._used = sum(sizes.values())
        victims = self._plan_eviction(0)  # reopened with a smaller capacity
        if victims:
            logger.info("disk tier at %s: trimming %d blocks to fit %d bytes", self.path, len(victims), self._capacity)
            self._erase_many(victims)
            for key in victims:
                self._used -= self._index.pop(key).size
        self._emit_cleared()
        for key, parent in order:
            if key in self._index:
                self._emit_stored(key.block_hash, parent)
        if order:
            logger.info("disk tier at %s: reopened with %d blocks (%d bytes)", self.path, len(self._index), self._used)

    def _erase_many(self, keys: list[BlockKey]) -> None:
        try:
            self._open_db().write(self._delete_batch(keys), self._write_opts)
        except Exception as exc:
            self._degrade("delete", exc)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update({name: self._counters[name] for name in ("corrupt", "write_errors", "read_errors")})
        out["degraded"] = int(self._degraded)
        return out

    def close(self) -> None:
        """Flush and close the db (idempotent). The index is kept only on disk."""
        if self._db is None:
            return
        try:
            self._db.flush()
        except Exception as exc:
            logger.warning("disk tier at %s: flush on close failed (%s)", self.path, exc)
        try:
            self._db.close()
        except Exception as exc:  # a full disk fails the final flush again: the node still stops cleanly
            logger.warning("disk tier at %s: close failed (%s); blocks not yet flushed are lost", self.path, exc)
        self._db = None
