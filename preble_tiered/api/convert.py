"""Proto <-> dataclass conversion, in one place: tiers, sampling parameters, cached-token
counts, residency events and snapshots, and the router <-> node messages of `messages`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from preble_tiered.api.messages import DispatchOrder, NodeDone, NodeInfo, NodeLoad, TierUsage
from preble_tiered.api.pb import common_pb2, node_pb2
from preble_tiered.events import AllBlocksCleared, BlockRemoved, BlockStored, ResidencyEvent
from preble_tiered.types import GenParams, NodeId, Tier

CACHE_SOURCES = ("hbm", "dram", "disk", "remote")

_TIER_TO_PB = {Tier.HBM: common_pb2.TIER_HBM, Tier.DRAM: common_pb2.TIER_DRAM, Tier.DISK: common_pb2.TIER_DISK}
_TIER_FROM_PB = {v: k for k, v in _TIER_TO_PB.items()}


def tier_to_pb(tier: Tier | None) -> int:
    return common_pb2.TIER_UNSPECIFIED if tier is None else _TIER_TO_PB[tier]


def tier_from_pb(value: int) -> Tier | None:
    """TIER_UNSPECIFIED -> None (every tier)."""
    if value == common_pb2.TIER_UNSPECIFIED:
        return None
    try:
        return _TIER_FROM_PB[value]
    except KeyError:
        raise ValueError(f"unknown tier value {value}") from None


# ------------------------------------------------------------------ sampling
def params_from_pb(sp: common_pb2.SamplingParams) -> GenParams:
    """Unset fields take vLLM's defaults (see GenParams). Not validated here."""
    d = GenParams()
    return GenParams(
        max_tokens=sp.max_tokens if sp.HasField("max_tokens") else d.max_tokens,
        temperature=sp.temperature if sp.HasField("temperature") else d.temperature,
        top_p=sp.top_p if sp.HasField("top_p") else d.top_p,
        stop=tuple(sp.stop),
        seed=sp.seed if sp.HasField("seed") else None,
        ignore_eos=sp.ignore_eos,
    )


def params_to_pb(p: GenParams) -> common_pb2.SamplingParams:
    sp = common_pb2.SamplingParams(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                                   stop=list(p.stop), ignore_eos=p.ignore_eos)
    if p.seed is not None:
        sp.seed = p.seed
    return sp


def cached_to_pb(cached: Mapping[str, int]) -> common_pb2.CachedTokens:
    return common_pb2.CachedTokens(**{k: int(cached.get(k, 0)) for k in CACHE_SOURCES})


def cached_from_pb(c: common_pb2.CachedTokens) -> dict[str, int]:
    return {k: int(getattr(c, k)) for k in CACHE_SOURCES}


# ------------------------------------------------------------------ residency events
def event_to_pb(ev: ResidencyEvent) -> node_pb2.ResidencyEvent:
    if isinstance(ev, BlockStored):
        chain = node_pb2.BlockChain(tier=tier_to_pb(ev.tier), hashes=list(ev.hashes))
        if ev.parent is not None:
            chain.parent = ev.parent
        return node_pb2.ResidencyEvent(stored=chain)
    if isinstance(ev, BlockRemoved):
        return node_pb2.ResidencyEvent(removed=node_pb2.BlockChain(tier=tier_to_pb(ev.tier), hashes=list(ev.hashes)))
    if isinstance(ev, AllBlocksCleared):
        return node_pb2.ResidencyEvent(cleared=tier_to_pb(ev.tier))
    raise TypeError(f"not a residency event: {ev!r}")


def batch_to_pb(seq: int, events: Iterable[ResidencyEvent]) -> node_pb2.EventBatch:
    return node_pb2.EventBatch(seq=seq, events=[event_to_pb(e) for e in events])


def event_from_pb(ev: node_pb2.ResidencyEvent, node: NodeId) -> ResidencyEvent:
    kind = ev.WhichOneof("kind")
    if kind == "stored":
        c = ev.stored
        tier = tier_from_pb(c.tier)
        if tier is None:
            raise ValueError("a stored event needs a tier")
        return BlockStored(node, tier, tuple(c.hashes), c.parent if c.HasField("parent") else None)
    if kind == "removed":
        tier = tier_from_pb(ev.removed.tier)
        if tier is None:
            raise ValueError("a removed event needs a tier")
        return BlockRemoved(node, tier, tuple(ev.removed.hashes))
    if kind == "cleared":
        return AllBlocksCleared(node, tier_from_pb(ev.cleared))
    raise ValueError(f"empty residency event: {ev!r}")


def snapshot_to_pb(seq: int, blocks: Iterable[tuple[Tier, int, int | None]]) -> node_pb2.SnapshotResponse:
    out = node_pb2.SnapshotResponse(seq=seq)
    for tier, h, parent in blocks:
        b = out.blocks.add(tier=tier_to_pb(tier), hash=h)
        if parent is not None:
            b.parent = parent
    return out


def snapshot_events(snap: node_pb2.SnapshotResponse, node: NodeId) -> list[ResidencyEvent]:
    """A snapshot as events that rebuild the node's residency from empty."""
    out: list[ResidencyEvent] = [AllBlocksCleared(node, None)]
    for b in snap.blocks:
        tier = tier_from_pb(b.tier)
        if tier is None:
            raise ValueError("a snapshot block needs a tier")
        out.append(BlockStored(node, tier, (b.hash,), b.parent if b.HasField("parent") else None))
    return out


# ------------------------------------------------------------------ router <-> node messages
def node_info_from_pb(i: node_pb2.NodeInfo) -> NodeInfo:
    return NodeInfo(i.name, i.model, i.vocab_size, i.max_model_len, i.block_size, i.kv_capacity_tokens,
                    i.kv_bytes_per_token, i.hash_namespace, i.max_num_seqs, i.max_batch_tokens)


def node_info_to_pb(i: NodeInfo) -> node_pb2.NodeInfo:
    return node_pb2.NodeInfo(name=i.name, model=i.model, vocab_size=i.vocab_size, max_model_len=i.max_model_len,
                             block_size=i.block_size, kv_capacity_tokens=i.kv_capacity_tokens,
                             kv_bytes_per_token=i.kv_bytes_per_token, hash_namespace=i.hash_namespace,
                             max_num_seqs=i.max_num_seqs, max_batch_tokens=i.max_batch_tokens)


def order_to_pb(o: DispatchOrder) -> node_pb2.SubmitRequest:
    sub = node_pb2.SubmitRequest(request_id=o.request_id, prompt_token_ids=o.prompt, sampling=params_to_pb(o.params),
                                 priority_group=o.priority_group)
    if o.expected_cached is not None:
        sub.expected_cached_tokens.CopyFrom(cached_to_pb(o.expected_cached))
    if o.pull is not None:
        sub.pull.CopyFrom(node_pb2.PullPlan(source_address=o.pull.address, source_name=o.pull.name,
                                            hashes=o.pull.block_hashes))
    return sub


def done_from_pb(d: node_pb2.SubmitDone) -> NodeDone:
    return NodeDone(d.finish_reason, cached_from_pb(d.cached_tokens), d.ttft_ms * 1e-3, d.engine_ttft_ms * 1e-3)


def tier_usage_to_pb(u: TierUsage) -> node_pb2.TierUsage:
    return node_pb2.TierUsage(tier=tier_to_pb(u.tier), used_bytes=u.used_bytes, capacity_bytes=u.capacity_bytes,
                              blocks=u.blocks, pinned_blocks=u.pinned_blocks)


def load_from_pb(r: node_pb2.LoadReport) -> NodeLoad:
    return NodeLoad(
        ready=r.ready, running=r.running, waiting=r.waiting, kv_usage=r.kv_usage, kv_used_tokens=r.kv_used_tokens,
        tpot_ms=r.tpot_ms, event_seq=r.event_seq,
        prefill_samples=[(s.new_tokens, s.context_tokens, s.seconds) for s in r.prefill_samples],
        link_rates={x.link: x.bytes_per_s for x in r.link_rates if x.bytes_per_s > 0},
        tiers=[TierUsage(tier_from_pb(u.tier), u.used_bytes, u.capacity_bytes, u.blocks, u.pinned_blocks)
               for u in r.tiers],
        decode_steps=[(d.batch, d.context_tokens, d.seconds, d.steps) for d in r.decode_steps if d.steps > 0])
