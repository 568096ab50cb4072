"""The router's prefix administration: names, usage, listings, pins, warm-ups, eviction.

It works through a `RouterView` (read-only nodes, index and clock; node clients; index pins
and the router's own runs) and never reaches into the router. The pure parts live elsewhere
(`scheduler.pins`, `admin_state`); `PinKeeper` keeps the pins true on the nodes and
`PrefixViews` renders what is held where. All state is touched from the router's asyncio
loop only.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc

from preble_tiered.router.admin_state import (MAX_PREFIX_TOKENS, MAX_PREFIXES, MAX_REPLICAS, MAX_TTL_S,
                                              AdminState, check_name)
from preble_tiered.router.errors import RequestError, invalid
from preble_tiered.router.node_client import NodeError
from preble_tiered.router.pin_keeper import PinKeeper
from preble_tiered.router.prefix_views import PrefixView, PrefixViews, Usage
from preble_tiered.router.view import RouterView
from preble_tiered.scheduler.pins import NamedPrefix, PinSpec
from preble_tiered.types import GenParams, NodeId, Tier

logger = logging.getLogger(__name__)

WARM_TIMEOUT_S = 300.0


@dataclass(slots=True)
class WarmOutcome:
    node: NodeId
    cached: dict[str, int] = field(default_factory=dict)
    recomputed: int = 0
    ms: float = 0.0
    error: str = ""


class PrefixAdmin:
    def __init__(self, view: RouterView, state: AdminState, interval_s: float = 1.0, retry_s: float = 5.0) -> None:
        self.r = view
        self.state = state
        self.views = PrefixViews(view)
        self.keeper = PinKeeper(view, state, self._warm_error, self._drop_pin, interval_s, retry_s)
        self._by_last: dict[int, str] = {p.last_hash: p.name for p in state.prefixes.values()}
        self._usage: dict[str, dict[NodeId, Usage]] = {}
        for name in state.pins:
            if name in state.prefixes:
                view.pin_blocks(state.prefixes[name].hashes)

    @property
    def acked(self):
        """node -> pins the node acknowledged (see PinKeeper)."""
        return self.keeper.acked

    def start(self) -> None:
        self.keeper.start()

    async def close(self) -> None:
        await self.keeper.close()

    def on_node_down(self, node: NodeId) -> None:
        self.keeper.on_node_down(node)

    # ------------------------------------------------------------------ names
    def resolve(self, key: str) -> tuple[NamedPrefix | None, int]:
        """A name, or a block hash in hex. Returns (the named prefix or None, its hash)."""
        if not key or len(key) > 80:
            raise invalid("give a prefix name or a block hash (hex)")
        p = self.state.prefixes.get(key)
        if p is not None:
            return p, p.last_hash
        try:
            h = int(key, 16)
        except ValueError:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no prefix named {key!r} (see `prefixes ls`)") from None
        if not 0 <= h < 1 << 64:
            raise invalid(f"{key!r} is not a 64-bit hash")
        if h in self._by_last:
            return self.state.prefixes[self._by_last[h]], h
        if self.r.index.entry(h) is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"the router's index holds no block {h:016x}")
        return None, h

    def name(self, name: str, token_ids: list[int], replace: bool) -> NamedPrefix:
        check_name(name)
        bs = self.r.block_size
        if len(token_ids) > MAX_PREFIX_TOKENS:
            raise invalid(f"a prefix has at most {MAX_PREFIX_TOKENS} tokens, got {len(token_ids)}")
        if len(token_ids) < bs:
            raise invalid(f"the prefix has {len(token_ids)} tokens, fewer than one KV block ({bs}); "
                          "only whole blocks are cached")
        vocab = self.r.vocab_size()
        if vocab and max(token_ids) >= vocab:
            raise invalid(f"token id {max(token_ids)} is outside the vocabulary ({vocab})")
        old = self.state.prefixes.get(name)
        if old is not None and not replace:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"prefix {name!r} exists; pass replace to re-point it")
        if old is not None and name in self.state.pins:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"prefix {name!r} is pinned; unpin it first")
        if old is None and len(self.state.prefixes) >= MAX_PREFIXES:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_PREFIXES} named prefixes")
        p = NamedPrefix(name, tuple(token_ids), tuple(self.r.hash(token_ids)), time.time())
        if old is not None:
            self._by_last.pop(old.last_hash, None)
        self.state.prefixes[name] = p
        self._by_last[p.last_hash] = name
        self._usage.pop(name, None)
        self.state.save()
        return p

    # ------------------------------------------------------------------ usage (hits)
    def on_complete(self, hashes: list[int], node: NodeId, cached_tokens: int) -> None:
        """Count a finished request against the named prefixes its prompt starts with."""
        if not self._by_last:
            return
        bs = self.r.block_size
        now = time.time()
        by_last = self._by_last
        for i, h in enumerate(hashes):
            name = by_last.get(h)
            if name is None:
                continue
            u = self._usage.setdefault(name, {}).setdefault(node, Usage())
            u.requests += 1
            u.last_use = now
            if cached_tokens >= (i + 1) * bs - 1:
                u.hits += 1

    # ------------------------------------------------------------------ views
    def view(self, prefix: NamedPrefix) -> PrefixView:
        return self.views.named(prefix, self._usage.get(prefix.name, {}), prefix.name in self.state.pins)

    def subtree_view(self, root: int) -> PrefixView:
        return self.views.tree(root)

    def listing(self, node: NodeId | None, tier: Tier | None, min_tokens: int, named_only: bool,
                limit: int) -> tuple[list[PrefixView], int]:
        named = [self.view(p) for p in self.state.prefixes.values()]
        return self.views.listing(named, list(self.state.prefixes.values()), node, tier, min_tokens, named_only,
                                  limit)

    # ------------------------------------------------------------------ pins
    def pin(self, name: str, replicas: int, tier: Tier, ttl_s: float) -> PinSpec:
        prefix = self.state.prefixes.get(name)
        if prefix is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no prefix named {name!r}: name it first (`prefixes name`)")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise invalid(f"replicas must be in [1, {MAX_REPLICAS}], got {replicas}")
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise invalid(f"ttl must be between 0 (none) and {MAX_TTL_S:.0f} s, got {ttl_s}")
        now = time.time()
        old = self.state.pins.get(name)
        spec = PinSpec(name, tier, replicas, old.created if old else now, now + ttl_s if ttl_s else None)
        if old is None:
            self.r.pin_blocks(prefix.hashes)
        self.state.pins[name] = spec
        self.state.save()
        self.keeper.kick()
        return spec

    def unpin(self, name: str) -> PinSpec:
        spec = self.state.pins.get(name)
        if spec is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"prefix {name!r} is not pinned")
        self._drop_pin(name)
        self.keeper.kick()
        return spec

    def _drop_pin(self, name: str) -> None:
        self.state.pins.pop(name, None)
        prefix = self.state.prefixes.get(name)
        if prefix is not None:
            self.r.unpin_blocks(prefix.hashes)
        self.state.save()

    def replicas(self, name: str) -> list[tuple[NodeId, str, int]]:
        return self.keeper.replicas(name)

    # ------------------------------------------------------------------ warm / evict
    async def warm(self, name: str, node: NodeId) -> WarmOutcome:
        """Run the prefix on `node` (one output token) so it holds its KV; the planner pulls
        it from another node when that beats recomputing it."""
        prefix = self.state.prefixes.get(name)
        if prefix is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no prefix named {name!r}")
        if not self.r.is_alive(node):
            return WarmOutcome(node, error=f"node {node} is not alive")
        rid = f"warm:{name}:{node}:{uuid.uuid4().hex[:8]}"
        ids = list(prefix.token_ids)
        t0 = time.monotonic()
        try:
            done = await self.r.run_on(node, rid, ids, GenParams(max_tokens=1, temperature=0.0), WARM_TIMEOUT_S)
        except NodeError as e:
            return WarmOutcome(node, error=f"{e.code.name}: {e.details}")
        except RuntimeError:
            return WarmOutcome(node, error="the node ended the warm-up without a result")
        return WarmOutcome(node, done.cached, len(ids) - min(len(ids), sum(done.cached.values())),
                           (time.monotonic() - t0) * 1e3)

    async def _warm_error(self, name: str, node: NodeId) -> str:
        return (await self.warm(name, node)).error

    async def evict(self, key: str, node: NodeId | None, tier: Tier | None) -> tuple[int, int, list[NodeId]]:
        if tier is Tier.HBM:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               "vLLM's own cache (hbm) cannot evict single prefixes; evict from dram or disk")
        prefix, h = self.resolve(key)
        if prefix is not None and prefix.name in self.state.pins:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"prefix {prefix.name!r} is pinned; unpin it first")
        hashes = list(prefix.hashes) if prefix is not None else self.r.index.subtree(h)
        if node is not None and not self.r.is_known(node):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no node {node}; known: {self.r.nodes()}")
        nodes = [node] if node is not None else self.r.alive()
        evicted = kept = 0
        done = []
        for n in nodes:
            if not self.r.is_alive(n):
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"node {n} ({self.r.node_name(n)}) is down")
            try:
                e, k = await self.r.client(n).evict(hashes, tier)
            except NodeError as err:
                if err.code == grpc.StatusCode.FAILED_PRECONDITION:
                    continue  # a node without DRAM/disk tiers holds nothing to evict
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"node {self.r.node_name(n)}: {err.details}") from None
            evicted += e
            kept += k
            done.append(n)
        return evicted, kept, done
