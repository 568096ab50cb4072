"""`preble.v1.Admin`: the operator API, thin over the router's parts (proto <-> views)."""

from __future__ import annotations

import inspect
import json

import grpc

from preble_tiered.api import convert
from preble_tiered.api.pb import admin_pb2, admin_pb2_grpc
from preble_tiered.router.errors import RequestError
from preble_tiered.router.prefix_views import PrefixView
from preble_tiered.router.nodes import NodeLink
from preble_tiered.router.router import Router
from preble_tiered.scheduler.cost_model import ChunkedPrefill
from preble_tiered.scheduler.profile import ProfileError
from preble_tiered.scheduler.profile_fit import NodeFacts, fit_profile
from preble_tiered.types import Tier

MAX_WARM_NODES = 64


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, router: Router) -> None:
        self.router = router
        self.admin = router.admin
        self.view = router.view
        self.nodes = router.nodes

    # ------------------------------------------------------------------ helpers
    def _node_name(self, node: int) -> str:
        return self.view.node_name(node)

    def _block_bytes(self) -> int:
        m = self.nodes.model
        return (m.kv_bytes_per_token * m.block_size) if m is not None else 0

    def _prefix_pb(self, v: PrefixView) -> admin_pb2.PrefixInfo:
        bb = self._block_bytes()
        out = admin_pb2.PrefixInfo(name=v.name, hash=v.hash, tokens=v.tokens, blocks=v.blocks, demand=v.demand,
                                   pinned=v.pinned, last_use_unix=v.last_use)
        for pl in v.where:
            out.where.add(node_id=pl.node, node=self._node_name(pl.node), tier=convert.tier_to_pb(pl.tier),
                          blocks=pl.blocks, bytes=pl.blocks * bb, last_use_unix=pl.last_use, hits=pl.hits)
        return out

    def _pin_pb(self, name: str, released: bool = False) -> admin_pb2.PinInfo:
        spec = self.admin.state.pins.get(name)
        if spec is None:
            return admin_pb2.PinInfo(name=name, released=released)
        out = admin_pb2.PinInfo(name=name, tier=convert.tier_to_pb(spec.tier), replicas=spec.replicas,
                                created_unix=spec.created, expires_unix=spec.expires or 0.0)
        for node, state, held in self.admin.replicas(name):
            out.nodes.add(node_id=node, node=self._node_name(node), state=state, blocks_held=held)
        return out

    @staticmethod
    def _tier(value: int) -> Tier | None:
        try:
            return convert.tier_from_pb(value)
        except ValueError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    # ------------------------------------------------------------------ nodes / stats
    async def ListNodes(self, request, context):
        idx = self.view.index
        out = admin_pb2.ListNodesResponse()
        for link in self.nodes.links.values():
            n = link.node_id
            st = out.nodes.add(node_id=n, name=link.name, address=link.address, alive=link.alive,
                               running=link.load.running, waiting=link.load.waiting, inflight=self.view.inflight(n),
                               kv_usage=link.load.kv_usage, kv_capacity_tokens=link.info.kv_capacity_tokens,
                               hbm_blocks=idx.held_blocks(n, Tier.HBM), dram_blocks=idx.held_blocks(n, Tier.DRAM),
                               disk_blocks=idx.held_blocks(n, Tier.DISK), tpot_ms=link.load.tpot_ms,
                               requests_total=link.requests_total, event_seq=link.event_seq, resyncs=link.resyncs,
                               pinned_prefixes=len(self.admin.acked.get(n, {})))
            st.tiers.extend(convert.tier_usage_to_pb(u) for u in link.load.tiers)
        return out

    async def ClusterStats(self, request, context):
        r = self.router
        st = r.dispatch.stats
        model = self.nodes.model
        return admin_pb2.ClusterStatsResponse(
            policy=r.config.policy, model=model.model if model else "",
            nodes_alive=len(self.nodes.alive()), nodes_total=len(self.nodes.links),
            requests_total=st.requests_total, requests_failed=st.requests_failed,
            requests_rerouted=st.requests_rerouted, branch_counts=dict(r.scheduler.branch_counts),
            prompt_tokens_total=st.prompt_tokens, cached_tokens_total=convert.cached_to_pb(st.cached),
            recomputed_tokens_total=st.recomputed_tokens, index_entries=len(r.scheduler.index),
            cost_model=_cost_model(r))

    async def GetNodeResidency(self, request, context):
        link = self.nodes.links.get(request.node_id)
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no node {request.node_id}; known: {self.view.nodes()} (see ListNodes)")
        tier = convert.tier_from_pb(request.tier) or Tier.HBM
        hashes = sorted(self.view.index.node_blocks(link.node_id, tier))
        return admin_pb2.NodeResidency(node_id=link.node_id, tier=convert.tier_to_pb(tier), hashes=hashes,
                                       event_seq=link.event_seq)

    # ------------------------------------------------------------------ prefixes
    async def ListPrefixes(self, request, context):
        return await self._call(context, self._list, request)

    def _list(self, request):
        node = request.node_id if request.HasField("node_id") else None
        if node is not None and not self.view.is_known(node):
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no node {node}; known: {self.view.nodes()}")
        views, total = self.admin.listing(node, self._tier(request.tier), request.min_tokens,
                                       request.named_only, request.limit)
        return admin_pb2.ListPrefixesResponse(prefixes=[self._prefix_pb(v) for v in views], total=total)

    async def NamePrefix(self, request, context):
        return await self._call(context, self._name, request)

    async def _name(self, request):
        kind = request.WhichOneof("source")
        if kind == "text":
            if len(request.text) > (4 << 20):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "text is over 4 MiB")
            ids = self.router.dispatch.tokenizer().encode(request.text)
        elif kind == "token_ids":
            ids = list(request.token_ids.ids)
        elif kind == "request_id":
            rec = self.router.decisions.get(request.request_id)
            if rec is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                 f"no recent request {request.request_id!r} (the router keeps the last "
                                 f"{self.router.decisions.capacity})")
            if rec.prompt is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                 f"the prompt of {request.request_id!r} is no longer kept; name it by --text")
            ids = list(rec.prompt)
        else:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "give the prefix as text, token_ids or request_id")
        p = self.admin.name(request.name, ids, request.replace)
        return self._prefix_pb(self.admin.view(p))

    async def ShowPrefix(self, request, context):
        return await self._call(context, self._show, request)

    def _show(self, request):
        prefix, h = self.admin.resolve(request.key)
        if prefix is not None:
            out = admin_pb2.PrefixDetail(prefix=self._prefix_pb(self.admin.view(prefix)))
            if prefix.name in self.admin.state.pins:
                out.pin.CopyFrom(self._pin_pb(prefix.name))
            return out
        view = self.admin.subtree_view(h)
        return admin_pb2.PrefixDetail(prefix=self._prefix_pb(view))

    async def PinPrefix(self, request, context):
        return await self._call(context, self._pin, request)

    def _pin(self, request):
        tier = self._tier(request.tier) or Tier.DRAM
        self.admin.pin(request.name, request.replicas or 1, tier, request.ttl_s)
        return self._pin_pb(request.name)

    async def UnpinPrefix(self, request, context):
        return await self._call(context, self._unpin, request)

    def _unpin(self, request):
        self.admin.unpin(request.key)
        return self._pin_pb(request.key, released=True)

    async def EvictPrefix(self, request, context):
        return await self._call(context, self._evict, request)

    async def _evict(self, request):
        node = request.node_id if request.HasField("node_id") else None
        evicted, kept, nodes = await self.admin.evict(request.key, node, self._tier(request.tier))
        return admin_pb2.EvictPrefixResponse(evicted=evicted, pinned_kept=kept, nodes=nodes)

    async def WarmPrefix(self, request, context):
        return await self._call(context, self._warm, request)

    async def _warm(self, request):
        prefix, _ = self.admin.resolve(request.key)
        if prefix is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "warm takes a named prefix (its tokens are needed)")
        nodes = list(request.node_ids)
        if not 0 < len(nodes) <= MAX_WARM_NODES or len(set(nodes)) != len(nodes):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"name 1 to {MAX_WARM_NODES} distinct nodes")
        unknown = [n for n in nodes if not self.view.is_known(n)]
        if unknown:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no node {unknown[0]}; known: {self.view.nodes()}")
        out = admin_pb2.WarmPrefixResponse()
        for n in nodes:  # one at a time: a later node can pull what an earlier one computed
            w = await self.admin.warm(prefix.name, n)
            out.results.add(node_id=n, node=self._node_name(n), cached_tokens=convert.cached_to_pb(w.cached),
                            recomputed_tokens=w.recomputed, ms=w.ms, error=w.error)
        return out

    async def Explain(self, request, context):
        rec = self.router.decisions.get(request.request_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no recent decision for {request.request_id!r} (the router keeps the last "
                                f"{self.router.decisions.capacity} requests)")
        d = rec.decision
        out = admin_pb2.DecisionRecord(
            request_id=rec.request_id, at_unix=rec.at, branch=d.branch.value, node_id=d.node,
            node=self._node_name(d.node), prompt_tokens=rec.prompt_tokens, est_ttft_ms=d.plan.est_ttft_s * 1e3,
            predicted_cached_tokens=convert.cached_to_pb(rec.predicted),
            actual_cached_tokens=convert.cached_to_pb(rec.actual), ttft_ms=rec.ttft_ms, state=rec.state,
            attempt=rec.attempt)
        for c in d.candidates:
            cand = out.candidates.add(node_id=c.node, node=self._node_name(c.node), load_s=c.load_s,
                                      plan_s=c.plan_s, total_s=c.total_s)
            if c.evict_s is not None:  # absent: not priced (could not have been chosen)
                cand.evict_s = c.evict_s
            if c.decode_s is not None:
                cand.decode_s = c.decode_s
        for seg in d.plan.segments:
            ps = out.plan.add(action=seg.action.value, blocks=seg.blocks, tokens=seg.tokens,
                              tier=convert.tier_to_pb(seg.tier))
            if seg.source is not None:
                ps.source_node_id = seg.source
        return out

    async def GetProfile(self, request, context):
        return await self._call(context, self._profile, request)

    async def _profile(self, request):
        samples = self.router.samples
        missed = await self.router.feed.refresh()  # the nodes' latest measurements, then drop or fit them
        if request.reset:
            if missed:  # what they measured before the reset would come in after it
                raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                   f"node(s) {', '.join(missed)} did not report: what they measured before the reset "
                                   "would arrive after it; retry once they answer, or take them out of the cluster")
            samples.clear()
            return admin_pb2.ProfileResponse()
        if len(request.name) > 64 or len(request.source) > 4096:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "name is at most 64 characters, source 4096")
        live = [lk for lk in self.nodes.links.values() if lk.alive]
        facts = [NodeFacts(lk.info.block_size, lk.info.max_num_seqs, lk.info.max_batch_tokens,
                           lk.info.kv_capacity_tokens, lk.info.kv_bytes_per_token,
                           _tier_bytes(lk, Tier.DRAM), _tier_bytes(lk, Tier.DISK)) for lk in live]
        if any(f.max_num_seqs <= 0 or f.max_batch_tokens <= 0 for f in facts):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               "a node does not report its engine limits (an older node agent): upgrade it")
        measured = {k.split(":", 1)[0] for lk in live for k in lk.rates}
        model = self.nodes.model.model if self.nodes.model is not None else ""
        try:
            prof = fit_profile(samples, facts, self.router.scheduler.cluster.cost.links, measured,
                               name=request.name or "cluster", model=model, source=request.source)
        except ProfileError as e:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        return admin_pb2.ProfileResponse(profile_json=json.dumps(prof.to_dict()), prefill_samples=len(samples.prefill),
                                         decode_steps=prof.coverage.decode_steps)

    # ------------------------------------------------------------------ errors
    @staticmethod
    async def _call(context, fn, request):
        try:
            out = fn(request)
            return await out if inspect.isawaitable(out) else out
        except RequestError as e:
            await context.abort(e.code, e.message)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


def _tier_bytes(link: NodeLink, tier: Tier) -> int:
    """The capacity of `link`'s `tier` from its last load report (0: none)."""
    return next((u.capacity_bytes for u in link.load.tiers if u.tier is tier), 0)


def _cost_model(router) -> str:
    """Where the prices the router routes on come from, prefill then decode: fitted from the
    nodes' measurements, else what it started on (`NodeSet.cost_source`)."""
    learner, start = router.feed.learner, router.nodes.cost_source
    cal = learner.prefill
    prefill = f"fitted ({len(cal)} samples, {cal.fits} fits{_per_chunk(cal.fitted)})" if cal.fitted else start
    decode = ("decode fitted" if learner.decode.fitted
              else "decode from the profile" if start.startswith("profile ") else "decode not measured (flat)")
    return f"{prefill}; {decode}"


def _per_chunk(model) -> str:
    return f", per chunk of {model.chunk} tokens" if isinstance(model, ChunkedPrefill) else ""
