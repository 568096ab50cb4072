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
MAX_BATCH_BYTES = 64 << 20
"""Bytes per batch call: Mooncake's TCP lanes refuse a much larger batch at once
(measured: a 1 GiB batch failed with "queue-full"; 64 MiB batches run at full speed)."""

QUARANTINE_S = 120.0
"""How long slots of a failed read stay out of use: well past Mooncake's own transfer
timeout (30 s by default)."""

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

    Thread-safe: reads run in worker threads (Mooncake releases the GIL while it waits).
    """

    def __init__(self, engine, host: str, protocol: str) -> None:
        self._engine = engine
        self.protocol = protocol
        self.session = f"{host}:{engine.get_rpc_port()}"
        self._regions: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._quarantine: list[tuple[float, list]] = []

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
        thread. Returns how many leading entries arrived whole (batches of at most
        `MAX_BATCH_BYTES`; a failed batch stops the read, and nothing in it counts)."""
        engine = self._engine
        if engine is None:  # closed
            return 0
        done = 0
        while done < len(local):
            end, size = done, 0
            while end < len(local) and (end == done or size + lengths[end] <= MAX_BATCH_BYTES):
                size += lengths[end]
                end += 1
            rc = engine.batch_transfer_sync_read(session, list(local[done:end]), list(remote[done:end]),
                                                       list(lengths[done:end]))
            if rc != 0:
                return done
            done = end
        return done

    def quarantine(self, views: list, hold_s: float = QUARANTINE_S) -> None:
        """Keep `views` (pool slots a failed read was writing into) referenced for `hold_s`.

        A batch read that fails returns at once while parts of it may still be in flight
        (Mooncake frees a failed batch early); were the slots handed out again, a late write
        could land in a block the engine later loads. Their memory is lost for that time."""
        now = time.monotonic()
        with self._lock:
            self._quarantine = [q for q in self._quarantine if q[0] > now]
            if views:
                self._quarantine.append((now + hold_s, views))

    def close(self) -> None:
        with self._lock:
            for address, _ in self._regions:
                self._engine.unregister_memory(address)
            self._regions.clear()
        self._engine = None
