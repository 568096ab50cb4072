"""The engine's residency-event feed: one numbered sequence of batches for `on_events`.

    vLLM KVEventBatch ──ZMQ──▶ KVEventSubscriber ──▶ KVEventTranslator ──┐   [event thread]
    node KV runtime: take_events() once per step ────────────────────────┼─▶ on_events(seq, events)
                                                                          ┘   [step thread]

Both sources are numbered under one lock, and `snapshot` / `tier_snapshot` take the same
lock, so a snapshot's sequence number is exactly the last batch it includes. The feed also
runs the startup handshake (ZMQ drops what a PUB sends before the subscription reaches it)
and the markers `VLLMEngine.sync_events` waits for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from preble_tiered.engine.api import KVRuntime
from preble_tiered.engine.kv_events import KVEventSubscriber, KVEventTranslator
from preble_tiered.events import ResidencyEvent
from preble_tiered.hashing import BlockHasher
from preble_tiered.types import Tier

logger = logging.getLogger(__name__)


class EventFeed:
    """Args:
        hasher: the router's block hasher (vLLM's blocks are re-hashed with it).
        topic: the ZMQ topic vLLM publishes under.
        on_events: called with (seq, events) for every non-empty batch, seq 1, 2, ...
    """

    def __init__(self, hasher: BlockHasher, topic: str,
                 on_events: Callable[[int, list[ResidencyEvent]], None]) -> None:
        self._on_events = on_events
        self._lock = threading.RLock()  # seq + translator: snapshot atomicity
        self._seq = 0
        self._translator = KVEventTranslator(hasher)
        self._sub = KVEventSubscriber(topic, self._on_batch)
        self._hello = threading.Event()
        self._live = False
        self._live_after = 0.0
        self._markers: dict[int, threading.Event] = {}
        self._marker_lock = threading.Lock()
        self._next_marker = 1

    @property
    def endpoint(self) -> str:
        """Where vLLM's publisher connects."""
        return self._sub.endpoint

    @property
    def thread(self) -> threading.Thread:
        """The event thread ("vllm-kv-events")."""
        return self._sub.thread

    def start(self) -> None:
        self._sub.start()

    def stop(self) -> None:
        """Drain what has arrived and stop the event thread (idempotent)."""
        self._sub.stop()

    def await_hello(self, poke: Callable[[], None], tries: int) -> None:
        """Call `poke` (it must make vLLM publish AllBlocksCleared) until one arrives, so no
        real event goes out before the subscription is live.

        Raises:
            RuntimeError: if nothing arrived after `tries` pokes, 0.1 s apart.
        """
        for _ in range(tries):
            poke()
            if self._hello.wait(0.1):
                with self._lock:
                    self._live, self._live_after = True, time.time()
                return
        raise RuntimeError(f"no KV event arrived from vLLM at {self.endpoint} in "
                           f"{tries * 0.1:.0f} s; check that loopback TCP works")

    def new_marker(self) -> tuple[int, threading.Event]:
        """A marker id to publish as an empty batch with ts = -id, and the event set when it
        arrives (everything vLLM published before it has then been handled)."""
        with self._marker_lock:
            marker, self._next_marker = self._next_marker, self._next_marker + 1
        done = threading.Event()
        self._markers[marker] = done
        return marker, done

    def forget_marker(self, marker: int) -> None:
        self._markers.pop(marker, None)

    def publish(self, events: list[ResidencyEvent]) -> None:
        """Number and hand on a batch that did not come from vLLM (the node's KV tiers)."""
        if events:
            with self._lock:
                self._emit(events)

    def snapshot(self) -> tuple[int, list[tuple[int, int | None]]]:
        """(seq of the last batch, [(router hash, router parent)] of every block vLLM holds)."""
        with self._lock:
            return self._seq, self._translator.snapshot()

    def tier_snapshot(self, kv: KVRuntime | None) -> tuple[int, list[tuple[Tier, int, int | None]]]:
        """Like `snapshot`, over vLLM's cache and `kv`'s tiers: [(tier, router hash, parent)]."""
        with self._lock:
            seq, hbm = self.snapshot()
            out = [(Tier.HBM, h, p) for h, p in hbm]
            if kv is not None:
                out += kv.snapshot()
            return seq, out

    def _on_batch(self, batch: Any) -> None:
        if batch.ts < 0 and not batch.events:  # a sync_events marker
            done = self._markers.get(int(-batch.ts))
            if done is not None:
                done.set()
            return
        with self._lock:
            if not self._live:
                self._hello.set()  # startup handshake: vLLM's PUB reaches us
                return
            if batch.ts <= self._live_after and self._translator.only_clears(batch.events):
                return  # a late duplicate of the handshake
            events = self._translator.translate(batch.events)
            if events:
                self._emit(events)

    def _emit(self, events: list[ResidencyEvent]) -> None:
        """Hand on one batch (caller holds the lock)."""
        self._seq += 1
        try:
            self._on_events(self._seq, events)
        except Exception:
            logger.exception("on_events callback failed for batch %d", self._seq)
