"""Disk writes off the caller's thread: a node's saves run on the engine's step thread, and
a RocksDB write there (a DRAM eviction demoted to disk, or a write-through copy) holds up
every request's next token. `DiskWriter` queues the block and writes it on a thread of its
own; the block's buffer (a pool slot) stays referenced, so unchanged, until written.

Bounded: past `max_pending` queued blocks a new one is dropped and counted (a cache may skip
a write; it must not stall the engine or grow without bound). `drain` waits until the queue
is empty, for a clean stop and for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from preble_tiered.kvstore.base import StoredBlock

logger = logging.getLogger(__name__)


class DiskWriter:
    """Args:
        write: writes one block (takes whatever lock its store needs); runs on the writer's
            thread, one block at a time, in submission order.
        max_pending: most blocks queued at once.
    """

    def __init__(self, write: Callable[[StoredBlock], None], max_pending: int = 1024) -> None:
        if max_pending <= 0:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        self._write = write
        self.max_pending = max_pending
        self._queue: deque[StoredBlock] = deque()
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="preble-disk-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + int(self._busy)

    def submit(self, block: StoredBlock) -> bool:
        """Queue `block`; False (dropped, counted) when the queue is full or closed."""
        with self._cv:
            if self._closed or len(self._queue) >= self.max_pending:
                self.dropped += 1
                return False
            self._queue.append(block)
            self._cv.notify()
            return True

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued block is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop the thread. Idempotent."""
        self.drain(timeout_s)
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                block = self._queue.popleft()
                self._busy = True
            try:
                self._write(block)
                self.written += 1
            except Exception:  # a write must never kill the writer; the block is simply not on disk
                logger.exception("disk write of block %016x failed", block.key.block_hash)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
