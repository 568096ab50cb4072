"""vLLM KV-cache events -> the router's residency events.

`KVEventTranslator` re-hashes every stored block with :class:`BlockHasher` from the
event's token ids and its router parent (vLLM's own hashes are not reproducible across
processes) and keeps the set of blocks held; `KVEventSubscriber` receives vLLM's event
batches over ZMQ. Both are used by `event_feed.EventFeed`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored, ResidencyEvent
from preble_tiered.hashing import BlockHasher
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)

PLACEHOLDER_NODE = 0  # the node agent replaces it with its node id
_HBM_MEDIA = frozenset({None, "GPU"})  # vLLM reports its main KV pool as "GPU", even on CPU


@dataclass(slots=True)
class _Block:
    router_hash: int
    router_parent: int | None
    depth: int  # blocks before it in its chain: parents sort before children


class KVEventTranslator:
    """vLLM KV events -> the router's residency events, and the set of blocks held.

    Not thread-safe: the engine calls it under its event lock. Blocks removed are
    remembered (bounded) so a later chain whose parent was evicted can still be hashed.
    """

    def __init__(self, hasher: BlockHasher, gone_capacity: int = 1 << 16) -> None:
        from vllm.distributed import kv_events as kv

        self.hasher = hasher
        self._held: dict[Any, _Block] = {}  # vLLM hash (int or bytes) -> block
        self._gone: OrderedDict[Any, _Block] = OrderedDict()
        self._gone_capacity = gone_capacity
        self._warned: set[str] = set()
        self._handlers: dict[type, Callable[[Any], list[ResidencyEvent]]] = {
            kv.BlockStored: self._stored,
            kv.BlockRemoved: self._removed,
            kv.AllBlocksCleared: self._cleared,
        }

    def translate(self, events: Sequence[Any]) -> list[ResidencyEvent]:
        """Apply one vLLM batch; returns the router events it means (possibly none)."""
        out: list[ResidencyEvent] = []
        for ev in events:
            handler = self._handlers.get(type(ev))
            if handler is None:
                self._warn_once(type(ev).__name__, "ignoring unknown KV event type %s", type(ev).__name__)
                continue
            out.extend(handler(ev))
        return out

    def only_clears(self, events: Sequence[Any]) -> bool:
        """Whether a vLLM batch holds nothing but AllBlocksCleared events."""
        return all(self._handlers.get(type(e)) == self._cleared for e in events)

    def snapshot(self) -> list[tuple[int, int | None]]:
        """(router hash, router parent) of every block held, parents before children."""
        blocks = sorted(self._held.values(), key=lambda b: b.depth)
        return [(b.router_hash, b.router_parent) for b in blocks]

    def _lookup(self, engine_hash: Any) -> _Block | None:
        return self._held.get(engine_hash) or self._gone.get(engine_hash)

    def _stored(self, ev: Any) -> list[ResidencyEvent]:
        if not self._medium_ok(ev.medium):
            return []
        bs = self.hasher.block_size
        if ev.block_size != bs or len(ev.token_ids) != len(ev.block_hashes) * bs:
            self._warn_once("partial", "skipping BlockStored of %d tokens for %d blocks of %d "
                            "(partial blocks are not routed)", len(ev.token_ids),
                            len(ev.block_hashes), ev.block_size)
            return []
        parent, depth = None, 0
        if ev.parent_block_hash is not None:
            known = self._lookup(ev.parent_block_hash)
            if known is None:
                logger.warning("BlockStored with an unknown parent; skipping a chain of %d blocks",
                               len(ev.block_hashes))
                return []
            parent, depth = known.router_hash, known.depth + 1
        router = self.hasher(ev.token_ids, parent=parent)
        return self._store_chain(ev.block_hashes, router, parent, depth)

    def _store_chain(self, engine_hashes: Sequence[Any], router: list[int],
                     parent: int | None, depth: int) -> list[ResidencyEvent]:
        """Record a chain; duplicates split it into runs of newly held blocks."""
        out: list[ResidencyEvent] = []
        run: list[int] = []
        run_parent = parent
        for i, (eh, rh) in enumerate(zip(engine_hashes, router)):
            held = self._held.get(eh)
            if held is not None:
                if held.router_hash != rh:
                    logger.error("vLLM block hash maps to two router hashes; keeping the first")
                if run:
                    out.append(self._event(run, run_parent))
                    run = []
                run_parent = rh
            else:
                self._gone.pop(eh, None)
                self._held[eh] = _Block(rh, parent, depth + i)
                run.append(rh)
            parent = rh
        if run:
            out.append(self._event(run, run_parent))
        return out

    @staticmethod
    def _event(run: list[int], parent: int | None) -> BlockStored:
        return BlockStored(node=PLACEHOLDER_NODE, tier=Tier.HBM, hashes=tuple(run), parent=parent)

    def _removed(self, ev: Any) -> list[ResidencyEvent]:
        if not self._medium_ok(ev.medium):
            return []
        hashes = []
        for eh in ev.block_hashes:
            block = self._held.pop(eh, None)
            if block is None:
                logger.debug("BlockRemoved for a block never stored; ignored")
                continue
            self._remember(eh, block)
            hashes.append(block.router_hash)
        if not hashes:
            return []
        return [BlockRemoved(node=PLACEHOLDER_NODE, tier=Tier.HBM, hashes=tuple(hashes))]

    def _cleared(self, ev: Any) -> list[ResidencyEvent]:
        for eh, block in self._held.items():
            self._remember(eh, block)
        self._held.clear()
        return [AllBlocksCleared(node=PLACEHOLDER_NODE, tier=Tier.HBM)]

    def _remember(self, engine_hash: Any, block: _Block) -> None:
        self._gone[engine_hash] = block
        self._gone.move_to_end(engine_hash)
        while len(self._gone) > self._gone_capacity:
            self._gone.popitem(last=False)

    def _medium_ok(self, medium: str | None) -> bool:
        if medium in _HBM_MEDIA:
            return True
        self._warn_once(f"medium:{medium}", "ignoring KV events of medium %s (only GPU/HBM is "
                        "tracked by this engine)", medium)
        return False

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, *args)


class KVEventSubscriber:
    """Binds a ZMQ SUB socket on loopback; vLLM's publisher connects to it.

    Binding here (endpoint without `*`) makes vLLM connect, so the socket exists before
    the engine does and nothing is published into the void at startup.
    """

    def __init__(self, topic: str, handler: Callable[[Any], None]) -> None:
        import msgspec
        import zmq
        from vllm.distributed.kv_events import KVEventBatch

        self._zmq = zmq
        self._handler = handler
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # never drop: a lost batch desyncs the router
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vllm-kv-events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drain what has arrived, then stop the thread and close the socket (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        if self.thread.is_alive():
            logger.warning("the KV event thread did not stop in %.0f s; leaving its socket open",
                           timeout)
            return
        self._sock.close(linger=0)
        self._ctx.term()

    def _run(self) -> None:
        try:
            while True:
                if self._sock.poll(50):
                    self._receive()
                elif self._stop.is_set():
                    return
        except Exception:
            logger.exception("the KV event thread failed; the router will miss this node's events")

    def _receive(self) -> None:
        try:
            _topic, seq_bytes, payload = self._sock.recv_multipart(self._zmq.NOBLOCK)
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            if self._last_seq is not None and seq != self._last_seq + 1:
                logger.error("lost %d KV event batches from vLLM; the router's view of this "
                             "node may be stale until the next reset", seq - self._last_seq - 1)
            self._last_seq = seq
            self._handler(self._decoder.decode(payload))
        except Exception:
            logger.exception("failed to handle a KV event batch from vLLM")
