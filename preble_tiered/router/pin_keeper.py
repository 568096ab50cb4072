"""Keeps pins true on the nodes: once per `interval_s` (and at once after a pin changes) the
pure reconciler (`scheduler.pins.reconcile`) compares the pins asked for with the index and
the nodes' acknowledgements, and its actions run as one task per (prefix, node), backing off
`retry_s` after a failure. All state is touched from the router's asyncio loop only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from preble_tiered.router.admin_state import AdminState
from preble_tiered.router.view import RouterView
from preble_tiered.scheduler.pins import NodePin, PinOp, held_counts, pin_targets, reconcile, replica_state, storage_tier
from preble_tiered.types import NodeId, Tier

logger = logging.getLogger(__name__)


class PinKeeper:
    def __init__(self, view: RouterView, state: AdminState, warm: Callable[[str, NodeId], Awaitable[str]],
                 expire: Callable[[str], None], interval_s: float = 1.0, retry_s: float = 5.0) -> None:
        """`warm(name, node)` runs the prefix on the node and returns an error ("" when it
        worked); `expire(name)` drops a pin whose TTL passed."""
        self.r = view
        self.state = state
        self._warm = warm
        self._expire = expire
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.acked: dict[NodeId, dict[str, NodePin]] = {}
        self.actions = deque(maxlen=256)  # (unix time, op, name, node, outcome): recent reconciler work
        self._tasks: dict[tuple[str, NodeId], asyncio.Task] = {}
        self._backoff: dict[tuple[str, NodeId], float] = {}
        self._loop_task: asyncio.Task | None = None

    def replicas(self, name: str) -> list[tuple[NodeId, str, int]]:
        """(node, state, blocks held in the pinned tier) for the pin's current targets."""
        spec, prefix = self.state.pins[name], self.state.prefixes[name]
        idx = self.r.index
        alive = self.r.alive()
        inflight = {n: self.r.inflight(n) for n in alive}
        out = []
        for node in pin_targets(spec, prefix.hashes, idx, alive, self.acked, inflight):
            counts = held_counts(idx, prefix.hashes, node)
            st = replica_state(spec, len(prefix.hashes), counts, self.acked.get(node, {}).get(name))
            if st != "pinned" and (name, node) in self._tasks:
                st = "warming"
            held = counts[1] if storage_tier(spec.tier) is Tier.DRAM else counts[2]
            out.append((node, st, held))
        return out

    def on_node_down(self, node: NodeId) -> None:
        """A node that went down may come back as a new process with no pins: forget its acks."""
        self.acked.pop(node, None)

    # ------------------------------------------------------------------ the loop
    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run())

    def kick(self) -> None:
        """Run a reconcile round now (after a pin changes)."""
        if self._loop_task is not None:
            asyncio.get_running_loop().call_soon(self._round)

    async def close(self) -> None:
        tasks = list(self._tasks.values()) + ([self._loop_task] if self._loop_task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                self._round()
            except Exception:  # never let a bad round stop pin maintenance
                logger.exception("pin reconcile round failed")
            await asyncio.sleep(self.interval_s)

    def _round(self) -> None:
        mono = time.monotonic()
        alive = self.r.alive()
        acked = {n: pins for n, pins in self.acked.items() if n in alive}
        inflight = {n: self.r.inflight(n) for n in alive}
        busy = set(self._tasks) | {k for k, until in self._backoff.items() if until > mono}
        actions = reconcile(self.state.pins, self.state.prefixes, self.r.index, alive, acked, inflight,
                            busy, time.time())
        for a in actions:
            if a.op is PinOp.EXPIRE:
                logger.info("pin of %s expired (ttl)", a.name)
                self._expire(a.name)
                self.actions.append((time.time(), "expire", a.name, None, "ok"))
                continue
            self._tasks[(a.name, a.node)] = asyncio.create_task(self._act(a.op, a.name, a.node))

    async def _act(self, op: PinOp, name: str, node: NodeId) -> None:
        key = (name, node)
        outcome = "ok"
        try:
            if op is PinOp.UNPIN:
                await self._node_pin(name, node, [], Tier.DRAM)
            else:
                if op is PinOp.WARM:
                    error = await self._warm(name, node)
                    if error:
                        raise RuntimeError(error)
                spec = self.state.pins.get(name)
                if spec is None:  # unpinned meanwhile
                    return
                missing = await self._node_pin(name, node, list(self.state.prefixes[name].hashes), spec.tier)
                if missing:
                    outcome = f"{missing} blocks missing"
                    self._backoff[key] = time.monotonic() + self.retry_s
        except Exception as e:  # noqa: BLE001 - any failure: back off and retry next rounds
            outcome = f"failed: {e}"
            self._backoff[key] = time.monotonic() + self.retry_s
            logger.warning("pin %s on node %d: %s failed: %s", name, node, op.value, e)
        finally:
            self._tasks.pop(key, None)
            self.actions.append((time.time(), op.value, name, node, outcome))

    async def _node_pin(self, name: str, node: NodeId, hashes: list[int], tier: Tier) -> int:
        pinned, missing = await self.r.client(node).pin(name, hashes, tier)
        pins = self.acked.setdefault(node, {})
        if hashes:
            pins[name] = NodePin(tier, pinned, len(hashes))
        else:
            pins.pop(name, None)
        return missing
