"""The bulk data path between nodes: the Mooncake Transfer Engine (TCP here, RDMA where the
cluster has it), behind one small interface.

A node starts one `BulkEngine` bound to its cluster address, registers its DRAM tier's
block pool (the only memory peers may read), and publishes its session ("host:port") in
leases. A puller reads leased blocks straight into free slots of its own registered pool.
gRPC keeps the control plane (which blocks, where, checksums, release).

Security: Mooncake does not authenticate. Anyone who reaches the engine's ports can read
registered memory, so the engine binds to the node's own address (`MC_TCP_BIND_ADDRESS`)
and only the KV pool is registered: run nodes on a cluster network, not a public one.

Where Mooncake cannot load (no wheel for the platform, a system library missing), `open`
returns None after one warning and pulls ride the gRPC stream.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "rdma")
MAX_INFLIGHT_BYTES = 64 << 20
"""Bytes a read keeps submitted at once: Mooncake's TCP lanes refuse much more at once
(measured: a 1 GiB batch failed with "queue-full"; 64 MiB in flight runs at full speed)."""

POLL_S = 0.0002
"""How long a read sleeps between checks of its oldest block. Mooncake's own blocking calls
(`batch_transfer_sync_read`, `get_batch_transfer_status`) spin a core until the batch ends;
on 2 cores that core is one the transfer needs (`benchmarks/tiers_bandwidth.py`)."""

READ_TIMEOUT_S = 30.0
"""A read gives up this long after it started, plus a second per GB asked for (as Mooncake's
own synchronous read does)."""

QUARANTINE_S = 120.0
"""How long slots of a failed read stay out of use at least (longer while a block of the
read is still in flight into them): well past Mooncake's own transfer timeout (30 s)."""

_warned = False


@dataclass(frozen=True)
class BulkConfig:
    """Which bulk path a node uses for pulls."""

    engine: str = "mooncake"
    """"mooncake": the Mooncake Transfer Engine, falling back to gRPC where it cannot load;
    "grpc": always the gRPC stream."""
    protocol: str = "tcp"
    """Mooncake's transport: "tcp", or "rdma" where the cluster has RDMA NICs."""

    def __post_init__(self) -> None:
        if self.engine not in ("mooncake", "grpc"):
            raise ValueError(f"transfer engine must be 'mooncake' or 'grpc', got {self.engine!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"transfer protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


class BulkEngine:
    """One Mooncake TransferEngine: registered regions and batched one-sided reads.

    Thread-safe: reads run in worker threads, asleep between checks of their blocks.
    """

    def __init__(self, engine, host: str, protocol: str) -> None:
        self._engine = engine
        self.protocol = protocol
        self.session = f"{host}:{engine.get_rpc_port()}"
        self._regions: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._quarantine: list[tuple[float, list[tuple[int, memoryview]]]] = []  # (held until, slots)
        self._unended: dict[int, int] = {}  # slot address -> batch id of a stopped read's block still in flight

    @classmethod
    def open(cls, host: str, config: BulkConfig) -> "BulkEngine | None":
        """Start an engine bound to `host`; None (after one warning) where Mooncake cannot run."""
        global _warned
        if config.engine != "mooncake":
            return None
        os.environ.setdefault("MC_TCP_BIND_ADDRESS", host)
        try:
            from mooncake.engine import TransferEngine

            engine = TransferEngine()
            rc = engine.initialize(host, "P2PHANDSHAKE", config.protocol, "")
            if rc != 0:
                raise RuntimeError(f"TransferEngine.initialize returned {rc}")
        except Exception as e:  # ImportError (no wheel, libibverbs missing), or a failed start
            if not _warned:
                logger.warning("Mooncake transfer engine unavailable (%s); KV pulls use the gRPC stream", e)
                _warned = True
            return None
        logger.info("Mooncake transfer engine (%s) listening as %s", config.protocol, f"{host}:{engine.get_rpc_port()}")
        return cls(engine, host, config.protocol)

    def register(self, address: int, length: int) -> bool:
        """Make `[address, address + length)` readable by peers (and a read target). Idempotent.

        A registered region the new one overlaps belonged to memory since unmapped (live
        mappings never overlap): it is unregistered first, as Mooncake refuses overlaps."""
        with self._lock:
            if (address, length) in self._regions:
                return True
            for old in [r for r in self._regions if r[0] < address + length and address < r[0] + r[1]]:
                self._engine.unregister_memory(old[0])
                self._regions.discard(old)
            rc = self._engine.register_memory(address, length)
            if rc != 0:
                logger.warning("Mooncake could not register %d bytes at %#x (rc %d)", length, address, rc)
                return False
            self._regions.add((address, length))
            return True

    def read(self, session: str, local: Sequence[int], remote: Sequence[int], lengths: Sequence[int]) -> int:
        """Read each `remote[i]` of the peer at `session` into `local[i]`; blocks the calling
        thread (asleep, the GIL released, while the transfer runs). Returns how many leading
        entries arrived whole: a block that fails or times out stops the read there.

        Each block is its own asynchronous batch (Mooncake's non-blocking status check looks
        at a batch's first task only), submitted while at most `MAX_INFLIGHT_BYTES` are in
        flight and checked oldest first with a `POLL_S` sleep between checks. Blocks still in
        flight when a read stops may land later: the caller keeps their slots out of use
        (`quarantine`), until they end."""
        engine = self._engine
        if engine is None:  # closed
            return 0
        if self._quarantine or self._unended:
            with self._lock:
                self._prune(time.monotonic())
        n = len(local)
        ids: list[int] = []  # batch ids of the blocks submitted, in order
        inflight = done = 0  # bytes submitted and not yet arrived; leading blocks arrived
        deadline = time.monotonic() + READ_TIMEOUT_S + sum(lengths) / 1e9
        submitting, rc = True, 0  # rc: the last status of ids[done] (0: not known to have ended)
        try:
            while done < n:
                while submitting and len(ids) < n and (len(ids) == done
                                                       or inflight + lengths[len(ids)] <= MAX_INFLIGHT_BYTES):
                    i = len(ids)
                    batch = engine.batch_transfer_async_read(session, [local[i]], [remote[i]], [lengths[i]])
                    if not 0 < batch < 1 << 63:  # 0 (or -1 as unsigned, in older builds): not submitted
                        submitting = False
                        break
                    ids.append(batch)
                    inflight += lengths[i]
                if done == len(ids):  # nothing in flight: the next block could not be submitted
                    break
                rc = engine.transfer_check_status(ids[done])
                if rc == 1:  # arrived (Mooncake freed the batch)
                    inflight -= lengths[done]
                    done, rc = done + 1, 0
                elif rc == -1 or time.monotonic() > deadline:  # failed (freed), or too late
                    break
                else:  # 0 in flight; -2 a slice past Mooncake's slice timeout, still able to write
                    time.sleep(POLL_S)
        finally:  # also when Mooncake raised: what was submitted may still write
            self._hold_unended(engine, local, ids, done, rc)
        return done

    def _hold_unended(self, engine, local: Sequence[int], ids: list[int], done: int, stop_rc: int) -> None:
        """After a read that stopped at `ids[done]` with status `stop_rc`: check once each
        block submitted after it (which frees those that ended) and remember, by slot
        address, the ones still in flight."""
        left: dict[int, int] = {}
        for i in range(done, len(ids)):
            rc = stop_rc if i == done else engine.transfer_check_status(ids[i])
            if rc not in (1, -1):  # not ended (0, or -2): it may write into local[i] later
                left[local[i]] = ids[i]
        if left:
            with self._lock:
                self._unended.update(left)

    def _prune(self, now: float) -> None:
        """Forget in-flight blocks of stopped reads that have ended, and release quarantined
        slots past their hold that no such block writes into any more (holding the lock)."""
        engine = self._engine
        if engine is not None:
            for address, batch in list(self._unended.items()):
                if engine.transfer_check_status(batch) in (1, -1):  # ended, and freed by Mooncake
                    del self._unended[address]
        self._quarantine = [q for q in self._quarantine
                            if q[0] > now or any(a in self._unended for a, _ in q[1])]

    def quarantine(self, slots: list[tuple[int, memoryview]], hold_s: float = QUARANTINE_S) -> None:
        """Keep `slots` ((address, view) of pool slots a failed read was writing into)
        referenced for at least `hold_s`, and until no block of a stopped read is still in
        flight into them.

        A read that stops returns while blocks after the stop may still be on the wire:
        Mooncake's TCP transport fails a block only 30 s after one of its few connections
        picks it up, so a queue of them can end minutes later. Were the slots handed out
        again, a late write could land in a block the engine later loads. Their memory is
        lost for that time. Quarantined slots are released by later reads and quarantines."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if slots:
                self._quarantine.append((now + hold_s, list(slots)))

    def close(self) -> None:
        with self._lock:
            for address, _ in self._regions:
                self._engine.unregister_memory(address)
            self._regions.clear()
            self._engine = None
