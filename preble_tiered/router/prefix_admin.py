"""The router's prefix administration: names, listings, pins (reconciled), eviction, warm-ups.

The pure parts live elsewhere (`scheduler.pins.reconcile`, `admin_state`, `decisions`); this
module runs them against the live router: it feeds the reconciler the index and the node
acknowledgements once per `interval_s`, and executes its actions with one task per
(prefix, node), backing off `retry_s` after a failure. All state is touched from the
router's asyncio loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from preble_tiered.types import GenParams
from preble_tiered.scheduler.pins import (NamedPrefix, NodePin, PinOp, PinSpec, held_counts, pin_targets,
                                          reconcile, replica_state, storage_tier)
from preble_tiered.scheduler.index import BlockEntry, iter_bits
from preble_tiered.scheduler.types import Branch, Decision, RouteRequest
from preble_tiered.api import convert
from preble_tiered.router.admin_state import (MAX_PREFIX_TOKENS, MAX_PREFIXES, MAX_REPLICAS, MAX_TTL_S,
                                              AdminState, check_name)
from preble_tiered.api.pb import node_pb2
from preble_tiered.types import NodeId, Tier

if TYPE_CHECKING:
    from preble_tiered.router.router import Router

logger = logging.getLogger(__name__)

MAX_LIST = 10000
WARM_TIMEOUT_S = 300.0


class AdminError(Exception):
    """An admin call failed in a way the caller must be told (a gRPC status + message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(msg: str) -> AdminError:
    return AdminError(grpc.StatusCode.INVALID_ARGUMENT, msg)


@dataclass(slots=True)
class Placement:
    node: NodeId
    tier: Tier
    blocks: int
    last_use: float = 0.0  # unix seconds
    hits: int = 0


@dataclass(slots=True)
class PrefixView:
    name: str
    hash: int
    tokens: int
    blocks: int
    where: list[Placement]
    demand: float
    pinned: bool
    last_use: float  # unix seconds; 0 unknown


@dataclass(slots=True)
class WarmOutcome:
    node: NodeId
    cached: dict[str, int] = field(default_factory=dict)
    recomputed: int = 0
    ms: float = 0.0
    error: str = ""


@dataclass(slots=True)
class _Usage:
    requests: int = 0
    hits: int = 0
    last_use: float = 0.0


class PrefixAdmin:
    def __init__(self, router: Router, state: AdminState, interval_s: float = 1.0, retry_s: float = 5.0) -> None:
        self.router = router
        self.state = state
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.acked: dict[NodeId, dict[str, NodePin]] = {}
        self._tasks: dict[tuple[str, NodeId], asyncio.Task] = {}
        self._backoff: dict[tuple[str, NodeId], float] = {}
        self._by_last: dict[int, str] = {}
        self._usage: dict[str, dict[NodeId, _Usage]] = {}
        self._loop_task: asyncio.Task | None = None
        self.actions = deque(maxlen=256)  # (unix time, op, name, node, outcome): recent reconciler work
        for p in state.prefixes.values():
            self._by_last[p.last_hash] = p.name
        now = router.clock.now()
        for name in state.pins:
            if name in state.prefixes:
                router.scheduler.index.pin(state.prefixes[name].hashes, now)

    # ------------------------------------------------------------------ names
    def resolve(self, key: str) -> tuple[NamedPrefix | None, int]:
        """A name, or a block hash in hex. Returns (the named prefix or None, its hash)."""
        if not key or len(key) > 80:
            raise _invalid("give a prefix name or a block hash (hex)")
        p = self.state.prefixes.get(key)
        if p is not None:
            return p, p.last_hash
        try:
            h = int(key, 16)
        except ValueError:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"no prefix named {key!r} (see `prefixes ls`)") from None
        if not 0 <= h < 1 << 64:
            raise _invalid(f"{key!r} is not a 64-bit hash")
        if h in self._by_last:
            return self.state.prefixes[self._by_last[h]], h
        if self.router.scheduler.index.entry(h) is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"the router's index holds no block {h:016x}")
        return None, h

    def name(self, name: str, token_ids: list[int], replace: bool) -> NamedPrefix:
        check_name(name)
        bs = self.router.config.block_size
        if len(token_ids) > MAX_PREFIX_TOKENS:
            raise _invalid(f"a prefix has at most {MAX_PREFIX_TOKENS} tokens, got {len(token_ids)}")
        if len(token_ids) < bs:
            raise _invalid(f"the prefix has {len(token_ids)} tokens, fewer than one KV block ({bs}); "
                           "only whole blocks are cached")
        vocab = self.router.model.vocab_size if self.router.model else 0
        if vocab and max(token_ids) >= vocab:
            raise _invalid(f"token id {max(token_ids)} is outside the vocabulary ({vocab})")
        old = self.state.prefixes.get(name)
        if old is not None and not replace:
            raise AdminError(grpc.StatusCode.ALREADY_EXISTS, f"prefix {name!r} exists; pass replace to re-point it")
        if old is not None and name in self.state.pins:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, f"prefix {name!r} is pinned; unpin it first")
        if old is None and len(self.state.prefixes) >= MAX_PREFIXES:
            raise AdminError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_PREFIXES} named prefixes")
        hashes = tuple(self.router.hasher(token_ids))
        p = NamedPrefix(name, tuple(token_ids), hashes, time.time())
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
        bs = self.router.config.block_size
        now = time.time()
        by_last = self._by_last
        for i, h in enumerate(hashes):
            name = by_last.get(h)
            if name is None:
                continue
            u = self._usage.setdefault(name, {}).setdefault(node, _Usage())
            u.requests += 1
            u.last_use = now
            if cached_tokens >= (i + 1) * bs - 1:
                u.hits += 1

    # ------------------------------------------------------------------ views
    def _wall(self, t: float) -> float:
        if t == float("-inf"):
            return 0.0
        return time.time() - (self.router.clock.now() - t)

    def view(self, prefix: NamedPrefix) -> PrefixView:
        idx = self.router.scheduler.index
        where: list[Placement] = []
        usage = self._usage.get(prefix.name, {})
        for node in sorted(self.router.links):
            hbm, dram, disk, _ = held_counts(idx, prefix.hashes, node)
            u = usage.get(node, _Usage())
            for tier, n in ((Tier.HBM, hbm), (Tier.DRAM, dram), (Tier.DISK, disk)):
                if n:
                    where.append(Placement(node, tier, n, u.last_use, u.hits))
        e = idx.entry(prefix.last_hash)
        now = self.router.clock.now()
        last = max((u.last_use for u in usage.values()), default=0.0)
        if e is not None:
            last = max(last, self._wall(e.last_access))
        return PrefixView(prefix.name, prefix.last_hash, len(prefix.hashes) * self.router.config.block_size,
                          len(prefix.hashes), where, idx.demand(prefix.last_hash, now),
                          prefix.name in self.state.pins, last)

    def tree_views(self) -> list[PrefixView]:
        """Unnamed prefixes: one view per root block of the index, over its whole subtree
        (tokens: the deepest chain; placement: blocks of the subtree per node and tier)."""
        entries, children, roots = self._forest()
        return [self._tree_view(r, entries, children) for r in roots]

    def subtree_view(self, root: int) -> PrefixView:
        """The unnamed prefix tree under block `root` (a root or an inner block)."""
        entries, children, _ = self._forest()
        return self._tree_view(root, entries, children)

    def _forest(self) -> tuple[dict[int, BlockEntry], dict[int, list[int]], list[int]]:
        """(entries, children of each block, root blocks) of the index. O(entries)."""
        entries = dict(self.router.scheduler.index.items())
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        for h, e in entries.items():
            if e.parent is None or e.parent not in entries:
                roots.append(h)
            else:
                children.setdefault(e.parent, []).append(h)
        return entries, children, roots

    def _tree_view(self, root: int, entries: dict[int, BlockEntry], children: dict[int, list[int]]) -> PrefixView:
        counts: dict[tuple[NodeId, Tier], int] = {}
        depth_max, pinned, last, n_blocks = 0, False, float("-inf"), 0
        stack = [(root, 1)]
        while stack:
            h, d = stack.pop()
            e = entries[h]
            n_blocks += 1
            depth_max = max(depth_max, d)
            pinned = pinned or e.pins > 0
            last = max(last, e.last_access)
            for tier in (Tier.HBM, Tier.DRAM, Tier.DISK):
                for node in iter_bits(e.mask(tier)):
                    counts[(node, tier)] = counts.get((node, tier), 0) + 1
            stack.extend((c, d + 1) for c in children.get(h, ()))
        where = [Placement(n, t, c) for (n, t), c in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value))]
        return PrefixView("", root, depth_max * self.router.config.block_size, n_blocks, where,
                          self.router.scheduler.index.demand(root, self.router.clock.now()), pinned, self._wall(last))

    def listing(self, node: NodeId | None, tier: Tier | None, min_tokens: int, named_only: bool,
             limit: int) -> tuple[list[PrefixView], int]:
        if not 0 <= limit <= MAX_LIST:
            raise _invalid(f"limit must be in [0, {MAX_LIST}]")
        views = [self.view(p) for p in self.state.prefixes.values()]
        if not named_only:
            # An unnamed tree that is no more than a named prefix is that prefix: list it once.
            named_roots: dict[int, int] = {}
            for p in self.state.prefixes.values():
                named_roots[p.hashes[0]] = max(named_roots.get(p.hashes[0], 0), len(p.hashes))
            views += [v for v in self.tree_views() if v.blocks > named_roots.get(v.hash, 0)]
        views = [v for v in views if v.tokens >= min_tokens
                 and (node is None or any(pl.node == node for pl in v.where))
                 and (tier is None or any(pl.tier is tier for pl in v.where))]
        # Named first, then by demand, then by size (what an operator looks for first).
        views.sort(key=lambda v: (not v.name, -v.demand, -v.tokens, v.name, v.hash))
        return views[:limit or 100], len(views)

    # ------------------------------------------------------------------ pins
    def pin(self, name: str, replicas: int, tier: Tier, ttl_s: float) -> PinSpec:
        prefix = self.state.prefixes.get(name)
        if prefix is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"no prefix named {name!r}: name it first (`prefixes name`)")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise _invalid(f"replicas must be in [1, {MAX_REPLICAS}], got {replicas}")
        if not 0 <= ttl_s <= MAX_TTL_S:
            raise _invalid(f"ttl must be between 0 (none) and {MAX_TTL_S:.0f} s, got {ttl_s}")
        now = time.time()
        old = self.state.pins.get(name)
        spec = PinSpec(name, tier, replicas, old.created if old else now, now + ttl_s if ttl_s else None)
        if old is None:
            self.router.scheduler.index.pin(prefix.hashes, self.router.clock.now())
        self.state.pins[name] = spec
        self.state.save()
        self.kick()
        return spec

    def unpin(self, name: str) -> PinSpec:
        spec = self.state.pins.get(name)
        if spec is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"prefix {name!r} is not pinned")
        self._drop_pin(name)
        self.kick()
        return spec

    def _drop_pin(self, name: str) -> None:
        self.state.pins.pop(name, None)
        prefix = self.state.prefixes.get(name)
        if prefix is not None:
            self.router.scheduler.index.unpin(prefix.hashes, self.router.clock.now())
        self.state.save()

    def replicas(self, name: str) -> list[tuple[NodeId, str, int]]:
        """(node, state, blocks held in the pinned tier) for the pin's current targets."""
        spec, prefix = self.state.pins[name], self.state.prefixes[name]
        idx, r = self.router.scheduler.index, self.router
        alive = [n for n, lk in r.links.items() if lk.alive]
        inflight = {n: r.scheduler.cluster.nodes[n].n_inflight for n in alive}
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

    # ------------------------------------------------------------------ reconcile loop
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
        r = self.router
        r.decisions.trim()  # the decision ring's housekeeping rides on this once-a-second loop
        mono = time.monotonic()
        alive = [n for n, lk in r.links.items() if lk.alive]
        acked = {n: pins for n, pins in self.acked.items() if n in alive}
        inflight = {n: r.scheduler.cluster.nodes[n].n_inflight for n in alive}
        busy = set(self._tasks) | {k for k, until in self._backoff.items() if until > mono}
        actions = reconcile(self.state.pins, self.state.prefixes, r.scheduler.index, alive, acked, inflight,
                            busy, time.time())
        for a in actions:
            if a.op is PinOp.EXPIRE:
                logger.info("pin of %s expired (ttl)", a.name)
                self._drop_pin(a.name)
                self.actions.append((time.time(), "expire", a.name, None, "ok"))
                continue
            key = (a.name, a.node)
            self._tasks[key] = asyncio.create_task(self._act(a.op, a.name, a.node))

    async def _act(self, op: PinOp, name: str, node: NodeId) -> None:
        key = (name, node)
        outcome = "ok"
        try:
            if op is PinOp.UNPIN:
                await self._node_pin(name, node, [], Tier.DRAM)
            else:
                if op is PinOp.WARM:
                    w = await self.warm(name, node)
                    if w.error:
                        raise RuntimeError(w.error)
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
        link = self.router.links[node]
        resp = await link.stub.PinBlocks(node_pb2.PinBlocksRequest(owner=name, hashes=hashes,
                                                                   tier=convert.tier_to_pb(tier)), timeout=30.0)
        pins = self.acked.setdefault(node, {})
        if hashes:
            pins[name] = NodePin(tier, resp.pinned, len(hashes))
        else:
            pins.pop(name, None)
        return len(resp.missing)

    # ------------------------------------------------------------------ warm / evict
    async def warm(self, name: str, node: NodeId) -> WarmOutcome:
        """Run the prefix on `node` (one output token) so it holds its KV; the planner pulls
        it from another node when that beats recomputing it."""
        r = self.router
        prefix = self.state.prefixes.get(name)
        if prefix is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"no prefix named {name!r}")
        link = r.links.get(node)
        if link is None or not link.alive:
            return WarmOutcome(node, error=f"node {node} is not alive")
        rid = f"warm:{name}:{node}:{uuid.uuid4().hex[:8]}"
        hashes = list(prefix.hashes)
        ids = list(prefix.token_ids)
        plan = r.scheduler.plan_on(node, RouteRequest(rid, hashes, len(ids), 1))
        pull = r.pull_plan(Decision(rid, node, plan, Branch.REPLICATE), hashes)
        sub = node_pb2.SubmitRequest(request_id=rid, prompt_token_ids=ids,
                                     sampling=convert.params_to_pb(GenParams(max_tokens=1, temperature=0.0)),
                                     priority_group=0, pull=pull)
        t0 = time.monotonic()
        try:
            async for resp in link.stub.Submit(sub, timeout=WARM_TIMEOUT_S):
                if resp.WhichOneof("kind") == "done":
                    cached = convert.cached_from_pb(resp.done.cached_tokens)
                    return WarmOutcome(node, cached, len(ids) - min(len(ids), sum(cached.values())),
                                       (time.monotonic() - t0) * 1e3)
        except grpc.aio.AioRpcError as e:
            return WarmOutcome(node, error=f"{e.code().name}: {e.details()}")
        return WarmOutcome(node, error="the node ended the warm-up without a result")

    async def evict(self, key: str, node: NodeId | None, tier: Tier | None) -> tuple[int, int, list[NodeId]]:
        if tier is Tier.HBM:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION,
                             "vLLM's own cache (hbm) cannot evict single prefixes; evict from dram or disk")
        prefix, h = self.resolve(key)
        if prefix is not None and prefix.name in self.state.pins:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, f"prefix {prefix.name!r} is pinned; unpin it first")
        hashes = list(prefix.hashes) if prefix is not None else self._subtree(h)
        r = self.router
        if node is not None and node not in r.links:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"no node {node}; known: {sorted(r.links)}")
        nodes = [node] if node is not None else [n for n, lk in r.links.items() if lk.alive]
        evicted = kept = 0
        done = []
        for n in nodes:
            link = r.links[n]
            if not link.alive:
                raise AdminError(grpc.StatusCode.UNAVAILABLE, f"node {n} ({link.name}) is down")
            try:
                resp = await link.stub.EvictBlocks(node_pb2.EvictBlocksRequest(hashes=hashes,
                                                                               tier=convert.tier_to_pb(tier)),
                                                   timeout=30.0)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    continue  # a node without DRAM/disk tiers holds nothing to evict
                raise AdminError(grpc.StatusCode.UNAVAILABLE, f"node {link.name}: {e.details()}") from None
            evicted += resp.evicted
            kept += resp.pinned_kept
            done.append(n)
        return evicted, kept, done

    def _subtree(self, root: int) -> list[int]:
        """`root` and its descendants in the index, parents before children."""
        _, children, _ = self._forest()
        out, stack = [], [root]
        while stack:
            h = stack.pop()
            out.append(h)
            stack.extend(children.get(h, ()))
        return out
